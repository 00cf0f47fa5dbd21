"""The ``iptables-restore`` backends: one backend, two flavours (legacy and nft), ipset inside.

lvsfw owns one chain, :data:`CHAIN`, in the mangle table of each address family, one jump to
it, :data:`JUMP`, appended to mangle ``PREROUTING``, and one ipset per family (named by the
flavour: :attr:`Iptables.set_names`). Single ports are members of the set, classified by one
set rule in the chain (one hash lookup per packet whatever the number of bundles); port
ranges stay ``-j MARK`` rules in the chain (:mod:`lvsfw.backends.iptsyntax` has the text,
:mod:`lvsfw.backends.ipset` the sets).

An apply reads each family once (``iptables-save``, plus ``ipset list -n`` and one
``ipset restore`` listing the owned sets), then writes at most one ``ipset restore`` before
the chains (sets exist before a rule names them), one ``iptables-restore --noflush`` per
changed family (atomic per table: the kernel takes the whole transaction or none of it), and
one ``ipset restore`` after them (sets destroyed once no rule names them). A chain changes by
``-D``/``-I`` of the changed lines only; a set by ``del``/``add`` of the changed members, or,
for large changes, a whole copy swapped in. Nothing is written when nothing changed.
A set on lvsfw's name it did not create is foreign (:mod:`.iptowner`): never destroyed.

Every method that reads takes ``live=`` (a :class:`Live` from :meth:`Iptables.live`) to use
instead; the Director reads once per plan, apply and verify through the contract's verbs.
"""

from __future__ import annotations

import ipaddress
import shutil
from typing import ClassVar, Optional

import attrs

from lvsfw.backends import ipset, iptowner, iptrecord
from lvsfw.backends.base import Change as BaseChange
from lvsfw.backends.base import Finding, PacketFilter
from lvsfw.backends.base import Live as BaseLive
from lvsfw.backends.iptowner import Change, Live, Writes, set_id, table_id
from lvsfw.backends.iptsyntax import (
    CHAIN,
    JUMP,
    TABLE,
    LiveState,
    address_text,
    parse_rule,
    parse_state,
    quote,
    restore_text,
    return_rule,
    rule_lines,
    set_rule,
)
from lvsfw.backends.remarks import native_overrides, xt_overrides
from lvsfw.command import TOOL_PATH, run
from lvsfw.enums import Family, Protocol
from lvsfw.errors import BackendUnavailable
from lvsfw.rendered import Rendered
from lvsfw.rules import MarkRule, Specification

INSTALL_HINT = "apt-get install iptables"
_HEADERS = {Family.IPV4: "# iptables", Family.IPV6: "# ip6tables"}
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
    number = int(port) if port and port.isascii() and port.isdigit() else None
    return Finding(detail, address, protocol, number)


