"""Real packets through real kernels: every backend marks exactly the bundled VIP:ports.

One lab per backend (``tests.netlab.Lab``: client and director namespaces, deleted afterwards),
built lazily by the module-scoped ``runs`` fixture so the tests of one backend share it in any
order. Each run: foreign rules (an nft table, mangle rules of every usable iptables flavour),
a snapshot of the whole filter state, a baseline probe round (everything unmarked), ``apply``,
and a probe round of TCP SYNs, UDP datagrams and SCTP INITs to every VIP (and a non-VIP) on every
bundled port, both ends and the middle of ranges, the neighbours of each, and outside ports.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Optional

import pytest

from lvsfw import Bundle, registry, specify
from lvsfw.backends.base import PacketFilter
from lvsfw.enums import Family, Protocol
from lvsfw.errors import BackendUnavailable
from lvsfw.rules import Specification, classify, normalize
from tests.netlab import (
    OWN,
    Lab,
    LabError,
    Observation,
    Probe,
    ensure_kernel,
    require_kernel,
    state_diff,
    xtables_tools,
)

pytestmark = pytest.mark.kernel

BACKENDS = ("nftables", "iptables-nft", "iptables-legacy")
TOOLS = {
    "nftables": (),
    "iptables-nft": xtables_tools("nft"),
    "iptables-legacy": xtables_tools("legacy"),
}

BUNDLES = [
    # dual stack, two v4 VIPs: HTTP and HTTPS of one client land on one real server
    Bundle("web", ["192.0.2.10", "192.0.2.11", "2001:db8::10"], "tcp:80,443", 80, persistence=300),
    # IPv4 only: FTP control port and the passive range under one mark
    Bundle("ftp", "192.0.2.21", "tcp:21,10000-20000", 21, persistence=600),
    # IPv6 only, with a masked mark (sets bits 8..15 only; the packet starts at 0)
    Bundle("ftp6", "2001:db8::21", "tcp:21,10000-20000", "0x2100/0xff00", persistence=600),
    # dual stack, TCP and UDP on one port
    Bundle("dns", ["192.0.2.53", "2001:db8::53"], "tcp:53 udp:53", 53),
    # SCTP (probed with hand-built INIT chunks on a raw socket)
    Bundle("diameter", ["192.0.2.38", "2001:db8::38"], "sctp:3868", 38),
]
SPEC = specify(BUNDLES)
NON_VIPS = ("192.0.2.99", "2001:db8::99")  # routed to the director, bundled nowhere
OUTSIDE_PORTS = (1, 22, 54, 81, 442, 8080, 9999, 20001, 65535)


def _ports() -> list[int]:
    ports = set(OUTSIDE_PORTS)
    for bundle in BUNDLES:
        for r in bundle.ports:
            middle = (r.first_port + r.last_port) // 2
            ports |= {r.first_port - 1, r.first_port, middle, r.last_port, r.last_port + 1}
    return sorted(p for p in ports if 1 <= p <= 65535)


VIPS = sorted({str(v) for b in BUNDLES for v in b.vips})
PROBES = sorted(
    Probe(ipaddress.ip_address(address).version, protocol.value, address, port)
    for address in (*VIPS, *NON_VIPS)
    for protocol in Protocol
    for port in _ports()
)


def expected_mark(probe: Probe) -> int:
    """The mark the specification gives ``probe``'s packet (which starts unmarked)."""
    address = ipaddress.ip_address(probe.address)
    found = classify(SPEC.rules, Family.of(address), address, Protocol(probe.protocol), probe.port)
    if found is None:
        return 0
    mark, mask = found
    return (0 & ~mask) | mark


EXPECTED = {p: expected_mark(p) for p in PROBES}


