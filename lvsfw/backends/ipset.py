"""ipset classification for the iptables backends: single ports in one set per family.

Each family's single-port rules are members ``VIP,proto:port`` of one ``hash:ip,port`` set
carrying ``skbmark VALUE/MASK`` (the ``skbinfo`` extension) and the bundle's name
(``comment``). One rule in lvsfw's chain (:func:`lvsfw.backends.iptsyntax.set_rule`) gives a
member's packets its mark: one hash lookup per packet whatever the number of bundles. The
kernel applies ``skbmark`` as ``--set-xmark`` does: mark = (mark & ~MASK) ^ VALUE. Port ranges
stay ``-j MARK`` rules in the chain: as members a range would be one member per port.

A whole set is loaded into ``NAME-new`` and swapped in (a packet sees the old set or the new
one, never a half-filled one); a small change is ``del``/``add`` of the changed members only
(``add`` under ``-exist`` replaces a member's mark in place). Both go through one
``ipset restore -exist`` per apply. Only sets named by the backend are ever read or written.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from collections.abc import Collection, Iterable
from typing import Optional

import attrs

from lvsfw.backends.iptsyntax import address_text
from lvsfw.enums import Family, IPAddress, Protocol, address_key
from lvsfw.errors import ParseError
from lvsfw.model import FULL_MASK
from lvsfw.rules import MarkRule, Specification

#: The set type: (address, protocol:port) -> extensions.
SET_TYPE = "hash:ip,port"
INSTALL_HINT = "apt-get install ipset"
#: ipset's name of each address family.
FAMILIES = {Family.IPV4: "inet", Family.IPV6: "inet6"}
#: Appended to a set's name for the copy a whole load fills before the swap.
TEMP_SUFFIX = "-new"
#: Below this many changed members a change is always ``del``/``add``, never a reload.
INCREMENTAL_MIN = 64
#: Header words (``ipset save``'s create line) of extensions lvsfw never creates.
_EXTENSIONS = frozenset({"timeout", "counters", "forceadd", "netmask", "bitmask", "markmask"})
#: Header options that size a set, whatever made it (left out of a description).
_SIZES = frozenset({"hashsize", "maxelem", "bucketsize", "initval"})
_PROTOCOLS = {p.value: p for p in Protocol}
#: What ``ipset save`` prints for a member lvsfw wrote (the fast path of parsing).
_MEMBER = re.compile(
    r"^(?P<address>[0-9a-fA-F.:]+),(?P<proto>[a-z]+):(?P<port>[0-9]{1,5})"
    r'(?: comment "(?P<comment>[A-Za-z0-9_.-]*)")? skbmark (?P<mark>0x[0-9a-f]{1,8})'
    r"(?:/(?P<mask>0x[0-9a-f]{1,8}))?$"
)

#: A member: (VIP, protocol, port); its value: (mark, mask, bundle name or "").
Key = tuple[IPAddress, Protocol, int]
Value = tuple[int, int, str]


def member_text(key: Key) -> str:
    """``VIP,proto:port`` as ``ipset save`` prints it."""
    vip, protocol, port = key
    return f"{address_text(vip)},{protocol.value}:{port}"


def add_line(name: str, key: Key, value: Value) -> str:
    """The ``add`` line of one member, in ``ipset save``'s word order."""
    mark, mask, owner = value
    comment = f' comment "{owner}"' if owner else ""
    skbmark = f"{mark:#x}" if mask == FULL_MASK else f"{mark:#x}/{mask:#x}"
    return f"add {name} {member_text(key)}{comment} skbmark {skbmark}"


def _power_of_two(count: int, floor: int) -> int:
    return max(floor, 1 << max(count - 1, 1).bit_length())


