"""What the rule scanners find (:class:`FoundRule`, :class:`Scan`) and the value readers the
iptables and nft scanners share. A value lvsfw cannot represent exactly raises :class:`Skip`:
the rule is left out with a warning, never read wider."""

from __future__ import annotations

import ipaddress
import socket

import attrs

from lvsfw.enums import Family, IPAddress, Protocol
from lvsfw.errors import LvsfwError
from lvsfw.model import FULL_MASK

FULL = FULL_MASK  # the short name the scanners (and their tests) use
MAX_PORT = 65535


@attrs.frozen(order=True)
class FoundRule:
    """Packets to ``vip`` on ``protocol`` ports first..last get ``mark`` within ``mask``.

    ``where`` is ``SOURCE:LINE``; ``comment`` the rule's comment, if any.
    """

    mark: int
    mask: int
    vip: IPAddress = attrs.field(order=lambda a: (a.version, int(a)))
    protocol: Protocol
    first_port: int
    last_port: int
    where: str = attrs.field(eq=False, order=False)
    comment: str = attrs.field(default="", eq=False, order=False)

    @property
    def family(self) -> Family:
        """The VIP's address family."""
        return Family.of(self.vip)


@attrs.define
class Scan:
    """What a scan found: the rules, and one warning per mark rule it could not take (or
    took with a caveat)."""

    rules: list[FoundRule] = attrs.Factory(list)
    warnings: list[str] = attrs.Factory(list)

    def extend(self, other: Scan) -> None:
        """Add ``other``'s findings, dropping rules already found (a rule seen twice)."""
        seen = set(self.rules)
        for rule in other.rules:
            if rule not in seen:
                seen.add(rule)
                self.rules.append(rule)
        self.warnings += other.warnings


class Skip(Exception):
    """A mark rule lvsfw cannot express exactly; the message names what and why."""


def port(text: str) -> int:
    """A port number 1..65535 or a service name (``/etc/services``)."""
    if (text.isascii() and text.isdigit()) and 1 <= int(text) <= MAX_PORT:
        return int(text)
    try:
        return socket.getservbyname(text)
    except (OSError, ValueError):  # unknown service; NUL or non-ASCII text
        raise Skip(f"port {text!r} is not a number 1..65535 or a known service") from None


def port_range(item: str, separator: str) -> tuple[int, int]:
    """One port or range: ``80``, ``1000:2000``; iptables' open ends ``1024:`` (to 65535)
    and ``:1024`` (from port 0, which no service uses: read from 1)."""
    first, found, last = (p.strip() for p in item.partition(separator))
    if not found:
        low = port(first)
        return low, low
    if separator == ":" and first in {"", "0"} and last in {"", "0"}:
        raise Skip(f"port range {item!r} is every port or port 0 alone")
    low = 1 if separator == ":" and first in {"", "0"} else port(first)
    high = port(last) if last or separator != ":" else MAX_PORT
    if low > high:
        raise Skip(f"port range {item!r} runs backwards")
    return low, high


def ports(text: str, separator: str) -> list[tuple[int, int]]:
    """The ranges of a comma-separated port list (braces around it allowed)."""
    ranges = [port_range(p, separator) for p in text.strip("{} ").split(",") if p.strip()]
    if not ranges:
        raise Skip("no ports")
    return ranges


def address(text: str) -> IPAddress:
    """One VIP: an address or a /32 (/128) network."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise Skip(f"destination {text!r} is not an address") from None
    if network.num_addresses != 1:
        raise Skip(f"destination {text} is a network, not one VIP")
    return network.network_address


def protocol(text: str) -> Protocol:
    """tcp, udp or sctp, by name or number."""
    names = {"6": "tcp", "17": "udp", "132": "sctp"}
    try:
        return Protocol.parse(names.get(text.lower(), text.lower()), "protocol")
    except LvsfwError:
        raise Skip(f"protocol {text!r} is not tcp, udp or sctp") from None


def number(text: str) -> int:
    """A mark or mask 1..2**32-1, decimal or 0x hex."""
    try:
        value = int(text, 0)
    except ValueError:
        raise Skip(f"mark {text!r} is not a number") from None
    if not 0 < value <= FULL:
        raise Skip(f"mark {text} is out of range 1..{FULL:#x}")
    return value


def make_rules(
    marks: tuple[int, int],
    vips: list[IPAddress],
    protocols: list[Protocol],
    ranges: list[tuple[int, int]],
    *,
    where: str,
    comment: str,
) -> list[FoundRule]:
    """Every (VIP, protocol, range) of one rule as a :class:`FoundRule`."""
    mark, mask = marks
    if mark & ~mask & FULL:
        raise Skip(f"mark {mark:#x} has bits outside its mask {mask:#x}")
    return [
        FoundRule(mark, mask, vip, proto, low, high, where, comment)
        for vip in vips
        for proto in protocols
        for low, high in ranges
    ]