def mismatches(observed: Observation, expected: Mapping[Probe, int]) -> list[str]:
    """One line per probe not seen with exactly its expected mark."""
    problems = []
    for probe, want in sorted(expected.items()):
        seen = observed.get(probe)
        if not seen:
            problems.append(f"{probe}: never reached the director's prerouting hook")
        elif seen != {want}:
            got = ", ".join(hex(m) for m in sorted(seen))
            problems.append(f"{probe}: expected mark {want:#x}, packet carried {got}")
    return problems


def report(problems: list[str], limit: int = 40) -> str:
    """Problems as text, the first ``limit`` of them."""
    more = len(problems) - limit
    return "\n".join(problems[:limit] + ([f"... and {more} more"] if more > 0 else []))


@dataclass
class Run:
    """One backend in its own lab: state before apply, and what the probes carried."""

    name: str
    lab: Lab
    spec: Specification
    before: dict[str, str]
    applied_state: dict[str, str]
    applied_foreign: dict[str, str]
    baseline: Observation
    observed: Observation
    applied: bool = True

    def backend(self) -> PacketFilter:
        """A fresh backend instance bound to the director namespace."""
        backend = registry.get(self.name)(netns=self.lab.director)
        assert isinstance(backend, PacketFilter)
        return backend

    def ensure_applied(self) -> None:
        """Re-apply if an earlier test removed the rules (tests may run in any order)."""
        if not self.applied:
            self.backend().apply(self.spec)
            self.applied = True


class Runs:
    """Labs built on first use per backend; closed by the fixture's finalizer."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._errors: dict[str, BaseException] = {}
        self._labs: list[Lab] = []

    def get(self, name: str) -> Run:
        if name in self._errors:
            raise self._errors[name]
        if name not in self._runs:
            try:
                self._runs[name] = self._start(name)
            except BaseException as exc:  # skip/fail outcomes too: re-raised for later tests
                self._errors[name] = exc
                raise
        return self._runs[name]

    def _start(self, name: str) -> Run:
        ensure_kernel(TOOLS[name])
        cls = registry.get(name)  # an import error is a bug, not a missing kernel feature
        try:
            cls.available()
        except BackendUnavailable as exc:
            require_kernel(f"backend {name}: {exc}")
        lab = Lab(vips=VIPS)
        self._labs.append(lab)
        try:
            lab.__enter__()
        except (PermissionError, LabError) as exc:
            require_kernel(f"cannot build the network lab: {exc}")
        if name.startswith("iptables-") and name.split("-", 1)[1] not in lab.xtables_flavours():
            require_kernel(f"{name}: the kernel refuses this iptables flavour's mangle table")
        lab.install_foreign_rules()
        before = lab.state()
        baseline = lab.probe(PROBES)
        backend = registry.get(name)(netns=lab.director)
        assert isinstance(backend, PacketFilter)
        backend.apply(SPEC)
        observed = lab.probe(PROBES)
        return Run(name, lab, SPEC, before, lab.state(), lab.state(OWN), baseline, observed)

    def close(self) -> None:
        while self._labs:
            self._labs.pop().close()


@pytest.fixture(scope="module")
def runs() -> Iterator[Runs]:
    """The per-backend labs of this module; every namespace is deleted at the end."""
    all_runs = Runs()
    try:
        yield all_runs
    finally:
        all_runs.close()


backends = pytest.mark.parametrize("name", BACKENDS)


def test_probe_set_covers_marked_and_unmarked() -> None:
    """Self-check of the oracle: every bundle's mark is expected somewhere, and 0 often."""
    marks = set(EXPECTED.values())
    assert marks == {0, 80, 21, 0x2100, 53, 38}
    assert sum(1 for m in EXPECTED.values() if m == 0) > len(PROBES) // 2


@backends
def test_lab_sees_every_probe_unmarked_before_apply(runs: Runs, name: str) -> None:
    """Lab sanity: foreign rules in place, every probe reaches the director with mark 0."""
    run = runs.get(name)
    problems = mismatches(run.baseline, dict.fromkeys(PROBES, 0))
    assert not problems, report(problems)


