"""The nftables backend's syntax: table layout, JSON building blocks, and parsers.

Everything here is pure: it builds the libnftables JSON lvsfw sends and reads back both the
``nft list`` text and the ``nft -j list`` JSON of table ``inet lvsfw`` (see
:mod:`lvsfw.backends.nftables` for the layout).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from typing import Any, Optional, TypeVar, Union

import attrs

from lvsfw.enums import Family, IPAddress, Protocol
from lvsfw.errors import ParseError
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
Json = dict[str, Any]
Content = dict[str, dict[Key, Value]]
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
_PROTOCOLS = {**{p.value: p for p in Protocol}, **{str(p.number): p for p in Protocol}}
_CHAIN = re.compile(r"^mark-([0-9a-f]{8})-([0-9a-f]{8})$")
_NUMBER = r"(0x[0-9a-f]{1,8}|[1-9][0-9]{0,9})"
_MARK_LINE = re.compile(rf"^meta mark set meta mark(?: & {_NUMBER})? \| {_NUMBER}$")
_HOOK_LINE = re.compile(r"^type (\S+) hook (\S+)(?: device \S+)? priority (\S+)$")
_TOKEN = re.compile(r'"[^"]*"|#[^\n]*|[;\n{}]|[^"#;\n{}]+|"')
_META_MARK = {"meta": {"key": "mark"}}
TABLE_OBJ = {"table": {"family": FAMILY, "name": TABLE}}
PARSE_ERRORS = (ValueError, LookupError, TypeError, AttributeError)


def kept_bits(mark: int, mask: int) -> int:
    """The bits a masked mark keeps: those outside ``mask``, plus the mark's own (as nft does)."""
    return (~mask | mark) & FULL


def mark_line(keep: int, mark: int) -> str:
    """The text of a mark chain's rule."""
    kept = "" if keep == FULL else f" & {keep:#010x}"
    return f"meta mark set meta mark{kept} | {mark:#010x}"


def _mark_json(keep: int, mark: int) -> list[Json]:
    left: object = _META_MARK if keep == FULL else {"&": [_META_MARK, keep]}
    return [{"mangle": {"key": _META_MARK, "value": {"|": [left, mark]}}}]


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
    mangle = {"mangle": {"key": _META_MARK, "value": value}}
    return f"meta mark set {text} map @{name} accept", [mangle, {"accept": None}]


#: Chain prerouting: a hit in a mark map accepts (later lookups are skipped); a hit in a
#: masked map jumps (goto) to a mark chain, which ends the chain too.
SKELETON = tuple(_lookup(name) for name in MAPS)


def _rule_line(expr: Any) -> str:
    """A rule's JSON expressions as the text nft prints (raw JSON when unknown)."""
    for text, known in SKELETON:
        if expr == known:
            return text
    try:
        left, mark = expr[0]["mangle"]["value"]["|"]
        keep = FULL if left == _META_MARK else left["&"][1]
        if isinstance(mark, int) and isinstance(keep, int) and expr == _mark_json(keep, mark):
            return mark_line(keep, mark)
    except PARSE_ERRORS:
        pass
    return f"json {expr!r}"


def map_type(family: Family, kind: str) -> str:
    return f"{ADDR[family][1]} . inet_proto . inet_service : {kind}"


def _key(address: object, protocol: object, first: object, last: object) -> Key:
    """A map key from its parsed parts; ParseError (or ValueError) when a part is invalid."""
    proto = _PROTOCOLS.get(str(protocol))
    if proto is None or not isinstance(address, str):
        raise ParseError("nftables", f"{address} . {protocol}", "expected ADDRESS . tcp|udp|sctp")
    lo, hi = int(str(first)), int(str(last))
    if not 1 <= lo <= hi <= 65535:
        raise ParseError("nftables", f"{first}-{last}", "expected ports 1..65535, first <= last")
    return (_address(address), proto, lo, hi)


@functools.lru_cache(maxsize=1 << 16)
def _address(text: str) -> IPAddress:
    """A parsed address (a listing repeats each VIP once per port: parse it once)."""
    return ipaddress.ip_address(text)


@functools.lru_cache(maxsize=1 << 16)
def _address_text(address: IPAddress) -> str:
    return str(address)


