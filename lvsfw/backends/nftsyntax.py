"""The nftables backend's syntax: table layout and the JSON building blocks lvsfw sends.

Everything here is pure. :mod:`lvsfw.backends.nftparse` reads both the ``nft list`` text and
the ``nft -j list`` JSON of table ``inet lvsfw`` back (see :mod:`lvsfw.backends.nftables` for
the layout).

Each map element carries the name of the bundle it comes from as its comment
(``192.0.2.10 . tcp . 80 comment "web" : 0x00000050``; in libnftables JSON the key is wrapped
as ``{"elem": {"val": KEY, "comment": "web"}}``). The comment is part of the element: nft
keeps an element's first comment when the same key is added again, so a renamed bundle's
elements are deleted and added again in one transaction.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional, TypeVar, Union

from lvsfw.enums import Family, IPAddress, Protocol
from lvsfw.model import FULL_MASK
from lvsfw.rules import MarkRule, normalize

TABLE = "lvsfw"
FAMILY = "inet"
FULL = FULL_MASK  # the short name this module and nftdelta use
INSTALL_HINT = "apt-get install libnftables1 python3-nftables / pip install pip-nftables"
#: The prerouting chain's (type, hook, priority, policy).
HOOK = ("filter", "prerouting", "-150", "accept")

Key = tuple[IPAddress, Protocol, int, int]
#: A map datum: a mark (``markN``) or the name of a mark chain (``maskedN``).
Value = Union[int, str]
#: A map element's datum and comment (the bundle name; None: no comment).
Entry = tuple[Value, Optional[str]]
Json = dict[str, Any]
Content = dict[str, dict[Key, Entry]]
T = TypeVar("T")

#: map name -> (family, datum kind, interval): the skeleton's maps. Single ports live in
#: plain hash maps (O(1) per packet); only port ranges live in interval maps (pipapo, whose
#: lookup grows with the number of elements).
MAPS: dict[str, tuple[Family, str, bool]] = {
    f"{kind}{span}{family.value[-1]}": (family, datum, bool(span))
    for family in Family
    for kind, datum in (("mark", "mark"), ("masked", "verdict"))
    for span in ("", "range")
}
ADDR = {Family.IPV4: ("ip", "ipv4_addr"), Family.IPV6: ("ip6", "ipv6_addr")}
#: Protocol -> its name (``Enum.value`` is a slow descriptor in hot loops)
PROTO_NAME = {p: p.value for p in Protocol}
#: What lvsfw writes as an element comment: a bundle name's characters (nft keeps at most
#: 128 bytes of a comment).
_COMMENT = re.compile(r"[A-Za-z0-9_.-]{1,128}")
META_MARK = {"meta": {"key": "mark"}}
TABLE_OBJ = {"table": {"family": FAMILY, "name": TABLE}}
PARSE_ERRORS = (ValueError, LookupError, TypeError, AttributeError)


def kept_bits(mark: int, mask: int) -> int:
    """The bits a masked mark keeps: those outside ``mask``, plus the mark's own (as nft does)."""
    return (~mask | mark) & FULL


def mark_line(keep: int, mark: int) -> str:
    """The text of a mark chain's rule."""
    kept = "" if keep == FULL else f" & {keep:#010x}"
    return f"meta mark set meta mark{kept} | {mark:#010x}"


def mark_json(keep: int, mark: int) -> list[Json]:
    left: object = META_MARK if keep == FULL else {"&": [META_MARK, keep]}
    return [{"mangle": {"key": META_MARK, "value": {"|": [left, mark]}}}]


def _lookup(name: str) -> tuple[str, list[Json]]:
    """One skeleton rule of chain prerouting: its text and its libnftables JSON."""
    family, kind, _ = MAPS[name]
    proto, masked = ADDR[family][0], kind == "verdict"
    fields = [("payload", proto, "daddr"), ("meta", "", "l4proto"), ("payload", "th", "dport")]
    key = {"concat": [{k: {"protocol": p, "field": f} if p else {"key": f}} for k, p, f in fields]}
    text = f"{proto} daddr . meta l4proto . th dport"
    if masked:
        return f"{text} vmap @{name}", [{"vmap": {"key": key, "data": f"@{name}"}}]
    value = {"map": {"key": key, "data": f"@{name}"}}
    mangle = {"mangle": {"key": META_MARK, "value": value}}
    return f"meta mark set {text} map @{name} accept", [mangle, {"accept": None}]


#: Chain prerouting: a hit in a mark map accepts (later lookups are skipped); a hit in a
#: masked map jumps (goto) to a mark chain, which ends the chain too.
SKELETON = tuple(_lookup(name) for name in MAPS)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Build or read a whole table without the cyclic garbage collector (also a decorator).

    A 10,000-bundle table is some 200,000 small acyclic containers; allocating them sets off
    full collections again and again, which cost more than the building itself. The
    collector is back as it was afterwards and finds nothing of ours to free.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@functools.lru_cache(maxsize=1 << 16)
def note(name: Optional[str]) -> Optional[str]:
    """``name`` as an element comment: None when absent or not made of a bundle name's
    characters (which bundle names always are: anything else is left uncommented)."""
    return name if name is not None and _COMMENT.fullmatch(name) else None