class Iptables(PacketFilter):
    """The shared ``iptables-restore`` + ipset backend; subclasses name binaries and sets."""

    #: Per family: the ``-restore`` and ``-save`` programs.
    binaries: ClassVar[dict[Family, tuple[str, str]]]
    #: Per family: the name of lvsfw's set (distinct per flavour: both may hold rules).
    set_names: ClassVar[dict[Family, str]]
    #: Whether the tables live in nf_tables (whose mangle table lvsfw may create and delete).
    nf_tables: ClassVar[bool] = False

    def __init__(self, netns: Optional[str] = None) -> None:
        super().__init__(netns)
        #: Identifiers of the objects this backend itself wrote (counted as recorded).
        self._made: set[str] = set()
        #: :meth:`objects` as this backend's last write left them (None: read to know).
        self._left: Optional[frozenset[str]] = None
        self._record = iptrecord.Record()  # chain parses and trusted sets (see the module)

    @classmethod
    def available(cls) -> None:
        """Raise :class:`BackendUnavailable` when a program or kernel support is missing."""
        for restore, save in cls.binaries.values():
            for program in (restore, save):
                if shutil.which(program, path=TOOL_PATH) is None:
                    raise BackendUnavailable(f"{program} not found; {INSTALL_HINT}")
        if shutil.which("ipset", path=TOOL_PATH) is None:
            raise BackendUnavailable(f"ipset not found; {ipset.INSTALL_HINT}")
        problem = ipset.kernel_problem()
        if problem is not None:
            raise BackendUnavailable(f"{cls.name}: {problem}")

    # -- text ------------------------------------------------------------------------------

    def chain_lines(self, spec: Specification, family: Family, with_set: bool) -> list[str]:
        """The own chain's rules: the set rules (``with_set``), then the range rules."""
        name = self.set_names[family]
        head = [set_rule(name), return_rule(name)] if with_set else []
        return head + self._record.ranges(spec, family, rule_lines)

    def family_text(self, spec: Specification, family: Family, jump: bool = True) -> str:
        """The restore transaction for ``family``: own chain re-declared (flushed) and filled.

        It names ``family``'s set when ``spec`` has single ports there: load :meth:`ipset_text`
        first.
        """
        with_set = bool(ipset.wanted_members(spec, family))
        lines = [f":{CHAIN} - [0:0]", *self.chain_lines(spec, family, with_set)]
        return restore_text([*lines, f"-A PREROUTING {JUMP}"] if jump else lines)

    def ipset_text(self, spec: Specification) -> str:
        """``ipset restore -exist`` input creating and filling each family's set."""
        lines: list[str] = []
        for family in Family:
            members = ipset.wanted_members(spec, family)
            if members:
                lines += ipset.render_lines(self.set_names[family], family, members)
        return "".join(f"{line}\n" for line in lines)

    def render_parts(self, spec: Specification) -> Rendered:
        """Always three parts, in loading order (an empty one loads nothing): ``ipset``
        (``ipset -exist restore`` input), ``iptables`` and ``ip6tables`` (each family's
        ``iptables-restore --noflush`` input; empty for a family without rules)."""
        families = [f for f in Family if any(r.family == f for r in spec.rules)]
        texts = {f: self.family_text(spec, f) if f in families else "" for f in Family}
        sets = self.ipset_text(spec)
        sections = [
            "# lvsfw mangle rules: load the ipset section with ipset restore -exist, then each"
            " section once with iptables-restore --noflush (ip6tables-restore for ip6tables)"
        ]
        sections += [f"# ipset\n{sets.rstrip()}"] if sets else []
        sections += [f"{_HEADERS[f]}\n{texts[f]}" for f in families]
        combined = "\n".join(sections) + ("" if families else "\n")
        parts = [("ipset", sets), *((_HEADERS[f][2:], texts[f]) for f in Family)]
        return Rendered(tuple(parts), combined)

    def render_spec(self, spec: Specification) -> str:
        """The parts of :meth:`render_parts`, each non-empty one under a header comment."""
        return str(self.render_parts(spec))

    def parse(self, text: str) -> frozenset[MarkRule]:
        """The mark rules in ``text``: own chains' rules and the members of each own set an
        own chain classifies through. Foreign rules and sets are ignored."""
        outside: list[str] = []
        state = parse_state(text, outside=outside)
        sets = ipset.parse_sets(outside, set(self.set_names.values()))
        rules = set(state.rules)
        for family, name in self.set_names.items():
            if name in state.sets and name in sets:
                rules |= sets[name].rules(family)
        return frozenset(rules)

    # -- reading ---------------------------------------------------------------------------

    def _run(self, argv: list[str], stdin: Optional[str] = None) -> str:
        hint = ipset.INSTALL_HINT if argv[0] == "ipset" else INSTALL_HINT
        return run(argv, netns=self.netns, stdin=stdin, install_hint=hint)

    def save(self, family: Family) -> str:
        """The live ``iptables-save -t mangle`` text of ``family`` (save has no ``-w``)."""
        return self._run([self.binaries[family][1], "-t", TABLE])

    def state(self, family: Family, strict: bool = False) -> LiveState:
        """lvsfw's part of the live mangle table of ``family`` (see :class:`LiveState`)."""
        return self._record.state(family, self.save(family), strict)

    def set_list(self) -> frozenset[str]:
        """Every set name in the namespace (``ipset list -n``)."""
        return frozenset(self._run(["ipset", "list", "-n"]).split())

    def _recorded(self, identifier: str) -> bool:
        """Whether the state file records ``identifier`` or this backend wrote it."""
        return identifier in self._made or (self.owned is not None and identifier in self.owned)

    def live(self, fast: bool = False) -> Live:
        """Read lvsfw's live state once (two saves, two ipset calls at most, one listing of
        the nf_tables tables for iptables-nft); every method taking ``live=`` uses it instead
        of reading again. Sets with lvsfw's names are classified as its own or foreign.
        ``fast``: own sets as lvsfw left them while their headers say so (:mod:`.iptrecord`)."""
        self._left = None
        chains = {family: self.state(family) for family in Family}
        names = self.set_list()
        present = [n for n in iptowner.set_names_of(self.set_names) if n in names]
        sets = self._record.sets(present, fast, self._run)
        mine, foreign = iptowner.classify(self.set_names, names, sets, self._recorded)
        tables = iptowner.mangle_tables(self.netns) if self.nf_tables else None
        return Live(chains, sets, names, dict(self.set_names), mine, foreign, tables)

    def _ipset(self, lines: list[str]) -> str:
        return self._run(["ipset", "-exist", "restore"], stdin="".join(f"{x}\n" for x in lines))

    def read(self, live: Optional[Live] = None) -> frozenset[MarkRule]:
        """The mark rules in force: own chains' rules and their sets' members."""
        return (live or self.live()).rules

    def snapshot(self, live: Optional[Live] = None) -> Specification:
        """The live own rules, bundle names (comments) included, for undo."""
        live = live or self.live()
        owners = {r: o for family in Family for r, o in live.owners(family).items()}
        return Specification(frozenset(owners), frozenset(), owners)

    # -- checking and writing --------------------------------------------------------------

    def _restore(self, family: Family, text: str, test: bool = False) -> None:
        """Load ``text`` with ``-restore -w --noflush`` (``--test``: validate only)."""
        restore = self.binaries[family][0]
        self._run([restore, "-w", "--noflush", *(["--test"] if test else [])], stdin=text)

    def validate(self, spec: Specification, live: Optional[Live] = None) -> None:
        """``iptables-restore --test --noflush`` of each family's chain (or, for a family
        without rules, of the removal :meth:`apply` would load); nothing changes.

        The set rule is tested only where its set exists already: the tool resolves set names
        while parsing. Set contents come from validated bundles; the kernel's word on them
        comes with the apply, which undoes nothing it did not do. A foreign set with one of
        lvsfw's names raises :class:`ConflictError` first.
        """
        live = live if live is not None else self.live()
        iptowner.refuse(live, spec)
        names = live.names
        for family in Family:
            members = ipset.wanted_members(spec, family)
            with_set = bool(members) and self.set_names[family] in names
            lines = self.chain_lines(spec, family, with_set)
            if lines or members:
                text = restore_text([f":{CHAIN} - [0:0]", *lines, f"-A PREROUTING {JUMP}"])
                self._restore(family, text, test=True)
            else:
                removal = self._removal(live.chains[family])
                if removal is not None:
                    self._restore(family, removal, test=True)

    def _chain_plan(self, spec: Specification, family: Family, live: Live) -> Optional[str]:
        """The transaction making ``family``'s chain equal ``spec``, or None if it does."""
        chain = live.chains[family]
        wanted = self.chain_lines(spec, family, bool(ipset.wanted_members(spec, family)))
        if not wanted:
            return self._removal(chain)
        clean = chain.chain_present and not live.problems(family)
        if clean and chain.jumps == 1 and chain.lines == tuple(wanted):
            return None
        jumps = [f"-D PREROUTING {JUMP}"] * max(chain.jumps - 1, 0)
        jumps += [] if chain.jump_present else [f"-A PREROUTING {JUMP}"]
        present, wanted_set = set(chain.lines), set(wanted)
        kept = [line for line in chain.lines if line in wanted_set]
        if (
            not clean
            or len(present) < len(chain.lines)
            or kept != [line for line in wanted if line in present]
        ):  # damaged or reordered: flush and refill
            return restore_text([f":{CHAIN} - [0:0]", *wanted, *jumps])
        edits = [f"-D{line[2:]}" for line in chain.lines if line not in wanted_set]
        size, prefix = len(kept), f"-A {CHAIN} "
        for index, line in enumerate(wanted):
            if line not in present:
                where = f"-A {CHAIN} " if index == size else f"-I {CHAIN} {index + 1} "
                edits.append(where + line[len(prefix) :])
                size += 1
        return restore_text([*edits, *jumps])

    def _writes(self, spec: Specification, live: Live) -> Writes:
        """What makes the own sets and chains equal ``spec`` from ``live``: the ``ipset
        restore`` lines before the chains, each changed family's restore text, and the lines
        destroying the sets no rule names any more (all empty: nothing to write). Only sets
        of :attr:`Live.mine` are destroyed; a foreign one raises :class:`ConflictError` for a
        ``spec`` with rules (:func:`iptowner.refuse`), and is left alone for an empty one."""
        iptowner.refuse(live, spec)
        temps = {n + ipset.TEMP_SUFFIX for n in self.set_names.values()} & live.mine
        before = [f"destroy {n}" for n in sorted(temps)]
        after: list[str] = []
        for family, name in self.set_names.items():
            members = ipset.wanted_members(spec, family)
            if members:
                existing = live.names - temps
                before += ipset.load_lines(name, family, members, live.sets.get(name), existing)
            elif name in live.mine:
                after.append(f"destroy {name}")
        plans = {family: self._chain_plan(spec, family, live) for family in Family}
        chains = {family: text for family, text in plans.items() if text is not None}
        return before, chains, after

    def creates(self, change: BaseChange) -> frozenset[str]:
        """Every set ``change`` may create (scratch copies included) and, for iptables-nft,
        each mangle table its restores create because it does not exist yet (an inverse,
        planned when sent: every set and table lvsfw may have)."""
        mine = self.own(change, Change)
        if mine.live is None or mine.writes is None:
            return frozenset(set_id(n) for n in iptowner.set_names_of(self.set_names))
        return iptowner.creates(mine.spec, mine.live, mine.writes)

    def objects(self, live: Optional[BaseLive] = None) -> frozenset[str]:
        """lvsfw's own sets in ``live``, and the recorded mangle tables still present. None:
        as this backend's last write left them (no read), or read now if it read since."""
        if live is None and self._left is not None:
            return self._left
        live = self.own(live, Live) if live is not None else self.live()
        return frozenset(set_id(n) for n in live.mine) | {
            table_id(f) for f in iptowner.tables_of(live) if self._recorded(table_id(f))
        }

    def _write(self, spec: Specification, live: Live, writes: Writes) -> None:
        """Send ``writes`` (loading ``spec``, planned on ``live``). The scratch sets and
        tables they may create count as this backend's first (the undo of a write failing
        half-way may clean them); its main sets have lvsfw's structure, which is enough."""
        made = iptowner.creates(spec, live, writes)
        self._made |= {i for i in made if i.startswith("table:") or i.endswith(ipset.TEMP_SUFFIX)}
        self._left = None
        self._record.forget()
        before, chains, after = writes
        if before:
            self._ipset(before)
            self._made -= {set_id(n + ipset.TEMP_SUFFIX) for n in self.set_names.values()}
        for family, text in chains.items():
            self._restore(family, text)
        iptowner.destroy_sets(self._ipset, after)
        self._left = iptowner.left(spec, live, writes, self._recorded)
        self._record.wrote(spec, live.sets, self.set_names, before + after)
        self._made = set(self._left)  # what is gone is no longer this backend's

    def apply(self, spec: Specification, live: Optional[Live] = None) -> None:
        """Make the own sets and chains equal ``spec`` from one read (``live``, else read
        now): sets first, then one restore per changed family, then unused sets destroyed.
        A foreign set with one of lvsfw's names raises :class:`ConflictError` before any
        write (for an empty ``spec`` it is left alone)."""
        live = live or self.live()
        self._write(spec, live, self._writes(spec, live))

    @staticmethod
    def _removal(live: LiveState) -> Optional[str]:
        if not live.chain_present and not live.jump_present:
            return None
        lines = [f"-D PREROUTING {JUMP}"] * live.jumps
        if live.chain_present:
            lines += [f"-F {CHAIN}", f"-X {CHAIN}"]
        return restore_text(lines)

    def remove(self, live: Optional[Live] = None) -> None:
        """Delete the jump, flush and delete the own chain, per family, then the own sets
        (:attr:`Live.mine`: a foreign set with lvsfw's name is skipped), then each recorded
        nf_tables mangle table left empty; no-op when absent."""
        live = live or self.live()
        self._left = None
        self._record.forget()
        for family in Family:
            text = self._removal(live.chains[family])
            if text is not None:
                self._restore(family, text)
        iptowner.destroy_sets(self._ipset, [f"destroy {n}" for n in sorted(live.mine)])
        self._made -= {set_id(n) for n in live.mine}
        for family in iptowner.tables_of(live):
            if self._recorded(table_id(family)) and iptowner.drop_mangle(self.netns, family):
                self._made.discard(table_id(family))

    # -- structure -------------------------------------------------------------------------

    def findings(
        self,
        spec: Specification,
        live: Optional[BaseLive] = None,
        thorough: Optional[bool] = None,
    ) -> list[Finding]:
        """Own chain, jump or set missing or damaged, unknown own rules, foreign rules
        skipping or overriding (through the chains they jump to, too); ``thorough``: also
        native nf_tables prerouting chains re-marking after mangle (one more listing; default:
        only when ``live`` is not given, so an apply's read costs nothing more)."""
        native = live is None if thorough is None else thorough
        live = self.own(live, Live) if live is not None else self.live()
        everywhere: list[Finding] = []
        for family in sorted({r.family for r in spec.rules}, key=lambda f: f.value):
            found: list[Finding] = []
            chain, where = live.chains[family], f"{_HEADERS[family][2:]} mangle"
            name = self.set_names[family]
            if not chain.chain_present:
                found.append(Finding(f"{where}: chain {CHAIN} is missing"))
            if chain.jumps != 1:
                found.append(Finding(f"{where}: PREROUTING jumps to {CHAIN} {chain.jumps} times"))
            found += [
                Finding(f"{where}: unexpected rule in {CHAIN} or set {name}: {x}")
                for x in live.problems(family)
            ]
            if ipset.wanted_members(spec, family):
                found += self._set_findings(live, family, where)
            found += self._overrides(chain, where)
            everywhere += [attrs.evolve(f, family=family) for f in found]
        if native and spec.rules:
            everywhere += native_overrides(self.netns)
        return everywhere

    def _set_findings(self, live: Live, family: Family, where: str) -> list[Finding]:
        name, chain = self.set_names[family], live.chains[family]
        found = []
        if name not in live.sets:
            found.append(Finding(f"{where}: set {name} is missing"))
        elif live.sets[name].problem(family) is not None:
            found.append(Finding(f"{where}: set {name} {live.sets[name].problem(family)}"))
        if chain.chain_present and name not in chain.sets:
            found.append(Finding(f"{where}: {CHAIN} does not classify through set {name}"))
        return found

    @staticmethod
    def _overrides(chain: LiveState, where: str) -> list[Finding]:
        """Foreign mangle rules (in PREROUTING or the chains it jumps to) skipping lvsfw's
        jump or re-marking after it (:func:`lvsfw.backends.remarks.xt_overrides`)."""
        before = chain.foreign_before_jump
        after = chain.prerouting[len(before) + 1 :] if chain.jump_present else ()
        return [
            _finding(detail, words)
            for detail, words in xt_overrides(before, after, chain.others, CHAIN)
        ]

    # -- the contract (lvsfw.backends.base.PacketFilter) -----------------------------------

    def observe(self, fast: bool = False) -> Live:
        """The live state: chains read in full; ``fast``: own sets as lvsfw last read or
        wrote them while ``ipset list -t`` shows them unchanged (:mod:`.iptrecord`)."""
        return self.live(fast)

    def diff(self, spec: Specification, live: BaseLive) -> Optional[Change]:
        """The apply of ``spec`` planned against ``live`` (None: nothing to write)."""
        mine = self.own(live, Live)
        writes = self._writes(spec, mine)
        return Change(spec, mine, writes, self.snapshot(mine)) if any(writes) else None

    def check(self, change: BaseChange) -> None:
        """``--test`` of ``change``'s chains against the state it was planned on (an inverse:
        against a fresh read)."""
        mine = self.own(change, Change)
        self.validate(mine.spec, mine.live)

    def commit(self, change: BaseChange) -> None:
        """Write ``change``; an inverse is planned on a fresh read now."""
        mine = self.own(change, Change)
        if mine.live is None or mine.writes is None:
            self.apply(mine.spec)
        else:
            self._write(mine.spec, mine.live, mine.writes)

    def boot_files(self, spec: Specification) -> dict[str, str]:
        """``lvsfw.ipset`` (``ipset restore -exist`` input, to load first) and
        ``lvsfw.rules.v4``/``.v6`` (``iptables-restore --noflush`` input per family)."""
        files = {f"lvsfw.rules.v{f.value[-1]}": self.family_text(spec, f) for f in Family}
        sets = self.ipset_text(spec)
        return {"lvsfw.ipset": sets, **files} if sets else files


