"""Find the mark rules in any packet-filter dump: ``iptables-save`` or ``nft list ruleset``.

Used by :mod:`lvsfw.importers` to recover, for each firewall mark, the VIPs and ports a
hand-written (or lvsfw-written) rule set marks. Unlike the backends' parsers, which read only
what lvsfw owns, this reads every rule that sets a packet mark, wherever it is:

- ``iptables-save`` / ``ip6tables-save`` output (either flavour), and shell lines such as
  ``iptables -t mangle -A PREROUTING -d VIP -p tcp --dport 80 -j MARK --set-mark 80``;
- the members ``add SET VIP,proto:port ... skbmark V[/M]`` of each ipset (``ipset save``
  output, or the ``# ipset`` section lvsfw renders) that a rule ``-m set --match-set SET
  dst,dst -j SET --map-set SET dst,dst --map-mark`` classifies (as lvsfw's iptables
  backends do for single ports); the ``add`` lines may come before or after the rule;
- ``nft list ruleset`` output: ``ip daddr VIP tcp dport { 80, 443 } meta mark set 0x50``,
  anonymous and named sets, ``meta l4proto { tcp, udp } th dport``, masked marks, and lvsfw's
  own ``inet lvsfw`` table (its interval maps).

Each rule found is a :class:`FoundRule`; a mark-setting rule lvsfw cannot express (no port
match, a destination network, negation, a source match) is reported as a warning instead.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shlex
import socket
from collections.abc import Iterator
from typing import Optional

import attrs

from lvsfw.backends.nftables import Nftables
from lvsfw.enums import Family, IPAddress, Protocol
from lvsfw.errors import LvsfwError
from lvsfw.model import FULL_MASK
from lvsfw.rules import MarkRule
from lvsfw.textscan import LineIndex, Statement, comment, nft_statements

FULL = FULL_MASK  # the short name this module (and its tests) use
_COUNTERS = re.compile(r"^\[\d+:\d+\]\s+")
_IGNORED_MATCHES = {"-m", "--match", "-t", "--table"}
_NOT_MODELLED = {"-s", "--source", "-i", "--in-interface", "--sport", "--source-port", "--sports"}
_NFT_MARK = re.compile(
    r"(?:^|\s)(?:meta\s+)?mark\s+set\s+((?:meta\s+)?mark\s+(?:&\s*(\S+)\s*)?\|\s*)?"
    r"(0x[0-9a-fA-F]+|\d+)"
)
_CT_MARK = re.compile(r"\bct\s+mark\s+set\b")
_NFT_DADDR = re.compile(r"\bip6?\s+daddr\s+(!=\s*)?(\{[^}]*\}|@\S+|\S+)")
_NFT_L4 = re.compile(r"\b(?:meta\s+l4proto|ip\s+protocol|ip6\s+nexthdr)\s+(\{[^}]*\}|\S+)")
_NFT_DPORT = re.compile(r"\b(tcp|udp|sctp|th)\s+dport\s+(!=\s*)?(\{[^}]*\}|@\S+|\S+)")
_NFT_COMMENT = re.compile(r'\bcomment\s+"([^"]*)"')
_TABLE = re.compile(r"(?m)^[^\S\n]*(table)\s+(\S+)\s+(\S+)\s*\{")
_BRACE = re.compile(r"[{}]")
_XT = re.compile(r"\bxt\s+(?:match|target)\b|# xt_")
#: lvsfw's own iptables chain: its sets' member comments are bundle names.
_OWN_CHAIN = "LVSFW-PREROUTING"
#: ipset member options that do not change which packets get which mark.
_MEMBER_NOISE = {"timeout", "packets", "bytes", "skbprio", "skbqueue"}
#: One ipset ``add`` line: (``SOURCE:LINE``, its words after the set name).
Member = tuple[str, list[str]]


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
    """What a scan found: the rules, and one warning per mark rule it could not take."""

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


class _Skip(Exception):
    """A mark rule lvsfw cannot express; the message says why."""


def _port(text: str) -> int:
    if (text.isascii() and text.isdigit()) and 1 <= int(text) <= 65535:
        return int(text)
    try:
        return socket.getservbyname(text)
    except (OSError, ValueError):  # unknown service; NUL or non-ASCII text
        raise _Skip(f"port {text!r} is not a number 1..65535 or a known service") from None


def _ports(text: str, separator: str) -> list[tuple[int, int]]:
    ranges = []
    for item in (p.strip() for p in text.strip("{} ").split(",")):
        if not item:
            continue
        first, _, last = item.partition(separator)
        low, high = _port(first.strip()), _port(last.strip()) if last else None
        ranges.append((low, high if high is not None else low))
    if not ranges:
        raise _Skip("no ports")
    return ranges


def _address(text: str) -> IPAddress:
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise _Skip(f"destination {text!r} is not an address") from None
    if network.num_addresses != 1:
        raise _Skip(f"destination {text} is a network, not one VIP")
    return network.network_address


def _protocol(text: str) -> Protocol:
    names = {"6": "tcp", "17": "udp", "132": "sctp"}
    try:
        return Protocol.parse(names.get(text, text), "protocol")
    except LvsfwError:
        raise _Skip(f"protocol {text!r} is not tcp, udp or sctp") from None


def _number(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise _Skip(f"mark {text!r} is not a number") from None
    if not 0 < value <= FULL:
        raise _Skip(f"mark {text} is out of range 1..{FULL:#x}")
    return value


def _rules(
    marks: tuple[int, int],
    vips: list[IPAddress],
    protocols: list[Protocol],
    ranges: list[tuple[int, int]],
    *,
    where: str,
    comment: str,
) -> list[FoundRule]:
    mark, mask = marks
    if mark & ~mask & FULL:
        raise _Skip(f"mark {mark:#x} has bits outside its mask {mask:#x}")
    return [
        FoundRule(mark, mask, vip, protocol, low, high, where, comment)
        for vip in vips
        for protocol in protocols
        for low, high in ranges
    ]


# -- iptables ------------------------------------------------------------------------------


def _xt_mark(options: dict[str, str]) -> tuple[int, int]:
    if "--set-xmark" in options or "--set-mark" in options:
        text = options.get("--set-xmark", options.get("--set-mark", ""))
        number, _, mask = text.partition("/")
        return _number(number), _number(mask) if mask else FULL
    if "--or-mark" in options:
        value = _number(options["--or-mark"])
        return value, value
    raise _Skip("a MARK target without --set-mark/--set-xmark/--or-mark")


def _xt_rule(tokens: list[str], where: str) -> list[FoundRule]:
    options: dict[str, str] = {}
    ignored: list[str] = []
    negated = False
    words = iter(tokens)
    for word in words:
        if word == "!":
            negated = True
            continue
        if word in {"--syn", "-f", "--fragment"}:
            ignored.append(word)
            continue
        value = next(words, "")
        if negated and word in {"-d", "--destination", "--dport", "--dports", "-p"}:
            raise _Skip(f"negated match '! {word} {value}'")
        negated = False
        if word in _NOT_MODELLED:
            ignored.append(f"{word} {value}")
        elif word not in _IGNORED_MATCHES:
            options[word] = value
    for alias, name in (("--destination", "-d"), ("--protocol", "-p"), ("--jump", "-j")):
        if alias in options:
            options[name] = options.pop(alias)
    if "-d" not in options:
        raise _Skip("no destination (-d): the VIP is not known")
    if "-p" not in options:
        raise _Skip("no protocol (-p): lvsfw bundles ports of tcp, udp or sctp")
    names = ("--dport", "--destination-port", "--dports", "--destination-ports")
    port_text = next((options[o] for o in names if o in options), None)
    if port_text is None:
        raise _Skip("no destination port match: it marks every port")
    if ignored:
        raise _Skip(f"matches on {', '.join(ignored)} cannot be kept in a bundle")
    vips = [_address(v) for v in options["-d"].split(",")]
    comment = options.get("--comment", "")
    protocols, ranges = [_protocol(options["-p"])], _ports(port_text, ":")
    return _rules(_xt_mark(options), vips, protocols, ranges, where=where, comment=comment)


def _set_rule(tokens: list[str]) -> str:
    """The set a ``-m set --match-set SET dst,dst -j SET --map-set SET dst,dst --map-mark``
    rule (its comment aside) classifies through."""
    if "--comment" in tokens[:-1]:
        at = tokens.index("--comment")
        tokens = tokens[: at - 2] + tokens[at + 2 :]
    name = tokens[3] if len(tokens) == 11 else ""
    if not name or tokens != [
        *("-m", "set", "--match-set", name, "dst,dst"),
        *("-j", "SET", "--map-set", name, "dst,dst", "--map-mark"),
    ]:
        raise _Skip("only -m set --match-set SET dst,dst -j SET --map-set SET dst,dst is modelled")
    return name


def _set_member(words: list[str], where: str, comment: str) -> list[FoundRule]:
    """The rule of one ``add SET VIP,proto:port [OPTION VALUE...]`` member line."""
    address, _, rest = words[0].rpartition(",")
    proto, _, port = rest.rpartition(":")
    options = dict(zip(words[1::2], words[2::2]))
    if len(words) % 2 == 0 or "skbmark" not in options:
        raise _Skip("not a member VIP,proto:port with skbmark")
    if set(options) - _MEMBER_NOISE - {"comment", "skbmark"}:
        raise _Skip(f"member options {sorted(set(options) - _MEMBER_NOISE)} are not modelled")
    value, _, mask = options["skbmark"].partition("/")
    marks, vips = (_number(value), _number(mask) if mask else FULL), [_address(address)]
    text = f"{comment}{options['comment']}" if options.get("comment") else ""
    protocols = [_protocol(proto or "tcp")]  # ipset's default protocol
    return _rules(marks, vips, protocols, _ports(port, "-"), where=where, comment=text)


def _members(text: str, source: str) -> dict[str, list[Member]]:
    """Set name -> (``SOURCE:LINE``, words after the name) of each ``add`` line (a set that
    is only created has none)."""
    found: dict[str, list[Member]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split(maxsplit=2) if line.startswith(("add ", "create ")) else []
        with contextlib.suppress(ValueError):
            members = found.setdefault(words[1], []) if len(words) == 3 else None
            if members is not None and words[0] == "add":
                members.append((f"{source}:{number}", shlex.split(words[2])))
    return found


def scan_iptables(text: str, source: str, ipsets: Optional[tuple[str, str]] = None) -> Scan:
    """Mark rules in ``iptables-save`` output or ``iptables ... -j MARK`` shell lines, and the
    members of each ipset a ``-j SET ... --map-mark`` rule classifies through: ``add`` lines in
    ``text`` itself or in ``ipsets`` (``ipset save`` text, its source name)."""
    source = comment(source)  # it starts every warning: one line each, whatever the name
    scan = Scan()
    classified: dict[str, tuple[str, bool]] = {}  # set -> (where, in lvsfw's chain)
    for number, raw in enumerate(text.splitlines(), 1):
        if "j" not in raw:
            continue  # no -j/--jump however quoted: not a rule with a target (cheap, exact)
        line = _COUNTERS.sub("", raw.strip())
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        if tokens and re.fullmatch(r"(/\S*/)?ip6?tables(-legacy|-nft)?", tokens[0]):
            tokens = tokens[1:]
            if tokens[:1] in (["-t"], ["--table"]):
                tokens = tokens[2:]
        if len(tokens) < 2 or tokens[0] not in {"-A", "--append", "-I", "--insert"}:
            continue
        jumps = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in {"-j", "--jump"}]
        target = jumps[0] if jumps else ""
        if target not in {"MARK", "SET"} or (target == "SET" and "--map-mark" not in tokens):
            continue
        body = tokens[2:]
        if tokens[0] in {"-I", "--insert"} and body[:1] and body[0].isascii() and body[0].isdigit():
            body = body[1:]
        where = f"{source}:{number}"
        try:
            if target == "SET":
                classified.setdefault(_set_rule(body), (where, tokens[1] == _OWN_CHAIN))
            else:
                scan.rules += _xt_rule(body, where)
        except _Skip as exc:
            scan.warnings.append(f"{where}: mark rule not imported: {exc}: {line}")
    _resolve(scan, classified, _members(text, source), ipsets)
    return scan


def _resolve(
    scan: Scan,
    classified: dict[str, tuple[str, bool]],
    members: dict[str, list[Member]],
    ipsets: Optional[tuple[str, str]],
) -> None:
    """Add to ``scan`` the members of each set a rule classifies through."""
    for name, lines in (_members(ipsets[0], comment(ipsets[1])) if ipsets else {}).items():
        members.setdefault(name, []).extend(lines)
    for name, (where, own) in classified.items():
        if name not in members:
            scan.warnings.append(f"{where}: mark rule not imported: set {name} is not in the dump")
        for member_where, words in members.get(name, []):
            try:
                scan.rules += _set_member(words, member_where, "lvsfw:" if own else "")
            except _Skip as exc:
                text = " ".join(words)
                scan.warnings.append(f"{member_where}: set member not imported: {exc}: {text}")


# -- nftables ------------------------------------------------------------------------------


def _sets(statements: list[Statement]) -> dict[tuple[str, str], list[str]]:
    """Named sets: (table header, set name) -> element texts."""
    found: dict[tuple[str, str], list[str]] = {}
    for path, _, statement in statements:
        if len(path) == 2 and path[1].startswith("set "):
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


def _set_items(text: str, table: str, sets: dict[tuple[str, str], list[str]]) -> list[str]:
    if text.startswith("@"):
        if (table, text[1:]) not in sets:
            raise _Skip(f"named set {text} is not in the dump")
        return sets[(table, text[1:])]
    return [i.strip() for i in text.strip("{} ").split(",") if i.strip()]


def _nft_rule(
    statement: str, table: str, sets: dict[tuple[str, str], list[str]], where: str
) -> list[FoundRule]:
    found = _NFT_MARK.search(_CT_MARK.sub("ct-mark-set", statement))
    if found is None:
        raise _Skip("no mark value")
    value = _number(found[3])
    if found[1] is None:
        mask = FULL  # meta mark set V
    elif found[2] is None:
        mask = value  # meta mark set meta mark | V: sets V's bits only
    else:
        mask = (~_number(found[2]) | value) & FULL  # meta mark set meta mark & KEEP | V
    if re.search(r"\b(?:ip6?\s+saddr|iif|iifname|[a-z]+\s+sport)\b", statement):
        raise _Skip("matches on the source or interface cannot be kept in a bundle")
    daddr = _NFT_DADDR.search(statement)
    dport = _NFT_DPORT.search(statement)
    if daddr is None:
        raise _Skip("no 'ip daddr'/'ip6 daddr' match: the VIP is not known")
    if dport is None:
        raise _Skip("no destination port match: it marks every port")
    if daddr[1] or dport[2]:
        raise _Skip("negated match")
    vips = [_address(a) for a in _set_items(daddr[2], table, sets)]
    if dport[1] == "th":
        l4 = _NFT_L4.search(statement)
        if l4 is None:
            raise _Skip("'th dport' without 'meta l4proto'")
        protocols = [_protocol(p) for p in _set_items(l4[1], table, sets)]
    else:
        protocols = [_protocol(dport[1])]
    ranges = _ports(",".join(_set_items(dport[3], table, sets)), "-")
    comment = _NFT_COMMENT.search(statement)
    text = comment[1] if comment else ""
    return _rules((value, mask), vips, protocols, ranges, where=where, comment=text)


def _rule_key(rule: MarkRule) -> tuple[str, int, int, str, int, int, int, int]:
    """:class:`MarkRule`'s own order, as one flat tuple built once per rule."""
    vip = rule.vip
    return (rule.family.value, vip.version, int(vip), rule.protocol.value, rule.first_port,
            rule.last_port, rule.mark, rule.mask)  # fmt: skip


