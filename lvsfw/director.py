"""The Director: plan, apply, verify and destroy both halves on a live LVS director.

It drives two backends through one contract (:mod:`lvsfw.backends.base`): a packet filter
(``observe``/``diff``/``check``/``commit``, the change's ``inverse`` as its undo) and a service
half (the same verbs; ``ipvsadm``, or nothing for a marks-only Director).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Callable, Optional, Union

import attrs

from lvsfw import registry, state
from lvsfw.backends.base import Change, Live, PacketFilter, ServiceHalf, ServiceLive
from lvsfw.backends.ipvs import Ipvs
from lvsfw.backends.noservices import NoServices
from lvsfw.detect import detect_firewall
from lvsfw.drift import (
    Down,
    Drift,
    Report,
    finding_drift,
    health_drift,
    rule_drift,
    service_drift,
)
from lvsfw.errors import ConflictError, LvsfwError, add_note
from lvsfw.files import write_atomic
from lvsfw.lock import LOCK_DIR, lock_path, locked
from lvsfw.model import Bundle
from lvsfw.netns import check_netns
from lvsfw.plan import Plan
from lvsfw.rules import Memo, Normalizer, Specification, specify
from lvsfw.undo import UndoStack

#: The steps of an apply, in order; a test hook is called with each name before it runs.
#: ``commit`` comes last, just before the state file records the new ownership.
STEPS = ("ipvs-add", "marks", "ipvs-remove", "commit")
ServiceKey = state.ServiceKey
#: The service half's changes: (before the marks, after the marks).
Halves = tuple[Optional[Change], Optional[Change]]
#: The plan's word for a change with no rule difference.
REWRITE = "lvsfw's own objects differ from the bundles' (renamed bundles, leftovers): rewrite"


def _describe(holder: str) -> str:
    """A holder as the admin reads it: ``ipvsadm``, ``keepalived (/etc/keepalived/x.conf)``."""
    name, _, argument = holder.partition(":")
    name = "ipvsadm" if name == "ipvs" else name
    return f"{name} ({argument})" if argument else name


def _keys(spec: Specification) -> frozenset[ServiceKey]:
    return frozenset((s.family, s.mark) for s in spec.services)


class Director:
    """Keeps a director's marks and IPVS services equal to a list of bundles.

    ``firewall``: a packet-filter backend or its name (``nftables``, ``iptables-nft``,
    ``iptables-legacy``), or ``"auto"`` (the one this host already uses for mangle). ``ipvs``:
    the service half — a backend, ``"ipvsadm"`` or True (IPVS through ipvsadm), None or False
    (marks only). ``netns``: the network namespace to work in (None: the current one);
    ``state_file``: where ownership is recorded (default: one per namespace under
    /var/lib/lvsfw); ``lock_timeout``: how long an apply waits for another one (seconds).
    """

    def __init__(
        self,
        firewall: Union[str, PacketFilter] = "nftables",
        ipvs: Union[bool, str, ServiceHalf, None] = True,
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
        if isinstance(firewall, str):
            name = detect_firewall(netns) if firewall == "auto" else firewall
            firewall = registry.packet_filter(name, netns)
        firewall.available()  # BackendUnavailable saying what to install, before any work
        self.firewall: PacketFilter = firewall
        if ipvs is True or ipvs == "ipvsadm":
            ipvs = Ipvs(netns=netns, ipvsadm=ipvsadm)
        elif ipvs is None or ipvs is False or ipvs == "none":
            ipvs = NoServices(netns=netns)
        elif isinstance(ipvs, str):
            ipvs = registry.service_half(ipvs, netns)
        #: The service half (:class:`NoServices` when marks only).
        self.services: ServiceHalf = ipvs
        #: The service half when it manages IPVS, else None.
        self.ipvs: Optional[ServiceHalf] = ipvs if ipvs.manages else None
        self.state_file = state_file or state.state_path(netns)
        self._ipvsadm = ipvsadm
        self.lock_path = lock_path(netns, lock_dir)
        self.lock_timeout = lock_timeout
        #: Called with each step name (see :data:`STEPS`) before it runs: a fault-injection
        #: seam for tests. Raising from it behaves like the step failing.
        self.step_hook: Optional[Callable[[str], None]] = None
        self._memo: Memo = {}  # expansions of the last apply's bundles (lvsfw.rules.specify)
        self._normalizer = Normalizer()

    # -- reading ---------------------------------------------------------------------------

    def _load(self) -> state.State:
        """The state file, the packet filter told which objects it records as lvsfw's."""
        current = state.load(self.state_file)
        self.firewall.owned = current.objects
        return current

    def _others(self, current: state.State) -> list[PacketFilter]:
        """The packet filters besides this one that ``current`` says may hold lvsfw's rules:
        the one used before a switch, each one a killed apply may have written."""
        found = []
        for name in sorted(current.filters - {self.firewall.name}):
            other = registry.packet_filter(name, self.netns)
            other.owned = current.objects
            found.append(other)
        return found

    def _wanted(self, spec: Specification) -> frozenset[ServiceKey]:
        return _keys(spec) if self.services.manages else frozenset()

    def _holding(self, current: state.State) -> ServiceHalf:
        """The service half holding the services ``current`` records: this Director's, or
        the other one the state file names (ipvsadm, keepalived with another file)."""
        recorded = current.ipvs
        if not self.services.manages or not current.services or recorded is None:
            return self.services
        if recorded == self.services.holder:
            return self.services
        name, _, argument = recorded.partition(":")
        return registry.service_half_class(name).holding(argument, self.netns, self._ipvsadm)

    def _other_holder(self, current: state.State) -> Optional[str]:
        """Why this Director must not touch the services ``current`` records (another half
        made them), or None."""
        half = self._holding(current)
        if half is self.services:
            return None
        keys = ", ".join(f"fwmark {mark} ({family})" for family, mark in sorted(current.services))
        return (
            f"{self.state_file} records IPVS services made by {_describe(half.holder)}"
            f" ({keys}), and this director runs {_describe(self.services.holder)}; lvsfw"
            f" never hands services from one to the other: run 'lvsfw destroy' first (it"
            f" removes lvsfw's marks and those services through {half.name}), then apply"
        )

    def _plan(
        self,
        spec: Specification,
        current: state.State,
        live: Live,
        services: ServiceLive,
        half: Optional[ServiceHalf] = None,
    ) -> tuple[Plan, Halves]:
        """The plan from the live halves to ``spec``, and the service half's changes (before
        and after the marks); a foreign service in the way raises before anything.
        ``half``: the service half to plan with (default: this Director's)."""
        half = half or self.services
        halves = half.diff(spec, services, current.services)
        owned = current.services
        findings = self.firewall.findings(spec, live) if spec.rules else []
        repair = tuple(f.detail for f in findings if not f.detail.startswith("foreign"))
        create = not live.rules and self.firewall.name not in current.filters
        held = frozenset(s for s in services.services if (s.family, s.mark) in owned)
        wanted = spec.services if half.manages else frozenset()
        config: tuple[str, ...] = ()  # the half's own objects, no service change (VRRP)
        if halves != (None, None) and held == wanted:
            config = tuple(half.findings(spec, services))
        plan = Plan.between(
            self.firewall.name,
            live.rules,
            spec.normalized,
            held,
            wanted,
            repair=repair + config,
            create=create,
        )
        return plan, halves

    def _observe(
        self,
        spec: Specification,
        current: state.State,
        fast: bool,
        half: Optional[ServiceHalf] = None,
    ) -> tuple[Live, ServiceLive]:
        keys = current.services | self._wanted(spec)
        return self.firewall.observe(fast), (half or self.services).observe(keys)

    def _load_own(self) -> state.State:
        """:meth:`_load`, refusing (:class:`ConflictError`) a state whose services another
        service half made: apply and plan never take them over."""
        current = self._load()
        other = self._other_holder(current)
        if other is not None:
            raise ConflictError(other, "ipvs")
        return current

    def plan(self, bundles: Iterable[Bundle]) -> Plan:
        """What :meth:`apply` would add, change and remove now; writes nothing (read as apply
        reads: from lvsfw's own last commit while the kernel's generation says it stands)."""
        spec = specify(bundles)
        current = self._load_own()
        live, services = self._observe(spec, current, fast=True)
        plan, (adds, removes) = self._plan(spec, current, live, services)
        plan, marks = self._marks(spec, live, plan)
        sent = zip((self.services, self.firewall, self.services), (adds, marks, removes))
        scripts = tuple((half.name, str(change)) for half, change in sent if change is not None)
        return attrs.evolve(plan, scripts=scripts)

    def verify(self, bundles: Iterable[Bundle]) -> Report:
        """Read the live kernel back (fully, never from a cache) and report every drift."""
        bundles = list(bundles)
        spec = specify(bundles, memo=self._memo)
        spec.normalize_with(self._normalizer)
        current = self._load()
        live, services = self._observe(spec, current, fast=False)
        drift = rule_drift(spec, live.rules)
        drift += finding_drift(self.firewall.findings(spec, live, thorough=True), bundles)
        drift += self._leftovers(current)
        down: list[Down] = []
        other = self._other_holder(current)
        if other is not None:
            drift.append(Drift("service-extra", "-", other))
        elif self.services.manages:
            keys = current.services | _keys(spec)
            table = self.services.table(services)
            found = frozenset(s for s in table if (s.family, s.mark) in keys)
            if self.services.health_checked:
                more, down = health_drift(bundles, spec, found, current.services)
                drift += more
            else:
                drift += service_drift(bundles, spec, found, current.services)
            config = self.services.findings(spec, services)
            drift += [Drift("service-changed", "-", detail) for detail in config]
        return Report(tuple(drift), tuple(down))

    def _leftovers(self, current: state.State) -> list[Drift]:
        """lvsfw's rules still live in another packet filter the state file names."""
        drift = []
        for other in self._others(current):
            left = other.read()
            if left:
                detail = (
                    f"{other.name} still holds {len(left)} of lvsfw's mark rules (left by an"
                    f" interrupted apply or a switch to {self.firewall.name}); apply or destroy"
                    " removes them"
                )
                drift.append(Drift("extra", "-", detail))
        return drift

    def snapshots(self) -> dict[str, Specification]:
        """lvsfw's live rules per packet filter: this one, then every other one the state
        file names (a killed apply or a switch may have left rules there)."""
        current = self._load()
        found = {self.firewall.name: self.firewall.snapshot()}
        found.update((other.name, other.snapshot()) for other in self._others(current))
        return found

    # -- writing ---------------------------------------------------------------------------

    def _step(self, name: str) -> None:
        if self.step_hook is not None:
            self.step_hook(name)

    def apply(self, bundles: Iterable[Bundle]) -> Plan:
        """Make the live marks and IPVS services equal ``bundles``; return what was done.

        Checked first (conflicts, foreign IPVS services, then the kernel's own dry run of the
        packet filter), all under the per-namespace lock. IPVS services are added (or changed)
        before the marks that feed them and removed after the marks are gone; a failure at any
        step commits the inverses of the steps done, so the kernel and the state file are
        left as they were, and re-raises. With nothing to change, nothing is written.
        """
        spec = specify(bundles, memo=self._memo)
        spec.normalize_with(self._normalizer)
        with locked(self.lock_path, self.lock_timeout):
            saved = state.read_text(self.state_file)
            current = self._load_own()
            live, services = self._observe(spec, current, fast=True)
            plan, halves = self._plan(spec, current, live, services)
            stale = [f for f in self._others(current) if f.read() or f.objects()]
            plan, change = self._marks(spec, live, plan)
            if not plan and not stale and halves == (None, None):
                self._settle(spec, current, live)
                return plan
            for half in halves:  # the service half's own test (keepalived --config-test)
                if half is not None:
                    self.services.check(half)
            if change is not None and (halves[0] or not self.firewall.atomic or
                                       self.firewall.cached(live)):  # fmt: skip
                plan, change = self._check(spec, current, plan, (live, services), change)
            self._transact(spec, current, saved, (halves[0], change, halves[1]), stale)
        return plan

    def _marks(self, spec: Specification, live: Live, plan: Plan) -> tuple[Plan, Optional[Change]]:
        """The packet filter's change, and the plan saying so: a change with no rule to add
        or remove rewrites lvsfw's own objects (a renamed bundle's comments, a leftover)."""
        change = self.firewall.diff(spec, live)
        if change is not None and not plan.rules_changed:
            plan = attrs.evolve(plan, repair=(*plan.repair, REWRITE))
        return plan, change

    def _finished(
        self, spec: Specification, current: state.State, objects: frozenset[str]
    ) -> state.State:
        """The record a finished apply of ``spec`` leaves: the services it wants (marks only:
        the ones still recorded), this one packet filter and its ``objects``."""
        services = self._wanted(spec) if self.services.manages else current.services
        return state.State(services, self.firewall.name, firewalls=frozenset({self.firewall.name}),
                           objects=objects, ipvs=self._holder(current))  # fmt: skip

    def _holder(self, current: state.State) -> Optional[str]:
        """The holder an apply records: this half, or (marks only) the one recorded."""
        return self.services.holder if self.services.manages else current.ipvs

    def _settle(self, spec: Specification, current: state.State, live: Live) -> None:
        """After a no-op apply: the record as a finished apply leaves it (if it differs)."""
        settled = self._finished(spec, current, self.firewall.objects(live))
        if settled != current:
            state.save(self.state_file, settled)

    def _check(
        self,
        spec: Specification,
        current: state.State,
        plan: Plan,
        live: tuple[Live, ServiceLive],
        change: Change,
    ) -> tuple[Plan, Optional[Change]]:
        """The kernel's dry run of ``change``. If it fails on a state taken from lvsfw's own
        last commit, the filter is read in full and planned again before the failure counts.
        (Skipped by :meth:`apply` when it proves nothing: an atomic commit planned on a fresh
        read with no IPVS write before it, which a rejection leaves unchanged.)"""
        try:
            self.firewall.check(change)
        except LvsfwError:
            full = self.firewall.observe(False)
            if full == live[0]:
                raise
            plan, _ = self._plan(spec, current, full, live[1])
            plan, again = self._marks(spec, full, plan)
            if again is not None:
                self.firewall.check(again)
            return plan, again
        return plan, change

    def _transact(
        self,
        spec: Specification,
        current: state.State,
        saved: Optional[str],
        changes: tuple[Optional[Change], Optional[Change], Optional[Change]],
        stale: list[PacketFilter],
    ) -> None:
        """Run the steps of :data:`STEPS`, pushing each change's inverse on the undo stack;
        on any failure run the stack and restore the state file.

        Before the first kernel write the state file records ``pending`` ownership of every
        IPVS service this apply may create, every packet filter it may write and every object
        it may create, so a process killed at any point leaves a state from which the next
        apply converges and destroy, show and verify see everything.
        """
        adds, marks, removes = changes
        firewall = self.firewall
        pending = state.State(
            current.services | self._wanted(spec),
            current.firewall,
            pending=True,
            firewalls=current.filters | {firewall.name},
            objects=current.objects | (firewall.creates(marks) if marks else frozenset()),
            ipvs=self._holder(current),
        )
        state.save(self.state_file, pending)
        undo = UndoStack()
        try:
            self._step("ipvs-add")
            if adds is not None:
                undo.send(self.services.commit, adds, atomic=True)
            self._step("marks")
            if marks is not None:
                undo.send(firewall.commit, marks, atomic=firewall.atomic)
            for other in stale:  # emptied through the same verbs, its inverse as the undo
                gone = other.diff(specify([]), other.observe())
                if gone is not None:
                    undo.send(other.commit, gone, atomic=other.atomic)
                other.remove()  # and what an empty diff leaves (a mangle table lvsfw made)
            self._step("ipvs-remove")
            if removes is not None:
                undo.send(self.services.commit, removes, atomic=True)
            self._step("commit")
            state.save(self.state_file, self._finished(spec, current, firewall.objects(None)))
        except BaseException as exc:
            if undo.run(exc):
                state.restore(self.state_file, saved)
            else:  # keep the pending ownership: the next apply or destroy cleans up
                add_note(exc, f"lvsfw: {self.state_file} keeps pending ownership for cleanup")
            raise

    def destroy(self) -> Plan:
        """Remove every mark rule and owned IPVS service lvsfw holds, and nothing else."""
        with locked(self.lock_path, self.lock_timeout):
            current = self._load()
            empty = specify([])
            half = self._holding(current)  # the half that made them, even if not this one
            live, services = self._observe(empty, current, fast=False, half=half)
            plan, halves = self._plan(empty, current, live, services, half=half)
            self.firewall.remove()
            for other in self._others(current):  # every filter an apply may have written
                other.remove()
            for change in halves:
                if change is not None:
                    half.commit(change)
            self.services.notes += half.notes if half is not self.services else []
            # without IPVS, its owned services stay recorded: they are still lvsfw's to remove
            kept = frozenset() if self.services.manages else current.services
            holder = None if self.services.manages else current.ipvs
            state.save(self.state_file, state.State(kept, self.firewall.name, ipvs=holder))
        return plan

    # -- boot persistence ----------------------------------------------------------------

    def save(self, bundles: Iterable[Bundle], directory: str) -> list[str]:
        """Write what a boot script restores for ``bundles`` into ``directory``.

        The packet filter's file(s) (``nft -f`` script or ``iptables-restore --noflush``
        input per family) and the service half's (``lvsfw.ipvs``, ``ipvsadm-restore`` input;
        none for keepalived, which builds IPVS from its own file at boot). Returns the paths.
        """
        spec = specify(bundles)
        files = {**self.firewall.boot_files(spec), **self.services.boot_files(spec)}
        paths = []
        for name, text in sorted(files.items()):
            path = os.path.join(directory, name)
            write_atomic(path, text)  # never through a link planted at a guessable name
            paths.append(path)
        return paths