def create_line(name: str, family: Family, count: int) -> str:
    """``create`` for a set about to hold ``count`` members, with room to grow to twice that
    (``maxelem``) before a reload; ``hashsize`` pre-sized so the load does not rehash."""
    return (
        f"create {name} {SET_TYPE} family {FAMILIES[family]} hashsize"
        f" {_power_of_two(count, 1024)} maxelem {_power_of_two(2 * count, 65536)} comment skbinfo"
    )


#: The last specification :func:`wanted_members` expanded, and its members per family (one
#: apply asks about the same specification a dozen times; a specification never changes).
_wanted: list[tuple[Optional[Specification], dict[Family, dict[Key, Value]]]] = [(None, {})]


def wanted_members(spec: Specification, family: Family) -> dict[Key, Value]:
    """``spec``'s single-port rules of ``family`` as members (do not modify the result)."""
    last, members = _wanted[0]
    if last is not spec:
        members = {f: {} for f in Family}
        for r in spec.rules:
            if r.first_port == r.last_port:
                value = (r.mark, r.mask, spec.owners.get(r, ""))
                members[r.family][(r.vip, r.protocol, r.first_port)] = value
        _wanted[0] = (spec, members)
    return members[family]


def _sorted(members: dict[Key, Value]) -> list[tuple[Key, Value]]:
    return sorted(members.items(), key=lambda kv: (address_key(kv[0][0]), kv[0][1].value, kv[0][2]))


def render_lines(name: str, family: Family, members: dict[Key, Value]) -> list[str]:
    """``ipset restore`` input creating set ``name`` directly with ``members`` (boot files)."""
    return [create_line(name, family, len(members))] + [
        add_line(name, k, v) for k, v in _sorted(members)
    ]


@attrs.frozen
class SetState:
    """One owned set as ``ipset save`` prints it.

    ``header`` the words of its ``create`` line after the name (type first); ``members`` its
    members; ``unknown`` member lines lvsfw does not understand (parsed with ``strict=False``).
    """

    name: str
    header: tuple[str, ...] = ()
    members: dict[Key, Value] = attrs.field(factory=dict)
    unknown: tuple[str, ...] = ()
    _owners: dict[Family, dict[MarkRule, str]] = attrs.field(
        factory=dict, init=False, eq=False, repr=False
    )

    def owners(self, family: Family) -> dict[MarkRule, str]:
        """The members of ``family`` as mark rules, with their bundle names (computed once:
        a set lvsfw trusts is the same object from one apply to the next; do not modify)."""
        found = self._owners.get(family)
        if found is None:
            found = self._owners[family] = {
                MarkRule(family, vip, proto, port, port, mark, mask): owner
                for (vip, proto, port), (mark, mask, owner) in self.members.items()
            }
        return found

    def _option(self, option: str) -> Optional[str]:
        words = self.header
        return words[words.index(option) + 1] if option in words[:-1] else None

    def problem(self, family: Family) -> Optional[str]:
        """Why this set cannot classify ``family`` for lvsfw (None: it can)."""
        if self.header[:1] != (SET_TYPE,) or self._option("family") != FAMILIES[family]:
            return f"is not a {SET_TYPE} set of family {FAMILIES[family]}"
        if not {"skbinfo", "comment"} <= set(self.header):
            return "lacks the skbinfo or comment extension"
        return None

    def alien(self, family: Family) -> Optional[str]:
        """Why lvsfw cannot have created this set as its set of ``family`` (None: it may have):
        another type or family, an extension missing, or one lvsfw never creates."""
        extra = sorted(_EXTENSIONS & set(self.header))
        if self.problem(family) is None and not extra:
            return None
        return (
            f"is {self.describe()}, not lvsfw's {SET_TYPE} family {FAMILIES[family]}"
            " comment skbinfo"
        )

    def describe(self) -> str:
        """The set's type, family and extensions, as ``ipset save`` prints them (no sizes)."""
        words, kept = list(self.header), []
        while words:
            word = words.pop(0)
            if word in _SIZES and words:
                words.pop(0)
            else:
                kept.append(word)
        count = len(self.members) + len(self.unknown)
        text = " ".join(kept) or "a set ipset cannot list"
        return f"{text} with {count} member{'' if count == 1 else 's'}"

    def swappable(self, family: Family) -> bool:
        """Whether ``ipset swap`` accepts this set and a new lvsfw set of ``family``."""
        return self.header[:1] == (SET_TYPE,) and self._option("family") == FAMILIES[family]

    def room(self) -> int:
        """How many members the set may hold (``maxelem``)."""
        text = self._option("maxelem") or "65536"
        return int(text) if (text.isascii() and text.isdigit()) else 0

    def rules(self, family: Family) -> frozenset[MarkRule]:
        """The members as mark rules of ``family``."""
        return frozenset(
            MarkRule(family, vip, protocol, port, port, mark, mask)
            for (vip, protocol, port), (mark, mask, _) in self.members.items()
            if vip.version == (4 if family == Family.IPV4 else 6)
        )


