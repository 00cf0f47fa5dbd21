"""Mark rules in ``nft list ruleset`` output, lvsfw's own ``inet lvsfw`` table included.

Read exactly or left out: after the parts lvsfw represents are taken out of a rule (``ip
daddr``/``ip6 daddr``, ``tcp|udp|sctp|th dport``, ``meta l4proto``, the ``meta mark set``,
``counter``, ``comment``, a final ``accept``/``return``), anything left (``tcp flags``, ``ct
state``, ``ether saddr``...) leaves the rule out with a warning naming it. ``iifname`` is taken
with a warning; negations and source matches are refused. ``meta mark set`` from a map keyed by
``tcp dport`` or ``ip daddr . tcp dport`` is read element by element; any other map or
expression is refused with a warning (never ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from lvsfw.backends.nftables import Nftables
from lvsfw.enums import IPAddress
from lvsfw.importers.found import FULL, FoundRule, Scan, Skip, address, make_rules, number
from lvsfw.importers.found import ports as read_ports
from lvsfw.importers.found import protocol as read_protocol
from lvsfw.rules import MarkRule
from lvsfw.textscan import LineIndex, Statement, comment, nft_statements

_NFT_MARK = re.compile(
    r"(?:^|\s)(?:meta\s+)?mark\s+set\s+((?:meta\s+)?mark\s+(?:&\s*(\S+)\s*)?\|\s*)?"
    r"(0x[0-9a-fA-F]+|\d+)(?=\s|$)"
)
_NFT_MAP = re.compile(
    r"(?:^|\s)(?:meta\s+)?mark\s+set\s+((?:ip6?\s+daddr\s+\.\s+)?(tcp|udp|sctp)\s+dport)\s+map\s+"
    r"(\{[^}]*\}|@\S+)"
)
_ANY_MARK = re.compile(r"(?:^|\s)(?:meta\s+)?mark\s+set\b")
_CT_MARK = re.compile(r"\bct\s+mark\s+set\b")
_NFT_DADDR = re.compile(r"\bip6?\s+daddr\s+(!=\s*)?(\{[^}]*\}|@\S+|\S+)")
_NFT_SADDR = re.compile(r"\bip6?\s+saddr\s+(!=\s*)?(\{[^}]*\}|@\S+|\S+)")
_NFT_L4 = re.compile(r"\b(?:meta\s+l4proto|ip\s+protocol|ip6\s+nexthdr)\s+(!=\s*)?(\{[^}]*\}|\S+)")
_NFT_DPORT = re.compile(r"\b(tcp|udp|sctp|th)\s+dport\s+(!=\s*)?(\{[^}]*\}|@\S+|\S+)")
_NFT_IIF = re.compile(r"\b(?:meta\s+)?(iifname|iif)\s+(!=\s*)?(\{[^}]*\}|\"[^\"]*\"|\S+)")
_NFT_COMMENT = re.compile(r'\bcomment\s+"([^"]*)"')
_NFT_NOISE = re.compile(r"\bcounter(?:\s+packets\s+\d+\s+bytes\s+\d+)?|\b(?:accept|return)\s*$")
_TABLE = re.compile(r"(?m)^[^\S\n]*(table)\s+(\S+)\s+(\S+)\s*\{")
_BRACE = re.compile(r"[{}]")
_XT = re.compile(r"\bxt\s+(?:match|target)\b|# xt_")
_ANY_SOURCE = {"0.0.0.0/0", "::/0"}
Sets = dict[tuple[str, str], list[str]]


def _sets(statements: list[Statement]) -> Sets:
    """Named sets and maps: (table header, name) -> element texts."""
    found: Sets = {}
    for path, _, statement in statements:
        if len(path) == 2 and path[1].startswith(("set ", "map ")):
            key = (path[0], path[1].split()[1])
            found.setdefault(key, [])
            elements = re.match(r"^elements\s*=\s*\{(.*)\}$", statement)
            if elements:
                found[key] += [i.strip() for i in elements[1].split(",") if i.strip()]
    return found


def _table_texts(text: str) -> Iterator[tuple[str, int, str]]:
    """(``table FAMILY NAME`` header, line, body) of each top-level table block; a header
    inside an earlier table's braces is not another table."""
    lines = LineIndex(text)
    end = 0
    for start in _TABLE.finditer(text):
        if start.start() < end:
            continue
        depth, end = 1, len(text)
        for brace in _BRACE.finditer(text, start.end()):
            depth += 1 if brace[0] == "{" else -1
            if depth == 0:
                end = brace.start()
                break
        yield f"table {start[2]} {start[3]}", lines.line(start.start(1)), text[start.end() : end]