@backends
def test_bundled_ports_carry_their_bundles_mark(runs: Runs, name: str) -> None:
    run = runs.get(name)
    wanted = {p: m for p, m in EXPECTED.items() if m}
    problems = mismatches(run.observed, wanted)
    assert not problems, f"{len(problems)} of {len(wanted)} bundled probes:\n{report(problems)}"


@backends
def test_other_ports_carry_no_mark(runs: Runs, name: str) -> None:
    run = runs.get(name)
    wanted = {p: m for p, m in EXPECTED.items() if not m}
    problems = mismatches(run.observed, wanted)
    assert not problems, f"{len(problems)} of {len(wanted)} other probes:\n{report(problems)}"


@backends
def test_apply_adds_own_state_and_leaves_foreign_state_alone(runs: Runs, name: str) -> None:
    """While applied, the state minus lvsfw's table/chain/jump equals the pre-apply state."""
    run = runs.get(name)
    assert run.applied_foreign == run.before, state_diff(run.before, run.applied_foreign)
    assert run.applied_state != run.before, f"{name}: apply() left no trace in the snapshots"


@backends
def test_read_back_equals_specification(runs: Runs, name: str) -> None:
    run = runs.get(name)
    run.ensure_applied()
    assert normalize(run.backend().read()) == normalize(run.spec.rules)


_HANDLE = re.compile(r" # handle \d+")


def _without_handles(state: dict[str, str]) -> dict[str, str]:
    return {k: _HANDLE.sub("", v) for k, v in state.items()}


@backends
def test_check_and_reapply_change_nothing(runs: Runs, name: str) -> None:
    """check() writes nothing; apply() of the live spec writes nothing (same rule handles)."""
    run = runs.get(name)
    run.ensure_applied()
    live = run.lab.state()
    run.backend().validate(run.spec)
    assert run.lab.state() == live, state_diff(live, run.lab.state())
    run.backend().apply(run.spec)
    again = run.lab.state()
    assert _without_handles(again) == _without_handles(live), state_diff(live, again)
    assert again == live, "apply() rewrote identical rules (nft handles changed):\n" + state_diff(
        live, again
    )


@backends
def test_remove_restores_foreign_state_exactly(runs: Runs, name: str) -> None:
    """After remove() the state equals the pre-apply snapshot: foreign intact, own gone."""
    run = runs.get(name)
    run.ensure_applied()
    run.backend().remove()
    run.applied = False
    after = run.lab.state()
    assert after == run.before, "state after remove() differs:\n" + state_diff(run.before, after)
    run.backend().remove()  # removing what is not there is a no-op
    assert run.lab.state() == run.before, "a second remove() changed state"
    assert run.backend().read() == frozenset()
    problems = mismatches(run.lab.probe(PROBES), dict.fromkeys(PROBES, 0))
    assert not problems, "marks left after remove():\n" + report(problems)


def test_backends_classify_identically(runs: Runs) -> None:
    """The three backends give every probe the same mark, as seen on the wire."""
    observed: dict[str, Observation] = {}
    reason: Optional[str] = None
    for name in BACKENDS:
        try:
            observed[name] = runs.get(name).observed
        except pytest.skip.Exception as exc:
            reason = f"{name}: {exc.msg}"
    if len(observed) < 2:
        require_kernel(f"fewer than two backends usable ({reason})")
    reference_name, reference = next(iter(observed.items()))
    for name, marks in observed.items():
        differ = [
            f"{p}: {reference_name} {sorted(map(hex, reference.get(p, ())))},"
            f" {name} {sorted(map(hex, marks.get(p, ())))}"
            for p in PROBES
            if marks.get(p) != reference.get(p)
        ]
        assert not differ, f"{reference_name} and {name} disagree:\n" + report(differ)
    if reason is not None:
        require_kernel(f"compared only {', '.join(observed)}; {reason}")
