"""The exceptions lvsfw raises; every one of them is an :class:`LvsfwError`."""

from __future__ import annotations

from collections.abc import Sequence


class LvsfwError(Exception):
    """Root of every error lvsfw raises on purpose."""


class ValidationError(LvsfwError, ValueError):
    """A value is not acceptable; names the field, the value and what would be valid."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: {value!r} is not valid; expected {allowed}")


class ParseError(LvsfwError, ValueError):
    """Text (a port list, a backend's saved ruleset) could not be parsed."""

    def __init__(self, source: str, text: str, reason: str) -> None:
        self.source = source
        self.text = text
        self.reason = reason
        super().__init__(f"{source}: cannot parse {text!r}: {reason}")


class ConflictError(LvsfwError):
    """Two bundles (or a bundle and something lvsfw does not own) disagree."""

    def __init__(self, message: str, *names: str) -> None:
        self.names = names
        super().__init__(message)


class BackendUnavailable(LvsfwError):
    """A backend cannot be used on this machine; the message says why and how to fix it."""


class CommandFailed(LvsfwError):
    """A command (or a libnftables call) was rejected; carries the tool's own message."""

    def __init__(self, argv: Sequence[str], rc: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.rc = rc
        self.stderr = stderr
        shown = " ".join(self.argv)
        super().__init__(f"{shown!r} failed with exit status {rc}: {stderr.strip()}")


class DriftError(LvsfwError):
    """The live kernel state differs from what the bundles specify."""


def add_note(exc: BaseException, text: str) -> None:
    """Attach ``text`` to ``exc`` as a PEP 678 note (also on Python < 3.11)."""
    notes = getattr(exc, "__notes__", None)
    if notes is None:
        notes = []
        exc.__notes__ = notes
    notes.append(text)