def map_type(family: Family, kind: str) -> str:
    return f"{ADDR[family][1]} . inet_proto . inet_service : {kind}"


@functools.lru_cache(maxsize=1 << 16)
def _address_text(address: IPAddress) -> str:
    return str(address)


def _hash_order(kv: tuple[Key, Entry]) -> tuple[int, int, int]:
    """nft lists a hash map's elements by the key's bytes read as one little-endian number
    (last byte most significant): port bytes swapped, then protocol, then address bytes."""
    address, protocol, port = kv[0][0], kv[0][1], kv[0][2]
    swapped = ((port & 0xFF) << 8) | (port >> 8)
    return (swapped, _PROTO_NUMBER[protocol], _little(address))


_PROTO_NUMBER = {p: p.number for p in Protocol}


@functools.lru_cache(maxsize=1 << 16)
def _little(address: IPAddress) -> int:
    return int.from_bytes(address.packed, "little")


def _interval_order(kv: tuple[Key, Entry]) -> tuple[int, int, str, int, int]:
    key = kv[0]
    return (key[0].version, int(key[0]), PROTO_NAME[key[1]], key[2], key[3])


def sorted_elements(elements: dict[Key, Entry], interval: bool) -> list[tuple[Key, Entry]]:
    """``elements`` in the order ``nft list`` prints them for that kind of map."""
    return sorted(elements.items(), key=_interval_order if interval else _hash_order)


def key_text(key: Key) -> str:
    ports = str(key[2]) if key[2] == key[3] else f"{key[2]}-{key[3]}"
    return f"{key[0]} . {PROTO_NAME[key[1]]} . {ports}"


def map_name(masked: bool, interval: bool, family: Family) -> str:
    """The skeleton map holding a key of ``family`` with that kind of datum and port span."""
    return f"{'masked' if masked else 'mark'}{'range' if interval else ''}{family.value[-1]}"


def _key_json(key: Key) -> Json:
    port: object = key[2] if key[2] == key[3] else {"range": [key[2], key[3]]}
    return {"concat": [_address_text(key[0]), PROTO_NAME[key[1]], port]}


def _value_json(value: Value) -> object:
    return value if isinstance(value, int) else {"goto": {"target": value}}


def table_object(kind: str, **fields: object) -> Json:
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def add_mark_chain(name: str, mark: int, mask: int) -> list[Json]:
    rule = table_object("rule", chain=name, expr=mark_json(kept_bits(mark, mask), mark))
    return [{"add": table_object("chain", name=name)}, {"add": rule}]


def _elem_json(key: Key, comment: Optional[str]) -> Json:
    """An element's key, wrapped with its comment when it has one."""
    if comment is None:
        return _key_json(key)
    return {"elem": {"val": _key_json(key), "comment": comment}}


def element_list(items: list[tuple[Key, Entry]], data: bool = True) -> list[object]:
    """``items`` as libnftables JSON: ``[KEY, DATUM]`` pairs (the key wrapped with its
    comment), or bare keys without ``data`` (a deletion names the key only)."""
    if not data:
        return [_key_json(k) for k, _ in items]
    return [[_elem_json(k, c), _value_json(v)] for k, (v, c) in items]


def elements(verb: str, name: str, items: list[tuple[Key, Entry]], data: bool) -> list[Json]:
    """``verb`` (add/delete) ``items`` of map ``name``; nothing when there are none."""
    return (
        [{verb: table_object("element", name=name, elem=element_list(items, data))}]
        if items
        else []
    )


def chain_name(mark: int, mask: int) -> str:
    """The mark chain setting ``mark`` under ``mask``."""
    return f"mark-{mark:08x}-{mask:08x}"


def placement(rule: MarkRule) -> tuple[str, Value]:
    """The map holding ``rule`` (in lvsfw's layout) and the element's datum."""
    masked, interval = rule.mask & FULL != FULL, rule.first_port != rule.last_port
    name = map_name(masked, interval, rule.family)
    return name, chain_name(rule.mark, rule.mask) if masked else rule.mark


def desired(
    rules: Iterable[MarkRule], names: Optional[Mapping[MarkRule, str]] = None
) -> tuple[Content, dict[str, tuple[int, int]]]:
    """Map contents and mark chains for ``rules`` (normalized first); each element's comment
    is its rule's name in ``names`` (see :func:`note`)."""
    content: Content = {name: {} for name in MAPS}
    chains: dict[str, tuple[int, int]] = {}
    maps = {
        (masked, interval, family): map_name(masked, interval, family)
        for masked in (False, True)
        for interval in (False, True)
        for family in Family
    }
    named = names.get if names else None
    for rule in normalize(rules):
        lo, hi = rule.first_port, rule.last_port
        key = (rule.vip, rule.protocol, lo, hi)
        comment = note(named(rule)) if named is not None else None
        if rule.mask & FULL == FULL:
            content[maps[False, lo != hi, rule.family]][key] = (rule.mark, comment)
        else:
            name = chain_name(rule.mark, rule.mask)
            chains[name] = (rule.mark, rule.mask)
            content[maps[True, lo != hi, rule.family]][key] = (name, comment)
    return content, chains
