"""Port ranges and port bundles: which protocol/ports share one firewall mark."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Union

import attrs

from lvsfw.enums import Protocol
from lvsfw.errors import ParseError, ValidationError

_GROUP = re.compile(r"^([A-Za-z]+):(.+)$")
_PORT = re.compile(r"^\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?$")


def ports_text(first: int, last: int, sep: str = "-") -> str:
    """Ports ``first``..``last`` as text: ``"80"`` for one port, else ``"80-90"`` (``sep``
    between them: ``":"`` for iptables' ``--dport``)."""
    return str(first) if first == last else f"{first}{sep}{last}"


def _check_port(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValidationError(field, value, "an integer port 1..65535")
    return value


def _protocol(value: object) -> Protocol:
    return Protocol.parse(value, "protocol")


@attrs.frozen(order=True)
class PortRange:
    """``first_port``..``last_port`` (inclusive, 1..65535, first <= last) of one protocol."""

    protocol: Protocol = attrs.field(converter=_protocol)
    first_port: int = attrs.field()
    last_port: int = attrs.field()

    @first_port.validator
    def _first(self, attribute: attrs.Attribute[int], value: int) -> None:
        _check_port("first_port", value)

    @last_port.validator
    def _last(self, attribute: attrs.Attribute[int], value: int) -> None:
        _check_port("last_port", value)
        if value < self.first_port:
            raise ValidationError(
                "last_port", value, f"a port >= first_port {self.first_port} (range reversed)"
            )

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first_port <= port <= self.last_port

    def __len__(self) -> int:
        return self.last_port - self.first_port + 1

    def __str__(self) -> str:
        return f"{self.protocol}:{ports_text(self.first_port, self.last_port)}"


RangeLike = Union[PortRange, "tuple[object, int, int]", "tuple[object, int]"]
PortsLike = Union["PortBundle", str, Iterable[RangeLike]]


def merge_ranges(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Sort ``ranges`` and merge those of one protocol that overlap or touch."""
    merged: list[PortRange] = []
    for r in sorted(ranges):
        last = merged[-1] if merged else None
        if last is not None and last.protocol == r.protocol and r.first_port <= last.last_port + 1:
            if r.last_port > last.last_port:
                merged[-1] = PortRange(last.protocol, last.first_port, r.last_port)
        else:
            merged.append(r)
    return tuple(merged)


def _to_range(item: object) -> PortRange:
    if isinstance(item, PortRange):
        return item
    if isinstance(item, tuple) and len(item) == 3:
        return PortRange(item[0], item[1], item[2])
    if isinstance(item, tuple) and len(item) == 2:
        return PortRange(item[0], item[1], item[1])
    raise ValidationError("ports", item, "a PortRange or a (protocol, first, last) tuple")


def _to_ranges(value: object) -> tuple[PortRange, ...]:
    if isinstance(value, PortBundle):
        return value.ranges
    if isinstance(value, str):
        return PortBundle.from_string(value).ranges
    if isinstance(value, (list, tuple, set, frozenset)):
        ranges = merge_ranges(_to_range(item) for item in value)
        if not ranges:
            raise ValidationError("ports", value, "at least one protocol:port")
        return ranges
    raise ValidationError("ports", value, 'a port list such as "tcp:80,443 udp:53"')


@attrs.frozen
class PortBundle:
    """A non-empty set of protocol port ranges, kept sorted and merged.

    Built from text with :meth:`from_string` (``"tcp:21,10000-20000 udp:53"``) or from
    :class:`PortRange` objects / ``(protocol, first, last)`` tuples.
    """

    ranges: tuple[PortRange, ...] = attrs.field(converter=_to_ranges)

    @classmethod
    def from_string(cls, text: str) -> PortBundle:
        """Parse ``"proto:port[-port][,...] [proto:...]"``; groups split on blanks or ``;``."""
        if not isinstance(text, str):
            raise ValidationError("ports", text, 'a port list such as "tcp:80,443 udp:53"')
        ranges: list[PortRange] = []
        for group in re.split(r"[\s;]+", text.strip()):
            if not group:
                continue
            m = _GROUP.match(group)
            if m is None:
                raise ParseError("ports", group, 'expected "protocol:port[,port|first-last]..."')
            protocol = Protocol.parse(m.group(1), "protocol")
            for spec in m.group(2).split(","):
                pm = _PORT.match(spec)
                if pm is None:
                    raise ParseError("ports", spec, "expected a port N or a range N-M")
                first = int(pm.group(1))
                last = int(pm.group(2)) if pm.group(2) else first
                ranges.append(PortRange(protocol, first, last))
        if not ranges:
            raise ValidationError("ports", text, 'at least one protocol:port, e.g. "tcp:80"')
        return cls(ranges)

    @property
    def protocols(self) -> frozenset[Protocol]:
        """The protocols this bundle marks."""
        return frozenset(r.protocol for r in self.ranges)

    def __iter__(self) -> Iterator[PortRange]:
        return iter(self.ranges)

    def __contains__(self, item: object) -> bool:
        """``(protocol, port) in bundle``."""
        if not (isinstance(item, tuple) and len(item) == 2):
            return False
        proto, port = item
        return any(r.protocol == proto and port in r for r in self.ranges)

    def __str__(self) -> str:
        groups: dict[Protocol, list[str]] = {}
        for r in self.ranges:
            text = str(r).split(":", 1)[1]
            groups.setdefault(r.protocol, []).append(text)
        return " ".join(f"{p}:{','.join(v)}" for p, v in groups.items())
