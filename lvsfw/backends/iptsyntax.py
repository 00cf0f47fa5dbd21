"""The ``iptables-restore`` / ``iptables-save`` text of lvsfw's mangle chain: render and parse.

lvsfw owns one chain, :data:`CHAIN`, in the mangle table of each address family, and one jump
to it, :data:`JUMP`, appended to mangle ``PREROUTING``. The chain holds one set rule per family
(:func:`set_rule`: single ports are classified through an ipset, see
:mod:`lvsfw.backends.ipset`) and one ``-j MARK`` rule per port range group.

Marks are written as ``--set-xmark VALUE/MASK``, which is what ``iptables-save`` prints for
``--set-mark VALUE/MASK``: the kernel clears MASK's bits and XORs VALUE in; as VALUE lies inside
MASK (a :class:`lvsfw.model.FirewallMark` guarantees it) that *sets* VALUE within MASK and keeps
the packet's other bits. The set target's ``--map-mark`` does the same with the member's
``skbmark VALUE/MASK``.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import shlex
from collections.abc import Iterable, Iterator
from typing import Optional

import attrs

from lvsfw.enums import Family, IPAddress, Protocol, address_key
from lvsfw.errors import ParseError, ValidationError
from lvsfw.model import FULL_MASK
from lvsfw.ports import ports_text
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


def set_rule(name: str) -> str:
    """The own-chain rule classifying packets through set ``name``: a packet whose
    (destination, protocol:port) is a member gets the member's ``skbmark VALUE/MASK``."""
    return (
        f"-A {CHAIN} -m set --match-set {name} dst,dst -j SET --map-set {name} dst,dst --map-mark"
    )


def return_rule(name: str) -> str:
    """The own-chain rule after :func:`set_rule`: a member's packet is done, it skips the
    range rules (so a single port costs two hash lookups whatever the number of ranges)."""
    return f"-A {CHAIN} -m set --match-set {name} dst,dst -j RETURN"


def _set_name(tokens: list[str]) -> tuple[Optional[str], bool]:
    """(the set a :func:`set_rule` or :func:`return_rule` line names, else None; whether it
    is a return rule) of tokens after ``-A CHAIN``."""
    if len(tokens) == 11 and shlex.split(set_rule(tokens[3]))[2:] == tokens:
        return tokens[3], False
    if len(tokens) == 7 and shlex.split(return_rule(tokens[3]))[2:] == tokens:
        return tokens[3], True
    return None, False


