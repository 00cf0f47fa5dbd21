"""The nftables backend: one own table ``inet lvsfw`` loaded through libnftables JSON.

The table has a constant skeleton and data (N = 4 and 6)::

    map markN         { type ipvN_addr . inet_proto . inet_service : mark }      single ports
    map markrangeN    { ... : mark;    flags interval }                          port ranges
    map maskedN       { ... : verdict }                   single ports, masked marks
    map maskedrangeN  { ... : verdict; flags interval }   port ranges, masked marks
    chain mark-VVVVVVVV-MMMMMMMM { meta mark set meta mark & KEEP | VVVVVVVV }
    chain prerouting { type filter hook prerouting priority mangle; policy accept;
        meta mark set ip daddr . meta l4proto . th dport map @mark4 accept  (and the others) }

Single ports live in plain hash maps (``nft_set_hash``: O(1) per packet); only ranges live in
interval maps, whose kernel type (pipapo) ANDs bitmaps with a bit per element. A full-mask
mark is the datum of ``mark*``. A masked mark must keep the packet's bits outside the mask,
and nft 1.0.6 cannot OR a map's result into the mark (the right side of ``|`` must be a
constant), so a masked mark is an element of ``masked*`` jumping (goto) to a one-rule chain
per distinct (mark, mask) doing ``meta mark & ~mask | mark`` with constants. nft prints that
AND operand as ``~mask | mark`` (it folds the mark's bits in); lvsfw renders the same form.

Writes are single libnftables transactions: the whole table when it is absent (or replaced
after drift), otherwise only the map elements and mark chains that differ; each comes with
its inverse, which is the undo. The live table is read once per apply, or not at all while
the namespace's nf_tables generation is the one lvsfw's own last commit produced (see
:mod:`lvsfw.backends.nftgen`): known in memory within a process and, with
:attr:`Nftables.cache_path` set, from a file that commit left for later processes
(:mod:`lvsfw.backends.nftcache`), or that a full read of exactly lvsfw's table left after
someone else's commit.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Callable
from typing import Any, ClassVar, Optional, Union

from lvsfw.backends import nftcache
from lvsfw.backends.base import Change as Change_
from lvsfw.backends.base import Finding, Live, PacketFilter
from lvsfw.backends.nftdelta import Change, Target, deltas, full_table, full_table_text, written
from lvsfw.backends.nftgen import Generation, generation
from lvsfw.backends.nftparse import LiveState, Table, analyse, parse_json_table, parse_text
from lvsfw.backends.nftsyntax import (
    FAMILY,
    INSTALL_HINT,
    PARSE_ERRORS,
    TABLE,
    TABLE_OBJ,
    Json,
    T,
    paused_gc,
)
from lvsfw.backends.remarks import Words, command, nft_overrides
from lvsfw.errors import BackendUnavailable, CommandFailed, ParseError
from lvsfw.netns import call_in_netns
from lvsfw.rules import MarkRule, Specification, expanded


class Context:
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

    def send(self, command: Union[Json, str], argv: tuple[str, ...]) -> None:
        """Run a transaction: libnftables JSON, or an ``nft -f`` script (``str``), whose
        ``argv`` then drops ``-j``; CommandFailed describing it when refused."""
        if not isinstance(command, str):
            self.json(command, argv)
            return
        rc, _, error = self._nft.cmd(command)
        if rc != 0:
            raise CommandFailed(tuple(a for a in argv if a != "-j"), int(rc), str(error))

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

    #: Where a commit records what it wrote, for :meth:`observe` in later processes (None:
    #: nowhere, only this object remembers). The record is trusted only while the namespace's
    #: boot, cookie and nf_tables generation are the ones the commit produced.
    cache_path: Optional[str] = None

    def __init__(self, netns: Optional[str] = None) -> None:
        super().__init__(netns)
        #: The transaction the last :meth:`apply` sent (None: it wrote nothing).
        self.last_transaction: Optional[Union[Json, str]] = None
        #: The nf_tables generation lvsfw's last commit produced, and what it wrote.
        self._written: Optional[tuple[Generation, LiveState]] = None

    @classmethod
    def available(cls) -> None:
        """Raise BackendUnavailable when the binding or libnftables cannot be loaded."""
        Context()

    def _argv(self, *words: str) -> tuple[str, ...]:
        prefix = ("ip", "netns", "exec", self.netns) if self.netns else ()
        return (*prefix, "nft", *words)

    def _in_netns(self, work: Callable[[Context], T]) -> T:
        """``work`` with a libnftables context created in this backend's namespace."""
        return call_in_netns(self.netns, lambda: work(Context()))

    def render_spec(self, spec: Specification) -> str:
        """The ``nft -f`` script of the whole table, in the format ``nft list`` prints (each
        element commented with its bundle's name)."""
        return full_table_text(Target.of(spec.rules, spec.owners))

    def render_json(self, spec: Specification, replace: bool = False) -> Json:
        """The libnftables JSON creating the whole table (``replace``: deleting it first)."""
        return full_table(Target.of(spec.rules, spec.owners), replace)

    def parse(self, text: str) -> frozenset[MarkRule]:
        """The mark rules of table inet lvsfw in a rendered script or ``nft list`` output."""
        return self._rules(parse_text, text).rules

    def parse_json(self, obj: object) -> frozenset[MarkRule]:
        """The mark rules of table inet lvsfw in ``nft -j list`` output (a decoded object)."""
        return self._rules(parse_json_table, obj).rules

    def parse_spec(self, text: str) -> Specification:
        """:meth:`parse`, with each rule's bundle name (its element's comment) as owner."""
        state = self._rules(parse_text, text)
        return Specification(state.rules, frozenset(), state.owners())

    def parse_json_spec(self, obj: object) -> Specification:
        """:meth:`parse_json`, with each rule's bundle name (its element's comment) as owner."""
        state = self._rules(parse_json_table, obj)
        return Specification(state.rules, frozenset(), state.owners())

    @staticmethod
    @paused_gc()
    def _rules(parse: Callable[[Any], Optional[Table]], source: Any) -> LiveState:
        try:
            table = parse(source)
            state = LiveState(False) if table is None else analyse(table)
        except ParseError:
            raise
        except PARSE_ERRORS as exc:
            raise ParseError("nftables", str(source)[:80], f"not nft syntax ({exc})") from exc
        if state.unresolved:
            raise ParseError("nftables", state.unresolved[0], "an element whose mark is unknown")
        return state

    def _exists(self, ctx: Context) -> bool:
        command = {"nftables": [{"list": {"tables": {"family": FAMILY}}}]}
        listed = ctx.json(command, self._argv("-j", "list", "tables", FAMILY))
        return {"family": FAMILY, "name": TABLE} in [
            {k: v for k, v in item["table"].items() if k in ("family", "name")}
            for item in listed["nftables"]
            if "table" in item
        ]

    @paused_gc()
    def _live(self, ctx: Context) -> LiveState:
        if not self._exists(ctx):
            return LiveState(False)
        command = {"nftables": [{"list": TABLE_OBJ}]}
        dump = ctx.json(command, self._argv("-j", "list", "table", FAMILY, TABLE))
        try:
            table = parse_json_table(dump)
        except PARSE_ERRORS as exc:
            raise ParseError("nftables", str(dump)[:80], f"unexpected listing ({exc})") from exc
        return LiveState(False) if table is None else analyse(table)

    def observe(self, fast: bool = False) -> LiveState:
        """The live table, read once (one listing) for a whole plan/check/apply.

        ``fast``: when the namespace's nf_tables generation is the one lvsfw's own last commit
        produced (nothing at all was committed since, by anyone), return what that commit
        wrote without listing the table: remembered by this object, or recorded at
        :attr:`cache_path` by an earlier process. Drift checks never pass ``fast``.
        """

        def work(ctx: Context) -> LiveState:
            now = generation() if fast else None
            if now is not None and self._written is not None and now == self._written[0]:
                return self._written[1]
            if now is not None and self.cache_path is not None:
                target = nftcache.load(self.cache_path, nftcache.key_of(now), expanded())
                if target is not None:
                    self._written = (now, written(target))
                    return self._written[1]
            live = self._live(ctx)
            if now is not None and self.cache_path is not None:
                self._record_read(live, now)
            return live

        return self._in_netns(work)

    def _record_read(self, live: LiveState, read_at: Generation) -> None:
        """After a full read on the fast path (someone else's commit moved the generation),
        record the table for later processes, as a commit does. Only when nothing was
        committed while it was listed and it is exactly what lvsfw writes for its rules:
        its layout, normalized rules, each element in the map lvsfw places it in (the record
        keeps rules and names; a reader places them again). Without this, one foreign commit
        (a firewall reload at boot) made every later no-op apply list the table."""
        if not live.intact or generation() != read_at:
            return
        target = Target.of(live.rules, live.names)
        if target.rules != live.rules or target.chains != live.chains:
            return
        if target.content == live.content:
            self._remember(read_at, target)

    def snapshot(self, live: Optional[Live] = None) -> Specification:
        """The live rules with their bundle names (element comments) as owners, a
        specification :meth:`apply` can restore. ``live``: as :meth:`observe` read it (None:
        observe now; lvsfw's own last commit counts while nothing was committed since, which
        carries the names it wrote)."""
        state = self.own(live, LiveState) if live is not None else self.observe(fast=True)
        return Specification(state.rules, frozenset(), state.owners())

    def live_state(self) -> LiveState:
        """The live table: rules, and every departure from lvsfw's layout (for drift)."""
        return self.observe()

    atomic = True

    def cached(self, live: Live) -> bool:
        """Whether ``live`` is what lvsfw's own last commit wrote (not read from the kernel)."""
        return self.own(live, LiveState).cached

    def findings(
        self, spec: Specification, live: Optional[Live] = None, thorough: Optional[bool] = None
    ) -> list[Finding]:
        """The own table missing or departing from lvsfw's layout, as ``live`` shows it;
        ``thorough``: also foreign prerouting chains that re-mark packets.

        A foreign base chain on the prerouting hook at lvsfw's priority (mangle, -150) or later
        that sets ``meta mark``, itself or in a chain it jumps or goes to, may override the
        bundles' marks. (An ``accept`` elsewhere does not skip lvsfw's chain: every base chain
        of a hook sees the packet.)
        """
        deep = live is None if thorough is None else thorough
        table = self.own(live, LiveState) if live is not None else self.observe()
        found = [Finding(f"table {FAMILY} {TABLE}: {p}") for p in table.problems]
        if not table.exists and spec.rules:
            found.append(Finding(f"table {FAMILY} {TABLE} is missing"))
        return found + (self._in_netns(self._foreign) if deep else [])

    def diff(self, spec: Specification, live: Live) -> Optional[Change]:
        """The transaction turning ``live`` into ``spec`` (see :meth:`transaction`)."""
        return self.transaction(spec, self.own(live, LiveState))

    def transaction(
        self, spec: Specification, live: LiveState, drop_empty: bool = True
    ) -> Optional[Change]:
        """The transaction turning ``live`` into ``spec``, with its inverse (None: no change).

        Only the difference when the table is intact; the whole table (replacing a damaged
        one) otherwise; the table's deletion for an empty ``spec``. The inverse restores the
        rules ``live`` held. ``drop_empty``: an empty ``spec`` deletes the table (else it
        leaves the empty skeleton).
        """
        target = Target.of(spec.normalized, spec.owners)
        if drop_empty and not spec.rules:
            if not live.exists:
                return None
            return Change({"nftables": [{"delete": TABLE_OBJ}]}, self._restore(live), None)
        if not live.intact:  # the whole table: as text (the JSON takes half as long again)
            return Change(full_table_text(target, live.exists), self._restore(live), target)
        have = live.target
        if have is None:
            have = Target(live.rules, live.content, live.chains, live.names)
        both = deltas(have, target)
        return None if both is None else Change(*both, target)

    @staticmethod
    def _restore(live: LiveState) -> Union[Json, str]:
        if not live.exists:
            return {"nftables": [{"delete": TABLE_OBJ}]}
        return full_table_text(Target.of(live.rules, live.owners()), True)

    def check(self, change: Change_) -> None:
        """Have libnftables and the kernel validate ``change`` (nothing is committed)."""
        forward = self.own(change, Change).forward

        def work(ctx: Context) -> None:
            ctx.set_dry_run(True)
            ctx.send(forward, self._argv("--check", "-j", "-f", "-"))

        self._in_netns(work)

    def commit(self, change: Change_) -> None:
        """Send ``change`` as one atomic transaction.

        Remembers what the table holds afterwards, keyed by the nf_tables generation, when
        the generation moved by exactly this one commit and the result is known (not an
        undo; see :meth:`observe`), and records it at :attr:`cache_path`. The record is
        removed before sending and written only after the commit succeeded, so a process
        killed in between leaves none (the next one reads the table in full).
        """
        mine = self.own(change, Change)

        def work(ctx: Context) -> None:
            self._written = None
            if self.cache_path is not None:
                nftcache.discard(self.cache_path)
            before = generation()
            ctx.send(mine.forward, self._argv("-j", "-f", "-"))
            after = generation()
            if before is None or after is None or after != (before[0], before[1] + 1):
                return
            if mine.target is not None:
                self._remember(after, mine.target)

        self._in_netns(work)
        self.last_transaction = mine.forward

    def _remember(self, at: Generation, target: Target) -> None:
        """The table holds ``target`` at generation ``at``: kept for :meth:`observe` here
        and, with :attr:`cache_path`, recorded for later processes."""
        self._written = (at, written(target))
        key = nftcache.key_of(at)
        if self.cache_path is not None and key is not None:
            nftcache.save(self.cache_path, key, target)

    def plan(self, spec: Specification) -> Optional[Union[Json, str]]:
        """The transaction :meth:`apply` would send now (None: nothing to write; a ``str``:
        the ``nft -f`` script of the whole table)."""
        change = self.transaction(spec, self.observe())
        return None if change is None else change.forward

    def validate(self, spec: Specification) -> None:
        """Have libnftables and the kernel validate replacing the table by ``spec`` (dry run)."""
        self.check(Change(full_table_text(Target.of(spec.rules, spec.owners), True), {}, None))

    def apply(self, spec: Specification) -> None:
        """Make the table equal ``spec`` in one transaction: only the difference, or nothing."""
        change = self.transaction(spec, self.observe(), drop_empty=False)
        if change is None:
            self.last_transaction = None
            return
        self.commit(change)

    def _foreign(self, ctx: Context) -> list[Finding]:
        """Foreign prerouting chains that re-mark packets, followed through their jumps,
        gotos and verdict maps (:func:`lvsfw.backends.remarks.nft_overrides`; lvsfw's own
        table is never listed)."""

        def read(words: Words) -> list[Any]:
            listed = ctx.json(command(words), self._argv("-j", *words))
            items = listed.get("nftables", []) if isinstance(listed, dict) else []
            return items if isinstance(items, list) else []

        return nft_overrides(read, frozenset({(FAMILY, TABLE)}))

    def remove(self) -> None:
        """Delete table inet lvsfw if it exists; nothing else is touched."""

        def work(ctx: Context) -> None:
            self._written = None
            if self.cache_path is not None:
                nftcache.discard(self.cache_path)
            if self._exists(ctx):
                argv = self._argv("delete", "table", FAMILY, TABLE)
                ctx.send({"nftables": [{"delete": TABLE_OBJ}]}, argv)

        self._in_netns(work)
