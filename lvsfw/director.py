"""The Director: plan, apply, verify and destroy both halves on a live LVS director."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional, Protocol, runtime_checkable

from lvsfw import registry, state
from lvsfw.backends.base import Finding, PacketFilter
from lvsfw.backends.ipvs import Ipvs
from lvsfw.detect import detect_firewall
from lvsfw.drift import Drift, Report, finding_drift, rule_drift, service_drift
from lvsfw.errors import LvsfwError, ValidationError, add_note
from lvsfw.files import write_atomic
from lvsfw.lock import LOCK_DIR, lock_path, locked
from lvsfw.model import Bundle
from lvsfw.netns import check_netns
from lvsfw.plan import Plan
from lvsfw.rules import FwmarkService, Memo, Normalizer, Specification, specify

#: The steps of an apply, in order; a test hook is called with each name before it runs.
#: ``commit`` comes last, just before the state file records the new ownership.
STEPS = ("ipvs-add", "marks", "ipvs-remove", "commit")
ServiceKey = state.ServiceKey


@runtime_checkable
class Transactional(Protocol):
    """A packet filter that reads its live state once and writes (and undoes) deltas.

    ``observe(fast)`` returns the live state in one read: its ``.rules`` are the mark rules in
    force; ``fast`` lets it trust its own last commit while the kernel provably did not change
    (``.cached`` says whether it did; a state without ``.cached`` is always dry-run first).
    ``transaction(spec, live)`` the change from ``live`` to ``spec``, or None; ``dry_run`` has
    the kernel validate it; ``commit(change, undo)`` sends it or undoes it;
    ``table_findings``/``inspect`` the structural findings. nftables (one atomic transaction,
    the inverse as undo) and the iptables flavours (sets, then each family's table; a reload
    of the rules read as undo) implement it.
    """

    def observe(self, fast: bool = False) -> Any: ...

    def transaction(self, spec: Specification, live: Any) -> Any: ...

    def dry_run(self, change: Any) -> None: ...

    def commit(self, change: Any, undo: bool = False) -> None: ...

    def table_findings(self, spec: Specification, live: Any) -> list[Finding]: ...

    def inspect(self, spec: Specification) -> tuple[Any, list[Finding]]: ...


class Director:
    """Keeps a director's marks and IPVS services equal to a list of bundles.

    ``firewall`` is a packet-filter backend name (``nftables``, ``iptables-nft``,
    ``iptables-legacy``) or ``"auto"`` (the one this host already uses for mangle); ``ipvs``
    whether to manage IPVS services too; ``netns`` the network namespace to work in (None: the
    current one); ``state_file`` where the owned IPVS services are recorded (default
    ``/var/lib/lvsfw/state.json``, one per namespace); ``lock_timeout`` how long an apply waits
    for another one (seconds).
    """

    def __init__(
        self,
        firewall: str = "nftables",
        ipvs: bool = True,
        netns: Optional[str] = None,
        *,
        state_file: Optional[str] = None,
        lock_dir: str = LOCK_DIR,
        lock_timeout: float = 60.0,
        ipvsadm: str = "ipvsadm",
    ) -> None:
        if netns is not None:
            check_netns(netns)
        self.netns = netns
        name = detect_firewall(netns) if firewall == "auto" else firewall
        backend = registry.get(name)(netns=netns)
        if not isinstance(backend, PacketFilter):
            raise ValidationError("firewall", firewall, "a packet-filter backend or 'auto'")
        backend.available()  # BackendUnavailable saying what to install, before any work
        self.firewall: PacketFilter = backend
        self.ipvs: Optional[Ipvs] = Ipvs(netns=netns, ipvsadm=ipvsadm) if ipvs else None
        self.state_file = state_file or state.state_path(netns)
        self.lock_path = lock_path(netns, lock_dir)
        self.lock_timeout = lock_timeout
        #: Called with each step name (see :data:`STEPS`) before it runs: a fault-injection
        #: seam for tests. Raising from it behaves like the step failing.
        self.step_hook: Optional[Callable[[str], None]] = None
        #: Expansions of the bundles of the last apply (see :func:`lvsfw.rules.specify`).
        self._memo: Memo = {}
        self._normalizer = Normalizer()

    # -- reading ---------------------------------------------------------------------------

    def _live_services(
        self, owned: Iterable[ServiceKey], spec: Optional[Specification] = None
    ) -> frozenset[FwmarkService]:
        """The live IPVS services of ``owned``; with ``spec``, refuse foreign conflicts."""
        keys = set(owned)
        if self.ipvs is None or not (keys or (spec is not None and spec.services)):
            return frozenset()  # nothing of lvsfw's in IPVS, nothing to add: IPVS is not read
        dump = self.ipvs.read_dump()
        if spec is not None:
            self.ipvs.plan(spec, keys, live=dump)  # ConflictError on a foreign service
        return frozenset(s for s in dump.services if (s.family, s.mark) in keys)

    def _load(self) -> state.State:
        """The state file, with the packet filter told which objects it records as lvsfw's
        (before the filter reads anything: a name alone never makes an object lvsfw's)."""
        current = state.load(self.state_file)
        self.firewall.owned = current.objects
        return current

    def _others(self, current: state.State) -> list[PacketFilter]:
        """The packet filters besides this one that ``current`` says may hold lvsfw's rules:
        the one it used before a switch, and each one a killed apply may have written."""
        found = []
        for name in sorted(current.filters - {self.firewall.name}):
            other = registry.get(name)(netns=self.netns)
            if isinstance(other, PacketFilter):
                other.owned = current.objects
                found.append(other)
        return found

    def _observe(self, fast: bool = False) -> Any:
        """The packet filter's live state read once (None: the backend reads per call)."""
        firewall = self.firewall
        return firewall.observe(fast) if isinstance(firewall, Transactional) else None

    def snapshots(self) -> dict[str, Specification]:
        """What lvsfw's rules are live, per packet filter: this one, then every other one the
        state file names (a killed apply or a switch may have left rules there)."""
        current = self._load()
        found = {self.firewall.name: self.firewall.snapshot()}
        for other in self._others(current):
            found[other.name] = other.snapshot()
        return found

    def _plan(self, spec: Specification, current: state.State, live: Any = None) -> Plan:
        """The plan from the live kernel to ``spec``; ``live``: the packet filter's state as
        :meth:`_observe` read it (None: the backend is asked directly)."""
        live_services = self._live_services(current.services, spec)
        want_services = spec.services if self.ipvs is not None else frozenset()
        firewall = self.firewall
        if not spec.rules:
            findings: list[Finding] = []
        elif live is not None and isinstance(firewall, Transactional):
            findings = firewall.table_findings(spec, live)
        else:
            findings = firewall.findings(spec)
        repair = tuple(f.detail for f in findings if not f.detail.startswith("foreign"))
        return Plan.between(
            firewall.name,
            live.rules if live is not None else firewall.read(),
            spec.normalized,
            live_services,
            want_services,
            repair=repair,
        )

    def plan(self, bundles: Iterable[Bundle]) -> Plan:
        """What :meth:`apply` would add, change and remove now; writes nothing."""
        current = self._load()
        return self._plan(specify(bundles), current, self._observe())

    def verify(self, bundles: Iterable[Bundle]) -> Report:
        """Read the live kernel back (fully, never from a cache) and report every drift."""
        bundles = list(bundles)
        spec = specify(bundles, memo=self._memo)
        spec.normalize_with(self._normalizer)
        current = self._load()
        firewall = self.firewall
        if isinstance(firewall, Transactional):
            live, findings = firewall.inspect(spec)
            rules = live.rules
        else:
            rules, findings = firewall.read(), firewall.findings(spec)
        drift = rule_drift(spec, rules)
        drift += finding_drift(findings, bundles)
        drift += self._leftovers(current)
        if self.ipvs is not None:
            owned = current.services
            keys = owned | {(s.family, s.mark) for s in spec.services}
            drift += service_drift(bundles, spec, self._live_services(keys), owned)
        return Report(tuple(drift))

    def _leftovers(self, current: state.State) -> list[Drift]:
        """lvsfw's rules still live in another packet filter the state file names."""
        drift = []
        for other in self._others(current):
            left = other.read()
            if left:
                drift.append(
                    Drift(
                        "extra",
                        "-",
                        f"{other.name} still holds {len(left)} of lvsfw's mark rules (left by"
                        f" an interrupted apply or a switch to {self.firewall.name}); apply or"
                        " destroy removes them",
                    )
                )
        return drift

    # -- writing ---------------------------------------------------------------------------

    def _step(self, name: str) -> None:
        if self.step_hook is not None:
            self.step_hook(name)

    def apply(self, bundles: Iterable[Bundle]) -> Plan:
        """Make the live marks and IPVS services equal ``bundles``; return what was done.

        Checked first (conflicts, foreign IPVS services, then the kernel's own dry run of the
        packet filter), all under the per-namespace lock. IPVS services are added (or changed)
        before the marks that feed them and removed after the marks are gone; a failure at any
        step undoes the steps already done, so the kernel and the state file are left as they
        were, and re-raises. With nothing to change, nothing is written.
        """
        spec = specify(bundles, memo=self._memo)
        spec.normalize_with(self._normalizer)
        with locked(self.lock_path, self.lock_timeout):
            saved = state.read_text(self.state_file)
            current = self._load()
            live = self._observe(fast=True)
            plan = self._plan(spec, current, live)
            stale = [other for other in self._others(current) if other.read()]
            if not plan and not stale:
                settled = state.State(
                    current.services if self.ipvs is None else self._wanted(spec),
                    self.firewall.name,
                    firewalls=frozenset({self.firewall.name}),
                    objects=self.firewall.objects(live),
                )
                if settled != current:
                    state.save(self.state_file, settled)
                return plan
            change = None
            if plan.rules_changed:
                plan, change = self._check(spec, current, plan, live)
            self._transact(spec, plan, current, stale, saved, change=change)
        return plan

    def _check(
        self, spec: Specification, current: state.State, plan: Plan, live: Any
    ) -> tuple[Plan, Any]:
        """Have the kernel validate the packet-filter write; returns the plan and the change.

        A transactional backend dry-runs exactly the delta it will commit. If that fails on a
        state taken from its own last commit, the table is read in full and planned again
        before the failure counts. The dry run is skipped when it proves nothing: the state
        was read in full and no IPVS write comes before the marks (the commit is atomic, so
        a rejected one changes nothing, as a rejected dry run would).
        """
        firewall = self.firewall
        if not isinstance(firewall, Transactional):
            firewall.check(spec)
            return plan, None
        change = firewall.transaction(spec, live)
        ipvs_first = self.ipvs is not None and bool(plan.add_services or plan.change_services)
        if change is None or not (ipvs_first or getattr(live, "cached", True)):
            return plan, change
        try:
            firewall.dry_run(change)
        except LvsfwError:
            full = firewall.observe(False)
            if full == live:
                raise
            plan = self._plan(spec, current, full)
            change = firewall.transaction(spec, full)
            if change is not None:
                firewall.dry_run(change)
        return plan, change

    @staticmethod
    def _wanted(spec: Specification) -> frozenset[ServiceKey]:
        return frozenset((s.family, s.mark) for s in spec.services)

    @staticmethod
    def _write_marks(firewall: PacketFilter, spec: Specification) -> None:
        """Load ``spec`` into ``firewall``; an empty ``spec`` removes its own objects."""
        if spec.rules:
            firewall.apply(spec)
        else:
            firewall.remove()

    def _transact(
        self,
        spec: Specification,
        plan: Plan,
        current: state.State,
        stale: Sequence[PacketFilter],
        saved: Optional[str],
        *,
        change: Any = None,
    ) -> None:
        """Run the steps of :data:`STEPS`; on any failure undo them and restore the state file.

        Before the first kernel write the state file records ``pending`` ownership of every
        IPVS service this apply may create, every packet filter it may write (this one and
        the ones it empties) and every object the change may create, so a process killed at
        any point leaves a state from which the next apply converges and :meth:`destroy`,
        ``show`` and :meth:`verify` see everything.
        """
        owned = current.services | (self._wanted(spec) if self.ipvs else frozenset())
        firewall = self.firewall
        creates = firewall.creates(change) if change is not None else frozenset()
        pending = state.State(
            owned,
            current.firewall,
            pending=True,
            firewalls=current.filters | {firewall.name},
            objects=current.objects | creates,
        )
        state.save(self.state_file, pending)
        # the undo of the marks: the change's own inverse, or else a snapshot to reload
        plain = not isinstance(firewall, Transactional)
        before = firewall.snapshot() if plan.rules_changed and plain else None
        stale_before = [(other, other.snapshot()) for other in stale]
        stale_done: list[tuple[PacketFilter, Specification]] = []
        added: list[list[str]] = []  # ipvsadm argv lists undoing "ipvs-add", in order
        removed: list[list[str]] = []  # and "ipvs-remove"
        marks_done = False
        try:
            self._step("ipvs-add")
            if self.ipvs is not None and (plan.add_services or plan.change_services):
                added = self.ipvs.apply(spec.services | plan.remove_services, owned)
            self._step("marks")
            if change is not None and isinstance(firewall, Transactional):
                marks_done = True
                firewall.commit(change)
            elif plan.rules_changed and not isinstance(firewall, Transactional):
                marks_done = True
                self._write_marks(firewall, spec)
            for other, before_other in stale_before:
                stale_done.append((other, before_other))
                other.remove()
            self._step("ipvs-remove")
            if self.ipvs is not None and plan.remove_services:
                removed = self.ipvs.apply(spec, owned)
            self._step("commit")
            committed = state.State(
                self._wanted(spec) if self.ipvs is not None else current.services,
                firewall.name,
                firewalls=frozenset({firewall.name}),
                objects=firewall.objects(None),
            )
            state.save(self.state_file, committed)
        except BaseException as exc:
            undo_marks: Optional[Callable[[], None]] = None
            if marks_done and change is not None and isinstance(firewall, Transactional):
                undo_marks = lambda: firewall.commit(change, undo=True)  # noqa: E731
            elif marks_done and before is not None:
                undo_marks = lambda: self._write_marks(firewall, before)  # noqa: E731
            undone = self._rollback(exc, undo_marks, stale_done, (removed, added))
            if undone:
                state.restore(self.state_file, saved)
            else:  # keep the pending ownership: the next apply or destroy cleans up
                add_note(exc, f"lvsfw: {self.state_file} keeps pending ownership for cleanup")
            raise

    def _rollback(
        self,
        exc: BaseException,
        undo_marks: Optional[Callable[[], None]],
        stale: Sequence[tuple[PacketFilter, Specification]],
        undo: tuple[list[list[str]], list[list[str]]],
    ) -> bool:
        """Undo in reverse order: services removed, the old filters, marks, services added.

        Every undo step runs even if an earlier one fails; failures become notes on ``exc``.
        Returns whether every step succeeded.
        """
        removed, added = undo
        ipvs = self.ipvs
        steps: list[Callable[[], None]] = []
        if ipvs is not None and removed:
            steps.append(lambda: ipvs.undo(removed))
        steps += [functools.partial(self._write_marks, f, before) for f, before in reversed(stale)]
        if undo_marks is not None:
            steps.append(undo_marks)
        if ipvs is not None and added:
            steps.append(lambda: ipvs.undo(added))
        undone = True
        for step in steps:
            try:
                step()
            except LvsfwError as failure:
                undone = False
                add_note(exc, f"lvsfw: undo failed too: {failure}")
        return undone

    def destroy(self) -> Plan:
        """Remove every mark rule and owned IPVS service lvsfw holds, and nothing else."""
        with locked(self.lock_path, self.lock_timeout):
            current = self._load()
            empty = specify([])
            plan = self._plan(empty, current)
            self.firewall.remove()
            for other in self._others(current):  # every filter an apply may have written
                other.remove()
            if self.ipvs is not None and current.services:
                self.ipvs.remove(current.services)
            # without IPVS, its owned services stay recorded: they are still lvsfw's to remove
            kept = current.services if self.ipvs is None else frozenset()
            state.save(self.state_file, state.State(kept, self.firewall.name))
        return plan

    # -- boot persistence ----------------------------------------------------------------

    def save(self, bundles: Iterable[Bundle], directory: str) -> list[str]:
        """Write what a boot script restores for ``bundles`` into ``directory``.

        The packet filter's file(s) (``nft -f`` script or ``iptables-restore --noflush``
        input per family) and ``lvsfw.ipvs`` (``ipvsadm-restore`` input). Returns the paths.
        """
        spec = specify(bundles)
        files = dict(self.firewall.boot_files(spec))
        if self.ipvs is not None:
            files["lvsfw.ipvs"] = self.ipvs.render_spec(spec)
        paths = []
        for name, text in sorted(files.items()):
            path = os.path.join(directory, name)
            write_atomic(path, text)  # never through a link planted at a guessable name
            paths.append(path)
        return paths
