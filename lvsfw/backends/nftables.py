"""The nftables backend: one own table ``inet lvsfw`` loaded through libnftables JSON.

The table has a constant skeleton and data::

    map mark4   { type ipv4_addr . inet_proto . inet_service : mark;    flags interval }
    map mark6   { type ipv6_addr . inet_proto . inet_service : mark;    flags interval }
    map masked4 { type ipv4_addr . inet_proto . inet_service : verdict; flags interval }
    map masked6 { type ipv6_addr . inet_proto . inet_service : verdict; flags interval }
    chain mark-VVVVVVVV-MMMMMMMM { meta mark set meta mark & KEEP | VVVVVVVV }
    chain prerouting { type filter hook prerouting priority mangle; policy accept;
        meta mark set ip daddr . meta l4proto . th dport map @mark4   (and ip6, @mark6)
        ip daddr . meta l4proto . th dport vmap @masked4              (and ip6, @masked6) }

A packet costs one interval-map lookup per family whatever the number of bundles. A full-mask
mark is the datum of ``markN``. A masked mark must keep the packet's bits outside the mask, and
nft 1.0.6 cannot OR a map's result into the mark (the right side of ``|`` must be a constant),
so a masked mark is an element of ``maskedN`` jumping (goto) to a one-rule chain per distinct
(mark, mask) that does ``meta mark & ~mask | mark`` with constants. nft prints that AND operand
as ``~mask | mark`` (it folds the mark's bits in); lvsfw renders the same canonical form.

Writes are single libnftables transactions: the whole table when it is absent (or replaced
after drift), otherwise only the map elements and mark chains that differ.
"""

from __future__ import annotations

import ctypes
import importlib
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Optional, TypeVar, Union

import attrs

from lvsfw.backends.base import PacketFilter
from lvsfw.enums import Family, IPAddress, Protocol
from lvsfw.errors import BackendUnavailable, CommandFailed, ParseError
from lvsfw.netns import call_in_netns
from lvsfw.rules import MarkRule, Specification, normalize

TABLE = "lvsfw"
FAMILY = "inet"
FULL = 0xFFFFFFFF
INSTALL_HINT = "apt-get install libnftables1 python3-nftables / pip install pip-nftables"
#: The prerouting chain's (type, hook, priority, policy).
HOOK = ("filter", "prerouting", "-150", "accept")

Key = tuple[IPAddress, Protocol, int, int]
#: A map datum: a mark (``markN``) or the name of a mark chain (``maskedN``).
Value = Union[int, str]
Json = dict[str, Any]
Content = dict[str, dict[Key, Value]]
T = TypeVar("T")

#: map name -> (family, datum kind): the skeleton's maps.
MAPS: dict[str, tuple[Family, str]] = {
    "mark4": (Family.IPV4, "mark"),
    "mark6": (Family.IPV6, "mark"),
    "masked4": (Family.IPV4, "verdict"),
    "masked6": (Family.IPV6, "verdict"),
}
_ADDR = {Family.IPV4: ("ip", "ipv4_addr"), Family.IPV6: ("ip6", "ipv6_addr")}
_PROTOCOLS = {**{p.value: p for p in Protocol}, **{str(p.number): p for p in Protocol}}
_CHAIN = re.compile(r"^mark-([0-9a-f]{8})-([0-9a-f]{8})$")
_NUMBER = r"(0x[0-9a-f]{1,8}|[1-9][0-9]{0,9})"
_MARK_LINE = re.compile(rf"^meta mark set meta mark(?: & {_NUMBER})? \| {_NUMBER}$")
_HOOK_LINE = re.compile(r"^type (\S+) hook (\S+)(?: device \S+)? priority (\S+)$")
_TOKEN = re.compile(r'"[^"]*"|#[^\n]*|[;\n{}]|[^"#;\n{}]+|"')
_META_MARK = {"meta": {"key": "mark"}}
_TABLE_OBJ = {"table": {"family": FAMILY, "name": TABLE}}
_PARSE_ERRORS = (ValueError, LookupError, TypeError, AttributeError)