def _member(words: list[str], line: str) -> tuple[Key, Value]:
    """One ``add NAME ELEM [comment "X"] skbmark V[/M]`` line (``words`` after the name)."""
    address, _, rest = words[0].rpartition(",")
    proto, _, port = rest.partition(":")
    try:
        vip = ipaddress.ip_address(address)
    except ValueError:
        raise ParseError("ipset", line, f"member address {address!r} is not an address") from None
    if (
        proto not in _PROTOCOLS
        or not (port.isascii() and port.isdigit())
        or not 1 <= int(port) <= 65535
    ):
        raise ParseError("ipset", line, "member is not VIP,tcp|udp|sctp:PORT")
    options = dict(zip(words[1::2], words[2::2]))
    if len(words) % 2 == 0 or set(options) - {"comment", "skbmark"} or "skbmark" not in options:
        raise ParseError("ipset", line, "expected a member with skbmark (and comment) only")
    value_text, _, mask_text = options["skbmark"].partition("/")
    try:
        mark, mask = int(value_text, 16), int(mask_text, 16) if mask_text else FULL_MASK
    except ValueError:
        raise ParseError("ipset", line, "skbmark is not VALUE[/MASK] in hex") from None
    if not (0 < mark <= mask <= FULL_MASK and mark & ~mask == 0):
        raise ParseError("ipset", line, "mark must be non-zero and inside its mask")
    return (vip, _PROTOCOLS[proto], int(port)), (mark, mask, options.get("comment", ""))


def _fast_member(
    rest: str, line: str, addresses: Optional[dict[str, IPAddress]] = None
) -> tuple[Key, Value]:
    """:func:`_member` of the text after ``add NAME``, without tokenizing what lvsfw wrote;
    ``addresses``: the addresses parsed so far, by text (a VIP has a member per port)."""
    match = _MEMBER.match(rest.strip())
    if match is None or match["proto"] not in _PROTOCOLS:
        try:
            words = shlex.split(rest)
        except ValueError:
            raise ParseError("ipset", line, "unbalanced quotes") from None
        return _member(words or [""], line)
    mark, mask = int(match["mark"], 16), int(match["mask"], 16) if match["mask"] else FULL_MASK
    port, text = int(match["port"]), match["address"]
    vip = addresses.get(text) if addresses is not None else None
    if vip is None:
        try:
            vip = ipaddress.ip_address(text)
        except ValueError:
            raise ParseError("ipset", line, "member address is not an address") from None
        if addresses is not None:
            addresses[text] = vip
    if not (0 < mark <= mask <= FULL_MASK and mark & ~mask == 0) or not 1 <= port <= 65535:
        raise ParseError("ipset", line, "mark outside its mask, or port outside 1..65535")
    return (vip, _PROTOCOLS[match["proto"]], port), (mark, mask, match["comment"] or "")