def _hash_order(kv: tuple[Key, Value]) -> tuple[int, int, int]:
    """nft lists a hash map's elements by the key's bytes read as one little-endian number
    (last byte most significant): port bytes swapped, then protocol, then address bytes."""
    address, protocol, port = kv[0][0], kv[0][1], kv[0][2]
    swapped = ((port & 0xFF) << 8) | (port >> 8)
    return (swapped, _PROTO_NUMBER[protocol], _little(address))


_PROTO_NUMBER = {p: p.number for p in Protocol}


@functools.lru_cache(maxsize=1 << 16)
def _little(address: IPAddress) -> int:
    return int.from_bytes(address.packed, "little")


def _interval_order(kv: tuple[Key, Value]) -> tuple[int, int, str, int, int]:
    key = kv[0]
    return (key[0].version, int(key[0]), PROTO_NAME[key[1]], key[2], key[3])


def sorted_elements(elements: dict[Key, Value], interval: bool) -> list[tuple[Key, Value]]:
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
    rule = table_object("rule", chain=name, expr=_mark_json(kept_bits(mark, mask), mark))
    return [{"add": table_object("chain", name=name)}, {"add": rule}]


def element_list(items: list[tuple[Key, Value]], data: bool = True) -> list[object]:
    return [[_key_json(k), _value_json(v)] if data else _key_json(k) for k, v in items]


def elements(verb: str, name: str, items: list[tuple[Key, Value]], data: bool) -> list[Json]:
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


def desired(rules: Iterable[MarkRule]) -> tuple[Content, dict[str, tuple[int, int]]]:
    """Map contents and mark chains for ``rules`` (normalized first)."""
    content: Content = {name: {} for name in MAPS}
    chains: dict[str, tuple[int, int]] = {}
    names = {
        (masked, interval, family): map_name(masked, interval, family)
        for masked in (False, True)
        for interval in (False, True)
        for family in Family
    }
    for rule in normalize(rules):
        lo, hi = rule.first_port, rule.last_port
        key = (rule.vip, rule.protocol, lo, hi)
        if rule.mask & FULL == FULL:
            content[names[False, lo != hi, rule.family]][key] = rule.mark
        else:
            name = chain_name(rule.mark, rule.mask)
            chains[name] = (rule.mark, rule.mask)
            content[names[True, lo != hi, rule.family]][key] = name
    return content, chains


@attrs.define
class _Map:
    type: str = ""
    flags: frozenset[str] = frozenset()
    elements: dict[Key, Value] = attrs.Factory(dict)


@attrs.define
class _Chain:
    hook: Optional[tuple[str, ...]] = None
    rules: list[str] = attrs.Factory(list)


@attrs.define
class Table:
    """The own table as read from text or JSON, before it is judged."""

    maps: dict[str, _Map] = attrs.Factory(dict)
    chains: dict[str, _Chain] = attrs.Factory(dict)
    problems: list[str] = attrs.Factory(list)


@attrs.frozen
class LiveState:
    """What table ``inet lvsfw`` holds: its rules and how it departs from lvsfw's layout.

    ``exists``: the table is there. ``rules``: the marks the kernel applies. ``problems``: each
    departure from the rendered skeleton (a missing or altered map, chain, hook or rule, a
    foreign object, an element whose mark cannot be told); empty when ``intact``.
    """

    exists: bool
    rules: frozenset[MarkRule] = frozenset()
    problems: tuple[str, ...] = ()
    unresolved: tuple[str, ...] = attrs.field(default=(), repr=False)
    content: Content = attrs.field(factory=dict, eq=False, repr=False)
    chains: dict[str, tuple[int, int]] = attrs.field(factory=dict, eq=False, repr=False)
    #: What lvsfw itself wrote (set instead of content/chains when known without a read).
    target: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def cached(self) -> bool:
        """Known from lvsfw's own last commit rather than read from the kernel."""
        return self.target is not None

    @property
    def intact(self) -> bool:
        """The table exists and is exactly lvsfw's layout (whatever its elements)."""
        return self.exists and not self.problems


