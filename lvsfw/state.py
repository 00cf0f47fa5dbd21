"""What lvsfw owns: a small JSON state file per network namespace, written atomically."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Optional

import attrs

from lvsfw.enums import Family
from lvsfw.errors import LvsfwError

STATE_DIR = "/var/lib/lvsfw"
VERSION = 1

ServiceKey = tuple[Family, int]


def state_path(netns: Optional[str], state_dir: str = STATE_DIR) -> str:
    """``/var/lib/lvsfw/state.json``, or ``/var/lib/lvsfw/state-NAME.json`` for netns NAME."""
    suffix = "" if netns is None else f"-{netns}"
    return os.path.join(state_dir, f"state{suffix}.json")


@attrs.frozen
class State:
    """The IPVS services lvsfw owns, and the packet filter it last applied with.

    ``pending`` is True between the moment an apply widened ``services`` and the moment it
    finished: a process killed in between leaves a state that still names everything it may
    have created, so the next apply or destroy can clean up.
    """

    services: frozenset[ServiceKey] = frozenset()
    firewall: Optional[str] = None
    pending: bool = False

    def to_json(self) -> str:
        """The file's text."""
        return json.dumps(
            {
                "version": VERSION,
                "firewall": self.firewall,
                "pending": self.pending,
                "services": [{"family": str(f), "mark": m} for f, m in sorted(self.services)],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, path: str) -> State:
        """Parse the file's text; a damaged file is an error, never silently empty."""
        try:
            data = json.loads(text)
            services = frozenset(
                (Family(item["family"]), int(item["mark"])) for item in data["services"]
            )
            firewall = data.get("firewall")
            if firewall is not None and not isinstance(firewall, str):
                raise TypeError("firewall")
            return cls(services, firewall, bool(data.get("pending", False)))
        except (ValueError, KeyError, TypeError) as exc:
            raise LvsfwError(f"state file {path}: damaged ({exc}); fix or remove it") from exc


def load(path: str) -> State:
    """The state in ``path``, or an empty state if the file does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return State.from_json(f.read(), path)
    except FileNotFoundError:
        return State()


def read_text(path: str) -> Optional[str]:
    """The raw text of the state file, or None if it does not exist (see :func:`restore`)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def restore(path: str, text: Optional[str]) -> None:
    """Put back what :func:`read_text` returned: that text (atomically), or no file at all."""
    if text is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    _write(path, text)


def save(path: str, state: State) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    _write(path, state.to_json())


def _write(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