def scan_nft(text: str, source: str, quiet_xt: bool = False) -> Scan:
    """Mark rules in ``nft list ruleset`` output, lvsfw's own ``inet lvsfw`` table included.

    ``quiet_xt``: rules using iptables extensions (``xt match``) are skipped without a warning
    (their ``iptables-nft-save`` form is scanned too).
    """
    source = comment(source)
    scan = Scan()
    statements = list(nft_statements(text))
    sets = _sets(statements)
    for path, number, statement in statements:
        table = path[0] if path else ""
        if table.split()[1:] == ["inet", "lvsfw"]:
            continue
        if not _NFT_MARK.search(_CT_MARK.sub("ct-mark-set", statement)):
            continue
        if len(path) < 2 or not path[1].startswith("chain"):
            continue
        where = f"{source}:{number}"
        if _XT.search(statement):
            if not quiet_xt:
                scan.warnings.append(
                    f"{where}: mark rule uses iptables extensions; give "
                    f"iptables-nft-save output instead: {statement}"
                )
            continue
        try:
            scan.rules += _nft_rule(statement, table, sets, where)
        except _Skip as exc:
            scan.warnings.append(f"{where}: mark rule not imported: {exc}: {statement}")
    for header, line, body in _table_texts(text):
        if header.split()[1:] == ["inet", "lvsfw"]:
            own = Nftables().parse(f"{header} {{{body}}}\n")
            scan.rules += [
                FoundRule(
                    r.mark, r.mask, r.vip, r.protocol, r.first_port, r.last_port, f"{source}:{line}"
                )
                for r in sorted(own, key=_rule_key)  # not attrs' order: O(n log n) tuples
            ]
    return scan


def scan(
    text: str, source: str, quiet_xt: bool = False, ipsets: Optional[tuple[str, str]] = None
) -> Scan:
    """Both scans over ``text`` (a dump may hold iptables-save, ipset save and nft output one
    after the other; ``ipsets``: see :func:`scan_iptables`); a rule found twice counts once."""
    found = Scan()
    found.extend(scan_iptables(text, source, ipsets))
    found.extend(scan_nft(text, source, quiet_xt))
    return found