def _set_items(text: str, table: str, sets: Sets) -> list[str]:
    if text.startswith("@"):
        if (table, text[1:]) not in sets:
            raise Skip(f"named set {text} is not in the dump")
        return sets[(table, text[1:])]
    return [i.strip() for i in text.strip("{} ").split(",") if i.strip()]


def _leftover(statement: str, notes: list[str]) -> None:
    """Refuse a rule with any part lvsfw does not represent; note an interface match."""
    for found in _NFT_SADDR.finditer(statement):
        if found[1] or found[2] not in _ANY_SOURCE:
            raise Skip(f"source match '{found[0]}' cannot be kept in a bundle")
    for found in _NFT_IIF.finditer(statement):
        if found[2]:
            raise Skip(f"negated match '{found[0]}'")
        notes.append(f"'{found[0]}' dropped: lvsfw marks on every interface (the VIP match "
                     "already restricts)")  # fmt: skip
    rest = statement
    for pattern in (_NFT_COMMENT, _NFT_MAP, _NFT_MARK, _NFT_DADDR, _NFT_SADDR, _NFT_DPORT,
                    _NFT_L4, _NFT_IIF, _NFT_NOISE):  # fmt: skip
        rest = pattern.sub(" ", rest)
    if rest.split():
        raise Skip(f"'{' '.join(rest.split())}' cannot be kept in a bundle")


def _marks(found: re.Match[str]) -> tuple[int, int]:
    value = number(found[3])
    if found[1] is None:
        return value, FULL  # meta mark set V
    if found[2] is None:
        return value, value  # meta mark set meta mark | V: sets V's bits only
    return value, (~number(found[2]) | value) & FULL  # meta mark set meta mark & KEEP | V


def _map_rules(
    found: re.Match[str], vips: list[IPAddress], table: str, sets: Sets, *, where: str, text: str
) -> list[FoundRule]:
    """The rules of ``meta mark set [ip daddr .] tcp dport map { KEY : MARK, ... }``."""
    keyed_by_vip, proto = "daddr" in found[1], read_protocol(found[2])
    rules: list[FoundRule] = []
    for element in _set_items(found[3], table, sets):
        key, colon, value = element.rpartition(":")
        if not colon:
            raise Skip(f"map element {element!r} is not KEY : MARK")
        vip_text, dot, port_text = key.rpartition(" . ") if keyed_by_vip else ("", "", key)
        if keyed_by_vip and not dot:
            raise Skip(f"map element {element!r} is not VIP . PORT : MARK")
        targets = [address(vip_text)] if keyed_by_vip else vips
        ranges = read_ports(port_text, "-")
        marks = (number(value.strip()), FULL)
        rules += make_rules(marks, targets, [proto], ranges, where=where, comment=text)
    return rules