class IptablesLegacy(Iptables):
    """``iptables-legacy-restore``/``-save`` (x_tables in the kernel)."""

    name = "iptables-legacy"
    binaries: ClassVar[dict[Family, tuple[str, str]]] = {
        Family.IPV4: ("iptables-legacy-restore", "iptables-legacy-save"),
        Family.IPV6: ("ip6tables-legacy-restore", "ip6tables-legacy-save"),
    }
    set_names: ClassVar[dict[Family, str]] = {
        Family.IPV4: "lvsfw4-legacy",
        Family.IPV6: "lvsfw6-legacy",
    }


class IptablesNft(Iptables):
    """``iptables-nft-restore``/``-save`` (the iptables syntax over nf_tables)."""

    name = "iptables-nft"
    binaries: ClassVar[dict[Family, tuple[str, str]]] = {
        Family.IPV4: ("iptables-nft-restore", "iptables-nft-save"),
        Family.IPV6: ("ip6tables-nft-restore", "ip6tables-nft-save"),
    }
    set_names: ClassVar[dict[Family, str]] = {Family.IPV4: "lvsfw4-nft", Family.IPV6: "lvsfw6-nft"}
    nf_tables: ClassVar[bool] = True


__all__ = [
    "CHAIN", "JUMP", "Change", "Iptables", "IptablesLegacy", "IptablesNft", "Live", "LiveState",
    "address_text", "parse_rule", "parse_state", "quote", "rule_lines",
]  # fmt: skip