def _judge_chains(table: Table, problems: list[str]) -> dict[str, tuple[int, int]]:
    """The (mark, mask) each mark chain sets; departures are added to ``problems``."""
    chains: dict[str, tuple[int, int]] = {}
    for name, chain in table.chains.items():
        if name == "prerouting":
            if chain.hook != HOOK:
                problems.append(f"chain prerouting: hook {chain.hook}, expected {HOOK}")
            if chain.rules != [text for text, _ in SKELETON]:
                problems.append("chain prerouting: rules differ from lvsfw's map lookups")
            continue
        named = _CHAIN.match(name)
        found = _MARK_LINE.match(chain.rules[0]) if len(chain.rules) == 1 else None
        mark, keep = (int(found[2], 0), int(found[1] or str(FULL), 0)) if found else (0, 0)
        if named is None or not 0 < mark <= FULL or keep > FULL or chain.hook is not None:
            problems.append(f"unexpected chain {name}")
            continue
        chains[name] = (mark, (~keep | mark) & FULL)
        if chains[name] != (int(named[1], 16), int(named[2], 16)):
            problems.append(f"chain {name} sets mark {mark:#x} keeping {keep:#x}")
    if "prerouting" not in table.chains:
        problems.append("chain prerouting is missing")
    return chains


def analyse(table: Table) -> LiveState:
    """Judge ``table`` against the skeleton and derive the rules it applies."""
    problems = list(table.problems)
    chains = _judge_chains(table, problems)
    problems += [f"map {name} is missing" for name in MAPS if name not in table.maps]
    content: Content = {}
    rules: list[MarkRule] = []
    unresolved: list[str] = []
    for name, found in table.maps.items():
        if name not in MAPS:
            problems.append(f"unexpected map {name}")
            continue
        family, kind, interval = MAPS[name]
        flags = {"interval"} if interval else set()
        if found.type != map_type(family, kind) or found.flags != flags:
            problems.append(f"map {name}: type {found.type!r}, flags {sorted(found.flags)}")
        content[name] = {}
        for key, value in found.elements.items():
            marked = None
            if Family.of(key[0]) is family and isinstance(value, int) and kind == "mark":
                marked = (value, FULL) if 0 < value <= FULL else None
            elif Family.of(key[0]) is family and isinstance(value, str) and kind == "verdict":
                marked = chains.get(value)
            if marked is None:
                unresolved.append(f"map {name} element {key_text(key)} : {value}")
                continue
            content[name][key] = value
            rules.append(MarkRule(family, key[0], key[1], key[2], key[3], *marked))
    problems += unresolved
    return LiveState(True, frozenset(rules), tuple(problems), tuple(unresolved), content, chains)


def _flat(parts: list[str]) -> str:
    return " ".join("".join(parts).split())


def _split(text: str) -> list[tuple[str, Optional[str]]]:
    """One level of nft syntax: statements ``(text, None)`` and blocks ``(header, body)``."""
    nodes: list[tuple[str, Optional[str]]] = []
    buf: list[str] = []
    body: list[str] = []
    depth = 0
    for piece in [*_TOKEN.findall(text), "\n"]:
        if piece[0] == "#":
            continue
        if piece == '"' or (piece == "}" and not depth):
            raise ParseError("nftables", text[:60], f"unbalanced {piece!r}")
        if depth:
            depth += {"{": 1, "}": -1}.get(piece, 0)
            if depth:
                body.append(piece)
                continue
            nodes.append((_flat(buf), "".join(body)))
            buf, body = [], []
        elif piece == "{":
            depth = 1
        elif piece in ";\n":
            nodes += [(_flat(buf), None)] if _flat(buf) else []
            buf = []
        else:
            buf.append(piece)
    if depth:
        raise ParseError("nftables", text[:60], "unbalanced '{'")
    return nodes


def _parse_elements(body: str) -> dict[Key, Value]:
    """``ADDRESS . PROTO . PORT[-PORT] : MARK|goto CHAIN`` items, comma separated."""
    elements: dict[Key, Value] = {}
    for item in filter(str.strip, body.split(",")):
        key, _, value = item.rpartition(":")
        parts, words = re.split(r"\s+\.\s+", key.strip()), value.split()
        if len(parts) != 3 or len(words) not in (1, 2):
            raise ParseError("nftables", item.strip(), "expected ADDRESS . PROTO . PORT : VALUE")
        first, _, last = parts[2].partition("-")
        verdict = len(words) == 2 and words[0] in ("goto", "jump")
        elements[_key(parts[0], parts[1], first, last or first)] = (
            words[1] if verdict else int(value.strip(), 0)
        )
    return elements


