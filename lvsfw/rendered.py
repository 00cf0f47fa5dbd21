"""What a backend renders, as named parts: each part is one tool's input, loadable as is.

A backend's combined text (``str()`` of a :class:`Rendered`, what ``lvsfw.render`` returns)
is for reading: the iptables backends put three tools' input in it, under comments. A part
is for loading: ``lvsfw render FILE --backend B --part NAME | TOOL`` (``lvsfw render
--help`` says which tool loads which part). An empty part loads nothing (no rules of that
kind).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

import attrs

from lvsfw.errors import ValidationError

#: The part name of a single-part backend whose loading tool is not named like the backend;
#: any other single-part backend's part is named after the backend.
TOOL_PARTS = {"nftables": "nft", "ipvs": "ipvsadm"}


def part_name(backend: str) -> str:
    """The name of the one part of single-part backend ``backend``: its loading tool."""
    return TOOL_PARTS.get(backend, backend)


def _pairs(value: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((str(name), str(text)) for name, text in value)


def _check_parts(
    instance: Rendered, attribute: attrs.Attribute[tuple[tuple[str, str], ...]], value: object
) -> None:
    names = [name for name, _ in instance.parts]
    if not names or len(set(names)) != len(names):
        raise ValidationError("parts", names, "at least one part, each name once")


@attrs.frozen
class Rendered:
    """A backend's rendering: ``parts``, in loading order, as ``(name, text)`` pairs.

    ``str()`` is ``combined`` when given (the backend's readable form of all parts, with
    its header comments), else the parts' texts concatenated (for one part: its text).
    """

    parts: tuple[tuple[str, str], ...] = attrs.field(converter=_pairs, validator=_check_parts)
    combined: Optional[str] = None

    @classmethod
    def single(cls, name: str, text: str) -> Rendered:
        """A rendering of one part."""
        return cls(((name, text),))

    @property
    def names(self) -> tuple[str, ...]:
        """The part names, in loading order."""
        return tuple(name for name, _ in self.parts)

    def part(self, name: str) -> str:
        """The text of part ``name``, to be loaded as is by its tool.

        Raises :class:`ValidationError` naming the allowed parts for an unknown ``name``.
        """
        for known, text in self.parts:
            if known == name:
                return text
        raise ValidationError("part", name, f"one of {', '.join(self.names)}")

    def __str__(self) -> str:
        if self.combined is not None:
            return self.combined
        return "".join(text for _, text in self.parts)


__all__ = ["TOOL_PARTS", "Rendered", "part_name"]