def _nft_rule(
    statement: str, table: str, sets: Sets, where: str, notes: list[str]
) -> list[FoundRule]:
    _leftover(statement, notes)
    mapped = _NFT_MAP.search(statement)
    base = _NFT_MAP.sub(" ", statement)
    daddr, dport = _NFT_DADDR.search(base), _NFT_DPORT.search(base)
    note = _NFT_COMMENT.search(statement)
    text = note[1] if note else ""
    if (daddr and daddr[1]) or (dport and dport[2]) or re.search(r"\bl4proto\s+!=", base):
        raise Skip("negated match")
    vips = [address(a) for a in _set_items(daddr[2], table, sets)] if daddr else []
    if mapped is not None:
        if not vips and "daddr" not in mapped[1]:
            raise Skip("no 'ip daddr'/'ip6 daddr' match: the VIP is not known")
        return _map_rules(mapped, vips, table, sets, where=where, text=text)
    found = _NFT_MARK.search(statement)
    if found is None:
        raise Skip("the mark is set from a map or expression lvsfw does not read")
    if daddr is None:
        raise Skip("no 'ip daddr'/'ip6 daddr' match: the VIP is not known")
    if dport is None:
        raise Skip("no destination port match: it marks every port")
    if dport[1] == "th":
        l4 = _NFT_L4.search(statement)
        if l4 is None:
            raise Skip("'th dport' without 'meta l4proto'")
        protocols = [read_protocol(p) for p in _set_items(l4[2], table, sets)]
    else:
        protocols = [read_protocol(dport[1])]
    ranges = read_ports(",".join(_set_items(dport[3], table, sets)), "-")
    return make_rules(_marks(found), vips, protocols, ranges, where=where, comment=text)


def _rule_key(rule: MarkRule) -> tuple[str, int, int, str, int, int, int, int]:
    """:class:`MarkRule`'s own order, as one flat tuple built once per rule."""
    vip = rule.vip
    return (rule.family.value, vip.version, int(vip), rule.protocol.value, rule.first_port,
            rule.last_port, rule.mark, rule.mask)  # fmt: skip


def _own_rules(text: str, source: str) -> list[FoundRule]:
    """The rules of lvsfw's own ``inet lvsfw`` table, read by the nftables backend."""
    rules: list[FoundRule] = []
    for header, line, body in _table_texts(text):
        if header.split()[1:] == ["inet", "lvsfw"]:
            own = Nftables().parse_spec(f"{header} {{{body}}}\n")
            said = {r: f"lvsfw:{name}" for r, name in own.owners.items()}  # element comments
            where = f"{source}:{line}"
            rules += [
                FoundRule(
                    r.mark,
                    r.mask,
                    r.vip,
                    r.protocol,
                    r.first_port,
                    r.last_port,
                    where,
                    said.get(r, ""),
                )
                for r in sorted(own.rules, key=_rule_key)  # not attrs' order: O(n log n) tuples
            ]
    return rules


#: The statement making a chain a base chain of the prerouting hook.
_PREROUTING = re.compile(r"\btype \w+ hook prerouting\b")


def scan_nft(text: str, source: str, quiet_xt: bool = False) -> Scan:
    """Mark rules in ``nft list ruleset`` output, lvsfw's own ``inet lvsfw`` table included.

    ``quiet_xt``: rules using iptables extensions (``xt match``) are skipped without a warning
    (their ``iptables-nft-save`` form is scanned too).
    """
    source = comment(source)
    scan = Scan()
    statements = list(nft_statements(text))
    sets = _sets(statements)
    hooked = {tuple(path[:2]) for path, _, raw in statements if _PREROUTING.search(raw)}
    for path, line, raw in statements:
        table = path[0] if path else ""
        statement = _CT_MARK.sub("ct-mark-set", raw)
        if table.split()[1:] == ["inet", "lvsfw"] or not _ANY_MARK.search(statement):
            continue
        if len(path) < 2 or not path[1].startswith("chain"):
            continue
        where, notes = f"{source}:{line}", list[str]()
        if tuple(path[:2]) not in hooked:  # a mark in a chain jumped to, or another hook
            scan.warnings.append(
                f"{where}: mark rule not imported: in {path[1]}, not a prerouting base chain"
                f" (it marks only the packets that reach it): {raw}"
            )
            continue
        if _XT.search(statement):
            if not quiet_xt:
                scan.warnings.append(
                    f"{where}: mark rule uses iptables extensions; give "
                    f"iptables-nft-save output instead: {raw}"
                )
            continue
        try:
            scan.rules += _nft_rule(statement, table, sets, where, notes)
        except Skip as exc:
            scan.warnings.append(f"{where}: mark rule not imported: {exc}: {raw}")
        else:
            scan.warnings += [f"{where}: {note}: {raw}" for note in notes]
    scan.rules += _own_rules(text, source)
    return scan