def parse_sets(
    lines: Iterable[str], names: Collection[str], strict: bool = True
) -> dict[str, SetState]:
    """The sets of ``names`` in ``ipset save`` lines; other sets' lines are skipped.

    A member line lvsfw does not understand raises :class:`ParseError` when ``strict``, else
    lands in :attr:`SetState.unknown`.
    """
    headers: dict[str, tuple[str, ...]] = {}
    members: dict[str, dict[Key, Value]] = {}
    unknown: dict[str, list[str]] = {}
    addresses: dict[str, IPAddress] = {}
    for line in lines:
        command, _, rest = line.strip().partition(" ")
        name, _, rest = rest.partition(" ")
        if command not in {"create", "add"}:
            raise ParseError("ipset", line, "expected an ipset create or add line")
        if name not in names:
            continue
        if command == "create":
            headers[name] = tuple(rest.split())
            continue
        try:
            key, value = _fast_member(rest, line, addresses)
            members.setdefault(name, {})[key] = value
        except ParseError:
            if strict:
                raise
            unknown.setdefault(name, []).append(line)
    return {
        name: SetState(
            name, headers.get(name, ()), members.get(name, {}), tuple(unknown.get(name, ()))
        )
        for name in {*headers, *members, *unknown}
    }


def load_lines(
    name: str,
    family: Family,
    wanted: dict[Key, Value],
    live: Optional[SetState],
    existing: Collection[str],
) -> list[str]:
    """``ipset restore -exist`` lines making set ``name`` hold exactly ``wanted``.

    ``del``/``add`` of the difference when the live set is usable and the change is small;
    otherwise a whole load into ``NAME-new``, swapped in (or renamed, when there is no set
    yet or it is of a type swap refuses: it is destroyed first) and destroyed. ``live`` must
    be lvsfw's own set: the caller refuses foreign ones. ``existing``: every set name in the
    namespace.
    """
    usable = live is not None and live.alien(family) is None and not live.unknown
    if live is not None and usable and live.room() >= len(wanted):
        dels = [f"del {name} {member_text(k)}" for k in live.members if k not in wanted]
        adds = [add_line(name, k, v) for k, v in wanted.items() if live.members.get(k) != v]
        if len(dels) + len(adds) <= max(INCREMENTAL_MIN, len(wanted) // 2):
            return dels + adds
    temp = name + TEMP_SUFFIX
    lines = [f"destroy {temp}"] if temp in existing else []
    lines += render_lines(temp, family, wanted)
    if name in existing and (live is None or live.swappable(family)):
        return [*lines, f"swap {temp} {name}", f"destroy {temp}"]
    if name in existing:  # lvsfw's (recorded) but of another type: swap would refuse it
        lines.append(f"destroy {name}")
    return [*lines, f"rename {temp} {name}"]


def _module(name: str) -> bool:
    """Whether kernel module ``name`` is loaded, built in, or installed (loadable)."""
    if os.path.isdir(f"/sys/module/{name}"):
        return True
    base = f"/lib/modules/{os.uname().release}"
    for listing in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join(base, listing), encoding="utf-8") as f:
                if f"/{name}.ko" in f.read():
                    return True
        except OSError:
            continue
    return False


def kernel_problem() -> Optional[str]:
    """Why this kernel cannot classify through ipset from iptables (None: it can)."""
    try:
        with open("/proc/net/ip_tables_matches", encoding="utf-8") as f:
            matches = f.read().split()
    except OSError:
        matches = []
    if not _module("ip_set"):
        return "the kernel has no ip_set support (CONFIG_IP_SET, module ip_set)"
    if "set" not in matches and not _module("xt_set"):
        return "the kernel has no iptables set match (CONFIG_NETFILTER_XT_SET, module xt_set)"
    return None


__all__ = [
    "FAMILIES",
    "SET_TYPE",
    "SetState",
    "add_line",
    "create_line",
    "kernel_problem",
    "load_lines",
    "member_text",
    "parse_sets",
    "render_lines",
    "wanted_members",
]