def _keep(mark: int, mask: int) -> int:
    """The bits a masked mark keeps: those outside ``mask``, plus the mark's own (as nft does)."""
    return (~mask | mark) & FULL


def _mark_line(keep: int, mark: int) -> str:
    """The text of a mark chain's rule."""
    kept = "" if keep == FULL else f" & {keep:#010x}"
    return f"meta mark set meta mark{kept} | {mark:#010x}"


def _mark_json(keep: int, mark: int) -> list[Json]:
    left: object = _META_MARK if keep == FULL else {"&": [_META_MARK, keep]}
    return [{"mangle": {"key": _META_MARK, "value": {"|": [left, mark]}}}]


def _lookup(family: Family, masked: bool) -> tuple[str, list[Json]]:
    """One skeleton rule of chain prerouting: its text and its libnftables JSON."""
    proto, name = _ADDR[family][0], f"{'masked' if masked else 'mark'}{family.value[-1]}"
    fields = [("payload", proto, "daddr"), ("meta", "", "l4proto"), ("payload", "th", "dport")]
    key = {"concat": [{k: {"protocol": p, "field": f} if p else {"key": f}} for k, p, f in fields]}
    text = f"{proto} daddr . meta l4proto . th dport"
    if masked:
        return f"{text} vmap @{name}", [{"vmap": {"key": key, "data": f"@{name}"}}]
    value = {"map": {"key": key, "data": f"@{name}"}}
    return f"meta mark set {text} map @{name}", [{"mangle": {"key": _META_MARK, "value": value}}]


SKELETON = tuple(_lookup(family, masked) for masked in (False, True) for family in Family)


def _rule_line(expr: Any) -> str:
    """A rule's JSON expressions as the text nft prints (raw JSON when unknown)."""
    for text, known in SKELETON:
        if expr == known:
            return text
    try:
        left, mark = expr[0]["mangle"]["value"]["|"]
        keep = FULL if left == _META_MARK else left["&"][1]
        if isinstance(mark, int) and isinstance(keep, int) and expr == _mark_json(keep, mark):
            return _mark_line(keep, mark)
    except _PARSE_ERRORS:
        pass
    return f"json {expr!r}"


def _map_type(family: Family, kind: str) -> str:
    return f"{_ADDR[family][1]} . inet_proto . inet_service : {kind}"


def _key(address: object, protocol: object, first: object, last: object) -> Key:
    """A map key from its parsed parts; ParseError (or ValueError) when a part is invalid."""
    proto = _PROTOCOLS.get(str(protocol))
    if proto is None or not isinstance(address, str):
        raise ParseError("nftables", f"{address} . {protocol}", "expected ADDRESS . tcp|udp|sctp")
    lo, hi = int(str(first)), int(str(last))
    if not 1 <= lo <= hi <= 65535:
        raise ParseError("nftables", f"{first}-{last}", "expected ports 1..65535, first <= last")
    return (ipaddress.ip_address(address), proto, lo, hi)


def _sorted(elements: dict[Key, Value]) -> list[tuple[Key, Value]]:
    return sorted(elements.items(), key=lambda kv: (kv[0][0].version, int(kv[0][0]), kv[0][1:]))


def _key_text(key: Key) -> str:
    ports = str(key[2]) if key[2] == key[3] else f"{key[2]}-{key[3]}"
    return f"{key[0]} . {key[1].value} . {ports}"


def _key_json(key: Key) -> Json:
    port: object = key[2] if key[2] == key[3] else {"range": [key[2], key[3]]}
    return {"concat": [str(key[0]), key[1].value, port]}


def _value_json(value: Value) -> object:
    return value if isinstance(value, int) else {"goto": {"target": value}}


def _obj(kind: str, **fields: object) -> Json:
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def _add_mark_chain(name: str, mark: int, mask: int) -> list[Json]:
    rule = _obj("rule", chain=name, expr=_mark_json(_keep(mark, mask), mark))
    return [{"add": _obj("chain", name=name)}, {"add": rule}]