def _parse_map(body: str) -> _Map:
    found = _Map()
    for header, block in _split(body):
        word, _, rest = header.partition(" ")
        if block is not None and header.replace(" ", "") == "elements=":
            found.elements.update(_parse_elements(block))
        elif block is None and word == "type":
            found.type = rest
        elif block is None and word == "flags":
            found.flags = frozenset(f.strip() for f in rest.split(","))
        else:
            found.flags |= {header}  # any other attribute departs from the layout
    return found


def _parse_chain(body: str) -> _Chain:
    chain, hook, policy = _Chain(), None, "accept"
    for header, block in _split(body):
        if _HOOK_LINE.match(header):
            hook = _HOOK_LINE.match(header)
        elif header.startswith("policy "):
            policy = header[7:]
        else:
            chain.rules.append(header if block is None else f"{header} {{ {_flat([block])} }}")
    if hook is not None:
        prio = "-150" if hook[3] == "mangle" else hook[3]
        chain.hook = (hook[1], hook[2], prio, policy)
    return chain


def parse_text(text: str) -> Optional[Table]:
    table: Optional[Table] = None
    for header, block in _split(text):
        words = [w.strip('"') for w in header.split()]
        if block is None or len(words) not in (2, 3) or words[0] != "table":
            raise ParseError("nftables", header, "expected 'table FAMILY NAME { ... }' blocks")
        if words[1:] != [FAMILY, TABLE]:
            continue
        table = table or Table()
        for inner, body in _split(block):
            kind, _, name = inner.partition(" ")
            if body is not None and kind == "map":
                table.maps[name.strip('"')] = _parse_map(body)
            elif body is not None and kind == "chain":
                table.chains[name.strip('"')] = _parse_chain(body)
            else:
                table.problems.append(f"unexpected {inner!r} in the table")
    return table


def _json_element(item: Any) -> tuple[Key, Value]:
    key, value = item
    key = key["elem"]["val"] if "elem" in key else key
    address, protocol, port = key["concat"]
    first, last = port["range"] if isinstance(port, dict) else (port, port)
    if isinstance(value, dict):
        ((verdict, target),) = value.items()
        if verdict not in ("goto", "jump"):
            raise ParseError("nftables", str(value), "expected a goto verdict")
        return _key(address, protocol, first, last), str(target["target"])
    return _key(address, protocol, first, last), int(value)


_MAP_KEYS = {"family", "name", "table", "type", "handle", "map", "flags", "elem"}


def parse_json_table(obj: Any) -> Optional[Table]:
    table: Optional[Table] = None
    for item in obj["nftables"]:
        ((kind, body),) = item.items()
        if kind == "metainfo" or body["family"] != FAMILY:
            continue
        if kind == "table" and body["name"] == TABLE:
            table = table or Table()
            table.problems += [f"table flags {body['flags']}"] if body.get("flags") else []
        if kind == "table" or body["table"] != TABLE:
            continue
        table = table or Table()
        if kind == "map":
            types = body["type"] if isinstance(body["type"], list) else [body["type"]]
            found = _Map(" . ".join(types) + f" : {body['map']}", frozenset(body.get("flags", [])))
            found.flags |= set(body) - _MAP_KEYS
            found.elements.update(_json_element(e) for e in body.get("elem", []))
            table.maps[body["name"]] = found
        elif kind == "chain":
            chain = table.chains.setdefault(body["name"], _Chain())
            if "hook" in body:
                fields = (body.get("type"), body["hook"], body.get("prio"), body.get("policy"))
                chain.hook = tuple(map(str, fields))
        elif kind == "rule":
            table.chains.setdefault(body["chain"], _Chain()).rules.append(_rule_line(body["expr"]))
        else:
            table.problems.append(f"unexpected {kind} {body.get('name')}")
    return table
