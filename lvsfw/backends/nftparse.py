"""Reading table ``inet lvsfw`` back: the ``nft list`` text and the ``nft -j list`` JSON
parsed into a :class:`Table`, which :func:`analyse` judges against lvsfw's layout
(:mod:`lvsfw.backends.nftsyntax`) into a :class:`LiveState`. Pure: no I/O.

Element comments are read as bundle names: ``KEY comment "web" : DATUM`` in text, and
``{"elem": {"val": KEY, "comment": "web"}}`` as a JSON element's key.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any, Optional

import attrs

from lvsfw.backends.nftsyntax import (
    FAMILY,
    FULL,
    HOOK,
    MAPS,
    META_MARK,
    PARSE_ERRORS,
    SKELETON,
    TABLE,
    Content,
    Entry,
    Key,
    Value,
    key_text,
    map_type,
    mark_json,
    mark_line,
)
from lvsfw.enums import Family, IPAddress, Protocol
from lvsfw.errors import ParseError
from lvsfw.rules import MarkRule

_PROTOCOLS = {**{p.value: p for p in Protocol}, **{str(p.number): p for p in Protocol}}
_CHAIN = re.compile(r"^mark-([0-9a-f]{8})-([0-9a-f]{8})$")
_NUMBER = r"(0x[0-9a-f]{1,8}|[1-9][0-9]{0,9})"
_MARK_LINE = re.compile(rf"^meta mark set meta mark(?: & {_NUMBER})? \| {_NUMBER}$")
_HOOK_LINE = re.compile(r"^type (\S+) hook (\S+)(?: device \S+)? priority (\S+)$")
#: A ``#`` comment, one of ``; newline { }``, a run of anything else (quoted strings in it
#: whole: a line of commented elements is one token), or an unbalanced quote.
_TOKEN = re.compile(r'#[^\n]*|[;\n{}]|(?:[^"#;\n{}]+|"[^"]*")+|"')
_EXPECTED_COMMENT = 'expected ADDRESS . PROTO . PORT comment "TEXT" : VALUE'
#: An element with a comment, however spaced: (key, comment, ``: datum``).
_COMMENTED = re.compile(r'^(.*?)\s+comment\s+"([^"]*)"(\s*:[^"]*)$', re.S)


def rule_line(expr: Any) -> str:
    """A rule's JSON expressions as the text nft prints (raw JSON when unknown)."""
    for text, known in SKELETON:
        if expr == known:
            return text
    try:
        left, mark = expr[0]["mangle"]["value"]["|"]
        keep = FULL if left == META_MARK else left["&"][1]
        if isinstance(mark, int) and isinstance(keep, int) and expr == mark_json(keep, mark):
            return mark_line(keep, mark)
    except PARSE_ERRORS:
        pass
    return f"json {expr!r}"


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


@attrs.define
class _Map:
    type: str = ""
    flags: frozenset[str] = frozenset()
    elements: dict[Key, Entry] = attrs.Factory(dict)


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
    #: The comment (bundle name) of each rule's element, those without one left out.
    names: dict[MarkRule, str] = attrs.field(factory=dict, eq=False, repr=False)

    def owners(self) -> dict[MarkRule, str]:
        """The bundle name of each rule that has one: its element's comment (what lvsfw's
        own last commit wrote, when :attr:`cached`). Not part of equality: names label the
        rules, they do not change what a packet gets."""
        return self.names if self.target is None else self.target.owners()

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
    names: dict[MarkRule, str] = {}
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
        for key, entry in found.elements.items():
            value = entry[0]
            marked = None
            if Family.of(key[0]) is family and isinstance(value, int) and kind == "mark":
                marked = (value, FULL) if 0 < value <= FULL else None
            elif Family.of(key[0]) is family and isinstance(value, str) and kind == "verdict":
                marked = chains.get(value)
            if marked is None:
                unresolved.append(f"map {name} element {key_text(key)} : {value}")
                continue
            content[name][key] = entry
            rule = MarkRule(family, key[0], key[1], key[2], key[3], *marked)
            rules.append(rule)
            if entry[1] is not None:
                names[rule] = entry[1]
    problems += unresolved
    return LiveState(
        True, frozenset(rules), tuple(problems), tuple(unresolved), content, chains, names=names
    )


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


def _quoted_commas(pieces: list[str]) -> list[str]:
    """``pieces`` of a text split at every comma, joined back where a comma was quoted."""
    joined: list[str] = []
    quoted = False
    for piece in pieces:
        if quoted:
            joined[-1] += "," + piece
        else:
            joined.append(piece)
        if piece.count('"') % 2:
            quoted = not quoted
    return joined


def _parse_elements(body: str) -> dict[Key, Entry]:
    """``ADDRESS . PROTO . PORT[-PORT] [comment "TEXT"] : MARK|goto CHAIN`` items, comma
    separated (a comma or colon inside a quoted comment is part of it)."""
    elements: dict[Key, Entry] = {}
    pieces = body.split(",")
    for said in filter(str.strip, _quoted_commas(pieces) if '"' in body else pieces):
        item, comment = said, None
        if '"' in said:
            head, found, rest = said.partition(' comment "')  # as nft prints it
            comment, closed, tail = rest.partition('"')
            if not found or not closed or '"' in tail or tail.lstrip()[:1] != ":":
                spaced = _COMMENTED.match(said)  # other spacing
                if spaced is None:
                    raise ParseError("nftables", said.strip(), _EXPECTED_COMMENT)
                head, comment, tail = spaced[1], spaced[2], spaced[3]
            item = head + tail
        key, _, value = item.rpartition(":")
        parts, words = re.split(r"\s+\.\s+", key.strip()), value.split()
        if len(parts) != 3 or len(words) not in (1, 2):
            raise ParseError("nftables", item.strip(), "expected ADDRESS . PROTO . PORT : VALUE")
        first, _, last = parts[2].partition("-")
        verdict = len(words) == 2 and words[0] in ("goto", "jump")
        datum: Value = words[1] if verdict else int(value.strip(), 0)
        elements[_key(parts[0], parts[1], first, last or first)] = (datum, comment)
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
    """Table inet lvsfw in ``nft list`` text or a rendered script (None: not there)."""
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


def _json_element(item: Any) -> tuple[Key, Entry]:
    """``[KEY, DATUM]``; the key may be wrapped as ``{"elem": {"val": KEY, "comment": ...}}``."""
    key, value = item
    comment = None
    if "elem" in key:
        comment, key = key["elem"].get("comment"), key["elem"]["val"]
        comment = None if comment is None else str(comment)
    address, protocol, port = key["concat"]
    first, last = port["range"] if isinstance(port, dict) else (port, port)
    if isinstance(value, dict):
        ((verdict, target),) = value.items()
        if verdict not in ("goto", "jump"):
            raise ParseError("nftables", str(value), "expected a goto verdict")
        return _key(address, protocol, first, last), (str(target["target"]), comment)
    return _key(address, protocol, first, last), (int(value), comment)


_MAP_KEYS = {"family", "name", "table", "type", "handle", "map", "flags", "elem"}


def parse_json_table(obj: Any) -> Optional[Table]:
    """Table inet lvsfw in decoded ``nft -j list`` output (None: not there)."""
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
            table.chains.setdefault(body["chain"], _Chain()).rules.append(rule_line(body["expr"]))
        else:
            table.problems.append(f"unexpected {kind} {body.get('name')}")
    return table