def _elem(items: list[tuple[Key, Value]], data: bool = True) -> list[object]:
    return [[_key_json(k), _value_json(v)] if data else _key_json(k) for k, v in items]


def _elements(verb: str, name: str, items: list[tuple[Key, Value]], data: bool) -> list[Json]:
    """``verb`` (add/delete) ``items`` of map ``name``; nothing when there are none."""
    return [{verb: _obj("element", name=name, elem=_elem(items, data))}] if items else []


def _desired(rules: Iterable[MarkRule]) -> tuple[Content, dict[str, tuple[int, int]]]:
    """Map contents and mark chains for ``rules`` (normalized first)."""
    content: Content = {name: {} for name in MAPS}
    chains: dict[str, tuple[int, int]] = {}
    for rule in normalize(rules):
        key = (rule.vip, rule.protocol, rule.first_port, rule.last_port)
        suffix = Family.of(rule.vip).value[-1]
        if rule.mask & FULL == FULL:
            content[f"mark{suffix}"][key] = rule.mark
        else:
            name = f"mark-{rule.mark:08x}-{rule.mask:08x}"
            chains[name] = (rule.mark, rule.mask)
            content[f"masked{suffix}"][key] = name
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
class _Table:
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

    @property
    def intact(self) -> bool:
        """The table exists and is exactly lvsfw's layout (whatever its elements)."""
        return self.exists and not self.problems


def _judge_chains(table: _Table, problems: list[str]) -> dict[str, tuple[int, int]]:
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


def _analyse(table: _Table) -> LiveState:
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
        family, kind = MAPS[name]
        if found.type != _map_type(family, kind) or found.flags != {"interval"}:
            problems.append(f"map {name}: type {found.type!r}, flags {sorted(found.flags)}")
        content[name] = {}
        for key, value in found.elements.items():
            marked = None
            if Family.of(key[0]) is family and isinstance(value, int) and kind == "mark":
                marked = (value, FULL) if 0 < value <= FULL else None
            elif Family.of(key[0]) is family and isinstance(value, str) and kind == "verdict":
                marked = chains.get(value)
            if marked is None:
                unresolved.append(f"map {name} element {_key_text(key)} : {value}")
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


def _parse_text(text: str) -> Optional[_Table]:
    table: Optional[_Table] = None
    for header, block in _split(text):
        words = [w.strip('"') for w in header.split()]
        if block is None or len(words) not in (2, 3) or words[0] != "table":
            raise ParseError("nftables", header, "expected 'table FAMILY NAME { ... }' blocks")
        if words[1:] != [FAMILY, TABLE]:
            continue
        table = table or _Table()
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


def _parse_json_table(obj: Any) -> Optional[_Table]:
    table: Optional[_Table] = None
    for item in obj["nftables"]:
        ((kind, body),) = item.items()
        if kind == "metainfo" or body["family"] != FAMILY:
            continue
        if kind == "table" and body["name"] == TABLE:
            table = table or _Table()
            table.problems += [f"table flags {body['flags']}"] if body.get("flags") else []
        if kind == "table" or body["table"] != TABLE:
            continue
        table = table or _Table()
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


class _Context:
    """A typed adapter over one libnftables context (the untyped ``nftables`` binding)."""

    def __init__(self) -> None:
        try:
            self._nft: Any = importlib.import_module("nftables").Nftables()
        except (ImportError, OSError, AttributeError) as exc:
            raise BackendUnavailable(f"libnftables cannot be used ({exc}); {INSTALL_HINT}") from exc

    def json(self, command: Json, argv: tuple[str, ...]) -> Any:
        """Run ``command``; its JSON output (if any), or CommandFailed describing ``argv``."""
        rc, output, error = self._nft.json_cmd(command)
        if rc != 0:
            raise CommandFailed(argv, int(rc), str(error))
        return output

    def set_dry_run(self, dry: bool) -> None:
        """Have libnftables send batches for validation only (the kernel aborts them)."""
        if hasattr(self._nft, "set_dry_run"):
            self._nft.set_dry_run(dry)
            return
        ctx = getattr(self._nft, "_Nftables__ctx", None)  # pip-nftables 1.0.2 has no setter
        if ctx is None:
            raise BackendUnavailable(f"this nftables binding cannot dry-run; {INSTALL_HINT}")
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        lib.nft_ctx_set_dry_run(ctx, dry)


