"""The ``iptables-restore`` backends: one renderer/parser, two flavours (legacy and nft).

lvsfw owns one chain, :data:`CHAIN`, in the mangle table of each address family, and one jump
to it, :data:`JUMP`, appended to mangle ``PREROUTING``. Every write is a single
``iptables-restore --noflush`` per family, so each family's table changes atomically and
nothing lvsfw does not own is touched: declaring ``:LVSFW-PREROUTING - [0:0]`` under
``--noflush`` flushes just that chain.

Marks are written as ``--set-xmark VALUE/MASK``, which is what ``iptables-save`` prints for
``--set-mark VALUE/MASK``: the kernel clears MASK's bits and XORs VALUE in; as VALUE lies inside
MASK (a :class:`lvsfw.model.FirewallMark` guarantees it) that *sets* VALUE within MASK and keeps
the packet's other bits.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import shlex
import shutil
from collections.abc import Iterable, Iterator
from typing import ClassVar, Optional

import attrs

from lvsfw.backends.base import Finding, PacketFilter
from lvsfw.command import run
from lvsfw.enums import Family, IPAddress, Protocol, address_key
from lvsfw.errors import BackendUnavailable, ParseError, ValidationError
from lvsfw.rules import MarkRule, Specification

#: lvsfw's own chain in the mangle table.
CHAIN = "LVSFW-PREROUTING"
#: The table lvsfw writes to.
TABLE = "mangle"
#: The comment carried by the jump; own rules carry ``lvsfw:<bundle name>``.
COMMENT = "lvsfw"
#: The jump's rule specification, exactly as ``iptables-save`` prints it.
JUMP = f"-m comment --comment {COMMENT} -j {CHAIN}"
#: Ports one ``-m multiport`` match holds; a range takes two slots.
MULTIPORT_SLOTS = 15
INSTALL_HINT = "apt-get install iptables"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_HEADERS = {Family.IPV4: "# iptables", Family.IPV6: "# ip6tables"}
_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
_NUMBER = re.compile(r"^(?:0[xX][0-9a-fA-F]{1,8}|[0-9]{1,10})$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_ARG_OPTIONS = {
    "-d": "-d", "--destination": "-d", "-p": "-p", "--protocol": "-p",
    "--dport": "--dport", "--destination-port": "--dport",
    "--dports": "--dports", "--destination-ports": "--dports",
    "--comment": "--comment", "-j": "-j", "--jump": "-j",
    "--set-xmark": "--set-xmark", "--set-mark": "--set-mark",
}  # fmt: skip
_JUMP_TOKENS = tuple(shlex.split(JUMP))
_COMMANDS = {"-A", "-I", "-D", "-R", "-F", "-X", "-N", "-P", "-Z", "-E"}


def quote(text: str) -> str:
    """``text`` quoted the way ``iptables-save`` quotes a string argument."""
    if _SAFE.match(text):
        return text
    return '"' + re.sub(r'(["\\\'])', r"\\\1", text) + '"'


def _slots(first: int, last: int) -> int:
    return 1 if first == last else 2


def _port_text(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}:{last}"


def _chunks(ranges: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    """``ranges`` cut into runs that fit one multiport match."""
    chunk: list[tuple[int, int]] = []
    for item in ranges:
        if chunk and sum(_slots(*r) for r in chunk) + _slots(*item) > MULTIPORT_SLOTS:
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk


def address_text(vip: IPAddress) -> str:
    """``vip`` as ``iptables-save`` (glibc ``inet_ntop``) prints it: ``::a.b.c.d`` and
    ``::ffff:a.b.c.d`` for IPv4-compatible and IPv4-mapped IPv6 addresses."""
    number = int(vip)
    if vip.version == 6 and ((number >> 32 == 0 and number >> 16 != 0) or number >> 32 == 0xFFFF):
        prefix = "::ffff:" if number >> 32 else "::"
        return prefix + str(ipaddress.IPv4Address(number & 0xFFFFFFFF))
    return str(vip)


def rule_lines(spec: Specification, family: Family) -> list[str]:
    """The ``-A LVSFW-PREROUTING`` lines for ``spec``'s rules of ``family``, in a stable order.

    One line per (VIP, protocol, mark, bundle) and group of at most 15 port slots.
    """

    def key(rule: MarkRule) -> tuple[object, ...]:
        owner = spec.owners.get(rule, "")
        return (address_key(rule.vip), rule.protocol, rule.mark, rule.mask, owner)

    rules = sorted((r for r in spec.rules if r.family == family), key=lambda r: (key(r), r))
    lines = []
    for _, group in itertools.groupby(rules, key=key):
        members = list(group)
        head = members[0]
        owner = spec.owners.get(head)
        comment = quote(f"{COMMENT}:{owner}" if owner else COMMENT)
        prefix = 32 if family == Family.IPV4 else 128
        ranges = [(r.first_port, r.last_port) for r in members]
        for chunk in _chunks(ranges):
            if len(chunk) == 1:
                match = f"-m {head.protocol} --dport {_port_text(*chunk[0])}"
            else:
                match = "-m multiport --dports " + ",".join(_port_text(*r) for r in chunk)
            lines.append(
                f"-A {CHAIN} -d {address_text(head.vip)}/{prefix} -p {head.protocol} {match}"
                f" -m comment --comment {comment}"
                f" -j MARK --set-xmark {head.mark:#x}/{head.mask:#x}"
            )
    return lines


def restore_text(lines: Iterable[str]) -> str:
    """An ``iptables-restore`` transaction on the mangle table made of ``lines``."""
    return "\n".join([f"*{TABLE}", *lines, "COMMIT", ""])


@attrs.frozen
class LiveState:
    """What one ``iptables-save`` text holds of lvsfw's: its rules, chain and jumps.

    ``rules`` the mark rules in :data:`CHAIN`; ``entries`` the same line by line as
    (rules, comment); ``unknown`` own-chain lines lvsfw does not understand (only when parsed
    with ``strict=False``); ``chain_present`` whether :data:`CHAIN` is declared; ``jumps`` how
    many :data:`JUMP` rules mangle ``PREROUTING`` holds; ``prerouting`` every mangle
    ``PREROUTING`` rule in order (``-A PREROUTING ...`` lines, lvsfw's jumps included).
    """

    rules: frozenset[MarkRule] = frozenset()
    entries: tuple[tuple[frozenset[MarkRule], str], ...] = ()
    unknown: tuple[str, ...] = ()
    chain_present: bool = False
    jumps: int = 0
    prerouting: tuple[str, ...] = ()

    @property
    def jump_present(self) -> bool:
        """Whether mangle PREROUTING jumps to lvsfw's chain."""
        return self.jumps > 0

    @property
    def foreign_before_jump(self) -> tuple[str, ...]:
        """Foreign PREROUTING rules a packet meets before lvsfw's jump (all if none)."""
        for index, line in enumerate(self.prerouting):
            if _is_jump(line):
                return self.prerouting[:index]
        return self.prerouting


_SKIPPING = frozenset({"ACCEPT", "DROP", "RETURN"})
_MARKING = frozenset({"MARK", "CONNMARK"})


def _finding(detail: str, words: list[str]) -> Finding:
    """A finding narrowed to the ``-d`` address, ``-p`` and single ``--dport`` of a rule."""

    def value(option: str) -> Optional[str]:
        return words[words.index(option) + 1] if option in words[:-1] else None

    vip, proto, port = value("-d"), value("-p"), value("--dport")
    try:
        address = ipaddress.ip_address(vip.split("/")[0]) if vip else None
    except ValueError:
        address = None
    protocol = Protocol(proto) if proto in {p.value for p in Protocol} else None
    number = int(port) if port and port.isdigit() else None
    return Finding(detail, address, protocol, number)


def _is_jump(line: str) -> bool:
    """Whether ``line`` (``-A PREROUTING ...``) is lvsfw's jump :data:`JUMP`."""
    return tuple(line.split()[2:]) == _JUMP_TOKENS


def _int(text: str, what: str, line: str) -> int:
    if not _NUMBER.match(text):
        raise ParseError("iptables", line, f"{what} {text!r} is not a number")
    return int(text, 0)


def _port_range(text: str, line: str) -> tuple[int, int]:
    first_text, _, last_text = text.partition(":")
    if not _PORT.match(first_text) or not _PORT.match(last_text or first_text):
        raise ParseError("iptables", line, f"port {text!r} is not N or N:M")
    first, last = int(first_text), int(last_text or first_text)
    if not 1 <= first <= last <= 65535:
        raise ParseError("iptables", line, f"port range {text!r} is not within 1..65535")
    return first, last


def _mark(options: dict[str, str], line: str) -> tuple[int, int]:
    if ("--set-xmark" in options) == ("--set-mark" in options):
        raise ParseError("iptables", line, "expected one of --set-xmark/--set-mark")
    xor = "--set-xmark" in options
    value_text, _, mask_text = options["--set-xmark" if xor else "--set-mark"].partition("/")
    value = _int(value_text, "mark", line)
    mask = _int(mask_text, "mark mask", line) if mask_text else 0xFFFFFFFF
    mask = mask if xor else mask | value
    if not (0 < value <= mask <= 0xFFFFFFFF and value & ~mask == 0):
        raise ParseError("iptables", line, "mark must be non-zero and inside its mask")
    return value, mask


def _vip(text: str, line: str) -> IPAddress:
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ParseError("iptables", line, f"destination {text!r} is not an address") from None
    if network.prefixlen != network.max_prefixlen:
        raise ParseError("iptables", line, f"destination {text!r} is not a single address")
    return network.network_address


def parse_rule(tokens: list[str], line: str) -> tuple[frozenset[MarkRule], str]:
    """The mark rules and comment of one own-chain rule (tokens after ``-A CHAIN``)."""
    options: dict[str, str] = {}
    modules: list[str] = []
    pairs = iter(tokens)
    for token in pairs:
        value = next(pairs, None)
        if value is None:
            raise ParseError("iptables", line, f"option {token!r} lacks its argument")
        if token in {"-m", "--match"}:
            modules.append(value)
            continue
        name = _ARG_OPTIONS.get(token)
        if name is None or name in options:
            raise ParseError("iptables", line, f"unexpected {token!r} in lvsfw's chain {CHAIN}")
        options[name] = value
    for required in ("-d", "-p", "-j"):
        if required not in options:
            raise ParseError("iptables", line, f"missing {required}")
    try:
        protocol = Protocol.parse(options["-p"], "protocol")
    except ValidationError:
        raise ParseError("iptables", line, "protocol is not tcp, udp or sctp") from None
    ports_option = "--dport" if protocol.value in modules else "--dports"
    expected = sorted([protocol.value if ports_option == "--dport" else "multiport", "comment"])
    ports = set(options) & {"--dport", "--dports"}
    if options["-j"] != "MARK" or sorted(modules) != expected or ports != {ports_option}:
        raise ParseError("iptables", line, "not an lvsfw rule: -d, -p, one port match, -j MARK")
    if "--comment" not in options:
        raise ParseError("iptables", line, "not an lvsfw rule: no comment")
    vip = _vip(options["-d"], line)
    mark, mask = _mark(options, line)
    rules = frozenset(
        MarkRule(Family.of(vip), vip, protocol, *_port_range(text, line), mark, mask)
        for text in options[ports_option].split(",")
    )
    return rules, options["--comment"]


def _mangle_lines(text: str) -> Iterator[tuple[str, list[str]]]:
    """(line, blank-separated words) of each mangle table command in ``text``, no counters.

    Only lvsfw's own lines are tokenized with quotes later: a foreign rule never fails parsing.
    """
    if not isinstance(text, str):
        raise ParseError("iptables", repr(text), "expected iptables-save text")
    table: Optional[str] = None
    for raw in text.splitlines():
        line = re.sub(r"^\[\d+:\d+\]\s+", "", raw.strip())
        if not line or line.startswith("#"):
            continue
        if line.startswith("*") or line == "COMMIT":
            table = line[1:].strip() if line.startswith("*") else None
            continue
        if table is None:
            raise ParseError("iptables", raw, "expected *table, :chain, -A chain or COMMIT")
        if table == TABLE:
            yield line, line.split()


def _tokens(line: str) -> list[str]:
    """``line`` split as iptables-restore splits it (double quotes, backslash escapes)."""
    try:
        return shlex.split(line)
    except ValueError:
        raise ParseError("iptables", line, "unbalanced quotes or escapes") from None


def parse_state(text: str, strict: bool = True) -> LiveState:
    """lvsfw's part of ``iptables-save`` output (or rendered text), in mangle only.

    Foreign chains and rules are ignored; an own-chain rule lvsfw does not understand raises
    :class:`ParseError` when ``strict``, else lands in :attr:`LiveState.unknown`.
    """
    entries: list[tuple[frozenset[MarkRule], str]] = []
    unknown: list[str] = []
    prerouting: list[str] = []
    chain_present = False
    for line, words in _mangle_lines(text):
        if words[0].startswith(":"):
            chain_present = chain_present or words[0] == f":{CHAIN}"
        elif words[0] not in _COMMANDS:
            raise ParseError("iptables", line, f"unknown command {words[0]!r}")
        elif words[1:2] == [CHAIN]:
            if words[0] != "-A":
                raise ParseError("iptables", line, f"only -A may name {CHAIN}")
            try:
                entries.append(parse_rule(_tokens(line)[2:], line))
            except ParseError:
                if strict:
                    raise
                unknown.append(line)
        elif words[:2] == ["-A", "PREROUTING"]:
            prerouting.append(line)
    return LiveState(
        rules=frozenset(r for rules, _ in entries for r in rules),
        entries=tuple(entries),
        unknown=tuple(unknown),
        chain_present=chain_present,
        jumps=sum(map(_is_jump, prerouting)),
        prerouting=tuple(prerouting),
    )


class Iptables(PacketFilter):
    """The shared ``iptables-restore`` backend; subclasses name their binaries."""

    #: Per family: the ``-restore`` and ``-save`` programs.
    binaries: ClassVar[dict[Family, tuple[str, str]]]

    @classmethod
    def available(cls) -> None:
        """Raise :class:`BackendUnavailable` when one of the programs is not installed."""
        for restore, save in cls.binaries.values():
            for program in (restore, save):
                if shutil.which(program, path=_PATH) is None:
                    raise BackendUnavailable(f"{program} not found; {INSTALL_HINT}")

    def family_text(self, spec: Specification, family: Family, jump: bool = True) -> str:
        """The restore transaction for ``family``: own chain re-declared (flushed) and filled."""
        lines = [f":{CHAIN} - [0:0]", *rule_lines(spec, family)]
        return restore_text([*lines, f"-A PREROUTING {JUMP}"] if jump else lines)

    def render_spec(self, spec: Specification) -> str:
        """Both families' ``iptables-restore --noflush`` input, each under a header comment."""
        families = [f for f in Family if any(r.family == f for r in spec.rules)]
        parts = [
            "# lvsfw mangle rules: load each section once with iptables-restore --noflush"
            " (ip6tables-restore for the ip6tables one)"
        ]
        parts += [f"{_HEADERS[f]}\n{self.family_text(spec, f)}" for f in families]
        return "\n".join(parts) + ("" if families else "\n")

    def parse(self, text: str) -> frozenset[MarkRule]:
        """The mark rules in lvsfw's own chain of ``text``; foreign rules are ignored."""
        return parse_state(text).rules

    def _run(self, argv: list[str], stdin: Optional[str] = None) -> str:
        return run(argv, netns=self.netns, stdin=stdin, install_hint=INSTALL_HINT)

    def save(self, family: Family) -> str:
        """The live ``iptables-save -t mangle`` text of ``family`` (save has no ``-w``)."""
        return self._run([self.binaries[family][1], "-t", TABLE])

    def state(self, family: Family, strict: bool = False) -> LiveState:
        """lvsfw's part of the live mangle table of ``family`` (see :class:`LiveState`)."""
        return parse_state(self.save(family), strict=strict)

    def _restore(self, family: Family, text: str, test: bool = False) -> None:
        """Load ``text`` with ``-restore -w --noflush`` (``--test``: validate only)."""
        restore = self.binaries[family][0]
        self._run([restore, "-w", "--noflush", *(["--test"] if test else [])], stdin=text)

    def check(self, spec: Specification) -> None:
        """``iptables-restore --test --noflush`` of each family's text (or, for a family
        without rules, of the removal :meth:`apply` would load); nothing changes."""
        for family in Family:
            if any(r.family == family for r in spec.rules):
                self._restore(family, self.family_text(spec, family), test=True)
            else:
                text = self._removal(self.state(family))
                if text is not None:
                    self._restore(family, text, test=True)

    def _plan(self, spec: Specification, family: Family) -> Optional[str]:
        """The transaction making ``family`` equal ``spec``, or None if it already does."""
        live = self.state(family)
        wanted = parse_state(self.family_text(spec, family, jump=False))
        if not wanted.rules:
            return self._removal(live)
        if live.entries == wanted.entries and not live.unknown and live.jumps == 1:
            return None
        lines = [f":{CHAIN} - [0:0]", *rule_lines(spec, family)]
        lines += [f"-D PREROUTING {JUMP}"] * max(live.jumps - 1, 0)
        lines += [] if live.jump_present else [f"-A PREROUTING {JUMP}"]
        return restore_text(lines)

    def apply(self, spec: Specification) -> None:
        """Make each family's own chain equal ``spec``: tested first, then one restore each."""
        plans = {family: self._plan(spec, family) for family in Family}
        pending = {family: text for family, text in plans.items() if text is not None}
        for family, text in pending.items():
            self._restore(family, text, test=True)
        for family, text in pending.items():
            self._restore(family, text)

    def read(self) -> frozenset[MarkRule]:
        """The mark rules in lvsfw's live chains, both families."""
        rules: set[MarkRule] = set()
        for family in Family:
            rules |= self.state(family, strict=True).rules
        return frozenset(rules)

    @staticmethod
    def _removal(live: LiveState) -> Optional[str]:
        if not live.chain_present and not live.jump_present:
            return None
        lines = [f"-D PREROUTING {JUMP}"] * live.jumps
        if live.chain_present:
            lines += [f"-F {CHAIN}", f"-X {CHAIN}"]
        return restore_text(lines)

    def snapshot(self) -> Specification:
        """The live own chains, bundle names (from the comments) included, for undo."""
        owners: dict[MarkRule, str] = {}
        for family in Family:
            for rules, comment in self.state(family, strict=True).entries:
                owners.update(dict.fromkeys(rules, comment.partition(":")[2]))
        return Specification(frozenset(owners), frozenset(), owners)

    def findings(self, spec: Specification) -> list[Finding]:
        """Own chain or jump missing, unknown own rules, foreign rules skipping or overriding."""
        found: list[Finding] = []
        for family in {r.family for r in spec.rules}:
            live, where = self.state(family), f"{_HEADERS[family][2:]} mangle"
            if not live.chain_present:
                found.append(Finding(f"{where}: chain {CHAIN} is missing"))
            if live.jumps != 1:
                found.append(Finding(f"{where}: PREROUTING jumps to {CHAIN} {live.jumps} times"))
            found += [Finding(f"{where}: unexpected rule in {CHAIN}: {x}") for x in live.unknown]
            before = live.foreign_before_jump
            after = live.prerouting[len(before) + 1 :] if live.jump_present else ()
            for line, targets, what in (
                *((x, _SKIPPING, "before lvsfw's jump skips") for x in before),
                *((x, _MARKING, "after lvsfw's jump overrides") for x in after),
            ):
                words = line.split()
                target = words[words.index("-j") + 1] if "-j" in words[:-1] else ""
                if target in targets:
                    found.append(_finding(f"foreign rule {what} its marks: {line}", words))
        return found

    def boot_files(self, spec: Specification) -> dict[str, str]:
        """``lvsfw.rules.v4``/``.v6``: ``iptables-restore --noflush`` input per family."""
        return {f"lvsfw.rules.v{f.value[-1]}": self.family_text(spec, f) for f in Family}

    def remove(self) -> None:
        """Delete the jump, flush and delete the own chain, per family; no-op when absent."""
        for family in Family:
            text = self._removal(self.state(family))
            if text is not None:
                self._restore(family, text)


class IptablesLegacy(Iptables):
    """``iptables-legacy-restore``/``-save`` (x_tables in the kernel)."""

    name = "iptables-legacy"
    binaries: ClassVar[dict[Family, tuple[str, str]]] = {
        Family.IPV4: ("iptables-legacy-restore", "iptables-legacy-save"),
        Family.IPV6: ("ip6tables-legacy-restore", "ip6tables-legacy-save"),
    }


class IptablesNft(Iptables):
    """``iptables-nft-restore``/``-save`` (the iptables syntax over nf_tables)."""

    name = "iptables-nft"
    binaries: ClassVar[dict[Family, tuple[str, str]]] = {
        Family.IPV4: ("iptables-nft-restore", "iptables-nft-save"),
        Family.IPV6: ("ip6tables-nft-restore", "ip6tables-nft-save"),
    }


__all__ = [
    "CHAIN",
    "JUMP",
    "Iptables",
    "IptablesLegacy",
    "IptablesNft",
    "LiveState",
    "address_text",
    "parse_rule",
    "parse_state",
    "quote",
    "rule_lines",
]
