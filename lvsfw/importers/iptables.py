"""Mark rules in ``iptables-save`` output and ``iptables ... -j MARK`` shell lines.

Read exactly or left out: a rule is taken only when every option in it is one lvsfw can
represent (``-d``, ``-p``, ``--dport``/``--dports``, ``-m tcp|udp|sctp|multiport|comment``,
``-s 0.0.0.0/0``, a MARK target). Any negation, any other match (``-m mac``, ``-m mark``,
``--syn``...) or a source address leaves the rule out with a warning naming it: importing it
without that match would mark packets the original did not. ``-i IFACE`` is taken with a
warning (lvsfw marks on every interface; the VIP match already restricts).

Also read: the members ``add SET VIP,proto:port ... skbmark V[/M]`` of each ipset that a rule
``-m set --match-set SET dst,dst -j SET --map-set SET dst,dst --map-mark`` classifies (as
lvsfw's iptables backends do for single ports); the ``add`` lines may come before or after.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Iterator
from typing import Optional

from lvsfw.importers.found import FULL, FoundRule, Scan, Skip, address, make_rules, number
from lvsfw.importers.found import ports as read_ports
from lvsfw.importers.found import protocol as read_protocol
from lvsfw.textscan import comment

_COUNTERS = re.compile(r"^\[\d+:\d+\]\s+")
_COMMAND = re.compile(r"(/\S*/)?ip6?tables(-legacy|-nft)?")
#: lvsfw's own iptables chain: its sets' member comments are bundle names.
_OWN_CHAIN = "LVSFW-PREROUTING"
#: ipset member options that do not change which packets get which mark.
_MEMBER_NOISE = {"timeout", "packets", "bytes", "skbprio", "skbqueue"}
_ALIASES = {
    "--destination": "-d",
    "--protocol": "-p",
    "--jump": "-j",
    "--match": "-m",
    "--source": "-s",
    "--src": "-s",
    "--dst": "-d",
    "--in-interface": "-i",
    "--table": "-t",
    "--destination-port": "--dport",
    "--destination-ports": "--dports",
}
#: Options with a value that lvsfw reads (or, for -s/-i, checks).
_KNOWN = {"-d", "-p", "--dport", "--dports", "-m", "--comment", "-j", "-s", "-i", "-t"}
_MARK_OPTIONS = {"--set-mark", "--set-xmark", "--or-mark"}
_MODULES = {"tcp", "udp", "sctp", "multiport", "comment"}
_ANY_SOURCE = {"0.0.0.0/0", "::/0", "0/0"}
#: One ipset ``add`` line: (``SOURCE:LINE``, its words after the set name).
Member = tuple[str, list[str]]


def _options(tokens: list[str]) -> Iterator[tuple[str, str]]:
    """(option, value) pairs of a rule body; :class:`Skip` on the first thing lvsfw cannot
    represent exactly, named as the rule writes it."""
    words = iter(tokens)
    for raw in words:
        if raw == "!":
            option = next(words, "")
            value = "" if option in {"--syn", "-f", "--fragment"} else next(words, "")
            text = f"! {option} {value}".strip()
            raise Skip(f"negated match '{text}'")
        word = _ALIASES.get(raw, raw)
        if word not in _KNOWN and word not in _MARK_OPTIONS:
            raise Skip(f"'{raw}' cannot be kept in a bundle (lvsfw would mark more packets)")
        value = next(words, "")
        if value == "!":
            raise Skip(f"negated match '{raw} ! {next(words, '')}'")
        yield word, value


def _check(word: str, value: str, notes: list[str]) -> None:
    """Refuse what cannot be kept; note what is kept with a caveat."""
    if word == "-m" and value not in _MODULES:
        raise Skip(f"match '-m {value}' cannot be kept in a bundle (lvsfw would mark more packets)")
    if word == "-s" and value not in _ANY_SOURCE:
        raise Skip(f"source match '-s {value}' cannot be kept in a bundle")
    if word == "-j" and value != "MARK":
        raise Skip(f"target '-j {value}' is not MARK")
    if word == "-i":
        notes.append(f"'-i {value}' dropped: lvsfw marks on every interface (the VIP match "
                     "already restricts)")  # fmt: skip


def _xt_mark(options: dict[str, str]) -> tuple[int, int]:
    if "--set-xmark" in options or "--set-mark" in options:
        text = options.get("--set-xmark", options.get("--set-mark", ""))
        value, _, mask = text.partition("/")
        return number(value), number(mask) if mask else FULL
    if "--or-mark" in options:
        bits = number(options["--or-mark"])
        return bits, bits
    raise Skip("a MARK target without --set-mark/--set-xmark/--or-mark")


def _xt_rule(tokens: list[str], where: str, notes: list[str]) -> list[FoundRule]:
    options: dict[str, str] = {}
    for word, value in _options(tokens):
        _check(word, value, notes)
        if word in options and word not in {"-m", "-i", "-s"}:
            raise Skip(f"'{word}' given twice")
        options[word] = value
    if "-d" not in options:
        raise Skip("no destination (-d): the VIP is not known")
    if "-p" not in options:
        raise Skip("no protocol (-p): lvsfw bundles ports of tcp, udp or sctp")
    if "--dport" in options and "--dports" in options:
        raise Skip("both --dport and --dports: the packet must match both, lvsfw holds one")
    port_text = options.get("--dport", options.get("--dports"))
    if port_text is None:
        raise Skip("no destination port match: it marks every port")
    vips = [address(v) for v in options["-d"].split(",")]
    protocols, ranges = [read_protocol(options["-p"])], read_ports(port_text, ":")
    text = options.get("--comment", "")
    return make_rules(_xt_mark(options), vips, protocols, ranges, where=where, comment=text)


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
        raise Skip("only -m set --match-set SET dst,dst -j SET --map-set SET dst,dst is modelled")
    return name


def _set_member(words: list[str], where: str, note: str) -> list[FoundRule]:
    """The rule of one ``add SET VIP,proto:port [OPTION VALUE...]`` member line."""
    vip, _, rest = words[0].rpartition(",")
    proto, _, port = rest.rpartition(":")
    options = dict(zip(words[1::2], words[2::2]))
    if len(words) % 2 == 0 or "skbmark" not in options:
        raise Skip("not a member VIP,proto:port with skbmark")
    if set(options) - _MEMBER_NOISE - {"comment", "skbmark"}:
        raise Skip(f"member options {sorted(set(options) - _MEMBER_NOISE)} are not modelled")
    value, _, mask = options["skbmark"].partition("/")
    marks, vips = (number(value), number(mask) if mask else FULL), [address(vip)]
    text = f"{note}{options['comment']}" if options.get("comment") else ""
    protocols = [read_protocol(proto or "tcp")]  # ipset's default protocol
    return make_rules(marks, vips, protocols, read_ports(port, "-"), where=where, comment=text)


def _members(text: str, source: str) -> dict[str, list[Member]]:
    """Set name -> (``SOURCE:LINE``, words after the name) of each ``add`` line (a set that
    is only created has none)."""
    found: dict[str, list[Member]] = {}
    for line_number, line in enumerate(text.splitlines(), 1):
        words = line.split(maxsplit=2) if line.startswith(("add ", "create ")) else []
        with contextlib.suppress(ValueError):
            members = found.setdefault(words[1], []) if len(words) == 3 else None
            if members is not None and words[0] == "add":
                members.append((f"{source}:{line_number}", shlex.split(words[2])))
    return found


def _command(raw: str) -> Optional[list[str]]:
    """The words of an ``-A``/``-I``/``-R`` rule line after its chain (and rule number) with the
    chain first; None for any other line."""
    try:
        tokens = shlex.split(_COUNTERS.sub("", raw.strip()), comments=True)
    except ValueError:
        return None
    if tokens and _COMMAND.fullmatch(tokens[0]):
        tokens = tokens[1:]
        if tokens[:1] in (["-t"], ["--table"]):
            tokens = tokens[2:]
    appends = {"-A", "--append", "-I", "--insert", "-R", "--replace"}
    if len(tokens) < 2 or tokens[0] not in appends:
        return None
    body = tokens[2:]
    if tokens[0] not in {"-A", "--append"} and body[:1] and body[0].isascii() and body[0].isdigit():
        body = body[1:]
    return [tokens[1], *body]


_TABLE_OPTION = re.compile(r"(?:^|\s)(?:-t|--table)\s+(\S+)")


def _where_marked(raw: str, chain: str, table: str) -> None:
    """Refuse a mark rule outside mangle PREROUTING (or lvsfw's own chain): in another chain
    it marks only the packets that reach that chain (a conditional jump, OUTPUT), and
    importing it as a PREROUTING mark would mark more than the original."""
    given = _TABLE_OPTION.search(raw)
    if (given[1] if given else table) != "mangle":
        raise Skip(f"in table {given[1] if given else table}: lvsfw marks in mangle only")
    if chain not in {"PREROUTING", _OWN_CHAIN}:
        raise Skip(
            f"in chain {chain}: lvsfw imports marks set in mangle PREROUTING only (a rule in"
            " another chain marks only the packets that reach it)"
        )


def scan_iptables(text: str, source: str, ipsets: Optional[tuple[str, str]] = None) -> Scan:
    """Mark rules in ``iptables-save`` output or ``iptables ... -j MARK`` shell lines (``-A``,
    ``-I`` and ``-R``), and the members of each ipset a ``-j SET ... --map-mark`` rule
    classifies through: ``add`` lines in ``text`` or in ``ipsets`` (text, source name)."""
    source = comment(source)  # it starts every warning: one line each, whatever the name
    scan = Scan()
    classified: dict[str, tuple[str, bool]] = {}  # set -> (where, in lvsfw's chain)
    table = "mangle"  # shell lines say -t; an iptables-save dump says *TABLE
    for line_number, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("*"):
            table = raw[1:].strip()
            continue
        if "j" not in raw:
            continue  # no -j/--jump however quoted: not a rule with a target (cheap, exact)
        tokens = _command(raw)
        if tokens is None:
            continue
        chain, body = tokens[0], tokens[1:]
        jumps = [body[i + 1] for i, t in enumerate(body[:-1]) if t in {"-j", "--jump"}]
        target = jumps[0] if jumps else ""
        if target not in {"MARK", "SET"} or (target == "SET" and "--map-mark" not in body):
            continue
        where, notes = f"{source}:{line_number}", list[str]()
        line = " ".join(raw.split())
        try:
            _where_marked(raw, chain, table)
            if target == "SET":
                classified.setdefault(_set_rule(body), (where, chain == _OWN_CHAIN))
            else:
                scan.rules += _xt_rule(body, where, notes)
        except Skip as exc:
            scan.warnings.append(f"{where}: mark rule not imported: {exc}: {line}")
        else:
            scan.warnings += [f"{where}: {note}: {line}" for note in notes]
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
            except Skip as exc:
                text = " ".join(words)
                scan.warnings.append(f"{member_where}: set member not imported: {exc}: {text}")