class Nftables(PacketFilter):
    """Marks packets from interval maps in table ``inet lvsfw`` (see the module docstring)."""

    name: ClassVar[str] = "nftables"

    def __init__(self, netns: Optional[str] = None) -> None:
        super().__init__(netns)
        #: The transaction the last :meth:`apply` sent (None: it wrote nothing).
        self.last_transaction: Optional[Json] = None

    @classmethod
    def available(cls) -> None:
        """Raise BackendUnavailable when the binding or libnftables cannot be loaded."""
        _Context()

    def _argv(self, *words: str) -> tuple[str, ...]:
        prefix = ("ip", "netns", "exec", self.netns) if self.netns else ()
        return (*prefix, "nft", *words)

    def _in_netns(self, work: Callable[[_Context], T]) -> T:
        """``work`` with a libnftables context created in this backend's namespace."""
        return call_in_netns(self.netns, lambda: work(_Context()))

    def render_spec(self, spec: Specification) -> str:
        """The ``nft -f`` script of the whole table, in the format ``nft list`` prints."""
        content, chains = _desired(spec.rules)
        blocks = []
        for name, (family, kind) in MAPS.items():
            head = f"\tmap {name} {{\n\t\ttype {_map_type(family, kind)}\n\t\tflags interval\n"
            items = [
                f"{_key_text(k)} : " + (f"{v:#010x}" if isinstance(v, int) else f"goto {v}")
                for k, v in _sorted(content[name])
            ]
            if items:
                head += "\t\telements = { " + ",\n\t\t\t     ".join(items) + " }\n"
            blocks.append(head + "\t}")
        for name, (mark, mask) in sorted(chains.items()):
            blocks.append(f"\tchain {name} {{\n\t\t{_mark_line(_keep(mark, mask), mark)}\n\t}}")
        rules = "".join(f"\t\t{text}\n" for text, _ in SKELETON)
        hook = "type filter hook prerouting priority mangle; policy accept;"
        blocks.append(f"\tchain prerouting {{\n\t\t{hook}\n{rules}\t}}")
        return f"table {FAMILY} {TABLE} {{\n" + "\n\n".join(blocks) + "\n}\n"

    def render_json(self, spec: Specification, replace: bool = False) -> Json:
        """The libnftables JSON creating the whole table (``replace``: deleting it first)."""
        content, chains = _desired(spec.rules)
        commands: list[Json] = [{"add": _TABLE_OBJ}]
        if replace:
            commands += [{"delete": _TABLE_OBJ}, {"add": _TABLE_OBJ}]
        for name, (mark, mask) in sorted(chains.items()):
            commands += _add_mark_chain(name, mark, mask)
        for name, (family, kind) in MAPS.items():
            key_type = [_ADDR[family][1], "inet_proto", "inet_service"]
            body = _obj("map", name=name, type=key_type, map=kind, flags=["interval"])
            if content[name]:
                body["map"]["elem"] = _elem(_sorted(content[name]))
            commands.append({"add": body})
        hook = dict(
            zip(("type", "hook", "prio", "policy"), ("filter", "prerouting", -150, "accept"))
        )
        commands.append({"add": _obj("chain", name="prerouting", **hook)})
        commands += [{"add": _obj("rule", chain="prerouting", expr=e)} for _, e in SKELETON]
        return {"nftables": commands}

    def parse(self, text: str) -> frozenset[MarkRule]:
        """The mark rules of table inet lvsfw in a rendered script or ``nft list`` output."""
        return self._rules(_parse_text, text)

    def parse_json(self, obj: object) -> frozenset[MarkRule]:
        """The mark rules of table inet lvsfw in ``nft -j list`` output (a decoded object)."""
        return self._rules(_parse_json_table, obj)

    @staticmethod
    def _rules(parse: Callable[[Any], Optional[_Table]], source: Any) -> frozenset[MarkRule]:
        try:
            table = parse(source)
            state = LiveState(False) if table is None else _analyse(table)
        except ParseError:
            raise
        except _PARSE_ERRORS as exc:
            raise ParseError("nftables", str(source)[:80], f"not nft syntax ({exc})") from exc
        if state.unresolved:
            raise ParseError("nftables", state.unresolved[0], "an element whose mark is unknown")
        return state.rules

    def _exists(self, ctx: _Context) -> bool:
        command = {"nftables": [{"list": {"tables": {"family": FAMILY}}}]}
        listed = ctx.json(command, self._argv("-j", "list", "tables", FAMILY))
        return {"family": FAMILY, "name": TABLE} in [
            {k: v for k, v in item["table"].items() if k in ("family", "name")}
            for item in listed["nftables"]
            if "table" in item
        ]

    def _live(self, ctx: _Context) -> LiveState:
        if not self._exists(ctx):
            return LiveState(False)
        command = {"nftables": [{"list": _TABLE_OBJ}]}
        dump = ctx.json(command, self._argv("-j", "list", "table", FAMILY, TABLE))
        try:
            table = _parse_json_table(dump)
        except _PARSE_ERRORS as exc:
            raise ParseError("nftables", str(dump)[:80], f"unexpected listing ({exc})") from exc
        return LiveState(False) if table is None else _analyse(table)

    def live_state(self) -> LiveState:
        """The live table: rules, and every departure from lvsfw's layout (for drift)."""
        return self._in_netns(self._live)

    def read(self) -> frozenset[MarkRule]:
        """The mark rules the live table applies (empty when it is absent)."""
        return self.live_state().rules

    def _plan(self, ctx: _Context, spec: Specification) -> Optional[Json]:
        live = self._live(ctx)
        if not live.intact:
            return self.render_json(spec, replace=live.exists)
        content, chains = _desired(spec.rules)
        added, deleted = chains.keys() - live.chains.keys(), live.chains.keys() - chains.keys()
        commands = [c for name in sorted(added) for c in _add_mark_chain(name, *chains[name])]
        adds: list[Json] = []
        for name in MAPS:
            have, want = live.content.get(name, {}), content[name]
            commands += _elements("delete", name, _sorted(dict(have.items() - want.items())), False)
            adds += _elements("add", name, _sorted(dict(want.items() - have.items())), True)
        commands += adds + [{"delete": _obj("chain", name=name)} for name in sorted(deleted)]
        return {"nftables": commands} if commands else None

    def plan(self, spec: Specification) -> Optional[Json]:
        """The transaction :meth:`apply` would send now (None: nothing to write)."""
        return self._in_netns(lambda ctx: self._plan(ctx, spec))

    def check(self, spec: Specification) -> None:
        """Have libnftables and the kernel validate replacing the table by ``spec`` (dry run)."""

        def work(ctx: _Context) -> None:
            ctx.set_dry_run(True)
            ctx.json(self.render_json(spec, replace=True), self._argv("--check", "-j", "-f", "-"))

        self._in_netns(work)

    def apply(self, spec: Specification) -> None:
        """Make the table equal ``spec`` in one transaction: only the difference, or nothing."""

        def work(ctx: _Context) -> Optional[Json]:
            transaction = self._plan(ctx, spec)
            if transaction is not None:
                ctx.json(transaction, self._argv("-j", "-f", "-"))
            return transaction

        self.last_transaction = self._in_netns(work)

    def remove(self) -> None:
        """Delete table inet lvsfw if it exists; nothing else is touched."""

        def work(ctx: _Context) -> None:
            if self._exists(ctx):
                argv = self._argv("delete", "table", FAMILY, TABLE)
                ctx.json({"nftables": [{"delete": _TABLE_OBJ}]}, argv)

        self._in_netns(work)