def rule_lines(spec: Specification, family: Family, ranges_only: bool = False) -> list[str]:
    """The ``-A LVSFW-PREROUTING`` lines for ``spec``'s rules of ``family``, in a stable order.

    One line per (VIP, protocol, mark, bundle) and group of at most 15 port slots;
    ``ranges_only``: only the rules of more than one port (single ports go to the set).
    """
    owners = spec.owners
    rules = sorted(
        (
            r
            for r in spec.rules
            if r.family == family and not (ranges_only and r.first_port == r.last_port)
        ),
        key=lambda r: (
            address_key(r.vip), r.protocol.value, r.mark, r.mask, owners.get(r, ""),
            r.first_port, r.last_port,
        ),
    )  # fmt: skip
    lines = []
    for _, group in itertools.groupby(
        rules, key=lambda r: (r.vip, r.protocol, r.mark, r.mask, owners.get(r, ""))
    ):
        members = list(group)
        head = members[0]
        owner = owners.get(head)
        comment = quote(f"{COMMENT}:{owner}" if owner else COMMENT)
        prefix = 32 if family == Family.IPV4 else 128
        ranges = [(r.first_port, r.last_port) for r in members]
        for chunk in _chunks(ranges):
            if len(chunk) == 1:
                match = f"-m {head.protocol} --dport {ports_text(*chunk[0], ':')}"
            else:
                match = "-m multiport --dports " + ",".join(ports_text(*r, ":") for r in chunk)
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
    ``PREROUTING`` rule in order (``-A PREROUTING ...`` lines, lvsfw's jumps included);
    ``sets`` the sets the chain's :func:`set_rule` lines name, in order, ``returns`` those its
    :func:`return_rule` lines name; ``lines`` every
    own-chain line in order, as printed (``-A CHAIN ...``); ``others`` every other mangle
    ``-A`` line (foreign chains: what a foreign jump from ``PREROUTING`` may run), in order.
    """

    rules: frozenset[MarkRule] = frozenset()
    entries: tuple[tuple[frozenset[MarkRule], str], ...] = ()
    unknown: tuple[str, ...] = ()
    chain_present: bool = False
    jumps: int = 0
    prerouting: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()
    others: tuple[str, ...] = ()

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
    mask = _int(mask_text, "mark mask", line) if mask_text else FULL_MASK
    mask = mask if xor else mask | value
    if not (0 < value <= mask <= FULL_MASK and value & ~mask == 0):
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


def _mangle_lines(text: str, outside: Optional[list[str]]) -> Iterator[tuple[str, list[str]]]:
    """(line, blank-separated words) of each mangle table command in ``text``, no counters.

    Only lvsfw's own lines are tokenized with quotes later: a foreign rule never fails parsing.
    Lines outside any table go to ``outside`` (None: they are an error).
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
        if table is None and outside is not None:
            outside.append(line)
        elif table is None:
            raise ParseError("iptables", raw, "expected *table, :chain, -A chain or COMMIT")
        if table == TABLE:
            yield line, line.split()


def _tokens(line: str) -> list[str]:
    """``line`` split as iptables-restore splits it (double quotes, backslash escapes)."""
    try:
        return shlex.split(line)
    except ValueError:
        raise ParseError("iptables", line, "unbalanced quotes or escapes") from None


def parse_state(text: str, strict: bool = True, outside: Optional[list[str]] = None) -> LiveState:
    """lvsfw's part of ``iptables-save`` output (or rendered text), in mangle only.

    Foreign chains and rules are ignored; an own-chain rule lvsfw does not understand raises
    :class:`ParseError` when ``strict``, else lands in :attr:`LiveState.unknown`. Lines outside
    any table (the ipset part of rendered text) are appended to ``outside`` when given.
    """
    entries: list[tuple[frozenset[MarkRule], str]] = []
    unknown: list[str] = []
    prerouting: list[str] = []
    sets: list[str] = []
    returning: list[str] = []
    lines: list[str] = []
    others: list[str] = []
    chain_present = False
    for line, words in _mangle_lines(text, outside):
        if words[0].startswith(":"):
            chain_present = chain_present or words[0] == f":{CHAIN}"
        elif words[0] not in _COMMANDS:
            raise ParseError("iptables", line, f"unknown command {words[0]!r}")
        elif words[1:2] == [CHAIN]:
            if words[0] != "-A":
                raise ParseError("iptables", line, f"only -A may name {CHAIN}")
            lines.append(line)
            name, returns = _set_name(words[2:]) if "--match-set" in words else (None, False)
            if name is not None:
                (returning if returns else sets).append(name)
                continue
            try:
                entries.append(parse_rule(_tokens(line)[2:], line))
            except ParseError:
                if strict:
                    raise
                unknown.append(line)
        elif words[:2] == ["-A", "PREROUTING"]:
            prerouting.append(line)
        elif words[0] == "-A" and len(words) > 1:
            others.append(line)
    return LiveState(
        rules=frozenset(r for rules, _ in entries for r in rules),
        entries=tuple(entries),
        unknown=tuple(unknown),
        chain_present=chain_present,
        jumps=sum(map(_is_jump, prerouting)),
        prerouting=tuple(prerouting),
        sets=tuple(sets),
        returns=tuple(returning),
        lines=tuple(lines),
        others=tuple(others),
    )
