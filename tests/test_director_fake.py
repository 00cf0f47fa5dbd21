"""The Director on the fake kernel (lvsfw.backends.fake): the fault matrix, in milliseconds.

For a first apply, a change (BUNDLES -> CHANGED), a filter switch (fake-a -> fake-b) and a
marks-only apply, a fault is injected (a) at every step of :data:`lvsfw.director.STEPS`
through ``step_hook`` and (b) at every write, ``fail_at = N`` for N = 1, 2, ... until the
apply gets through. After each failure the fake kernel (every filter's rules, the IPVS
table) and the raw state-file text must be exactly as before; after the success verify is
ok, and destroy leaves nothing of lvsfw's while foreign services stay.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import attrs
import pytest

from lvsfw import Bundle, CommandFailed, ConflictError, registry, specify, state
from lvsfw.backends.fake import FakeFilter, FakeKernel
from lvsfw.backends.fakeipvs import FakeServices
from lvsfw.director import STEPS, Director
from lvsfw.enums import Family
from lvsfw.model import VirtualService
from lvsfw.rules import FwmarkService
from tests.test_director import BUNDLES, CHANGED

#: A fwmark service lvsfw does not own, and one it cannot model: both must survive anything.
FOREIGN = FwmarkService(Family.IPV4, 999, VirtualService())
UNMODELLED = (Family.IPV6, 4242)


class Injected(Exception):
    """The fault a step hook raises."""


@attrs.frozen
class Scenario:
    """``before`` applied with filter ``first``, then ``after`` applied with ``second``."""

    before: Optional[Sequence[Bundle]]
    after: Sequence[Bundle]
    first: str = "fake-a"
    second: str = "fake-a"
    ipvs: bool = True
    atomic: bool = True  # False: the Director dry-runs every packet-filter change


SCENARIOS = {
    "first-apply": Scenario(None, BUNDLES),
    "change": Scenario(BUNDLES, CHANGED),
    "switch": Scenario(BUNDLES, BUNDLES, second="fake-b"),
    "switch-and-change": Scenario(BUNDLES, CHANGED, second="fake-b"),
    "marks-only": Scenario(BUNDLES, CHANGED, ipvs=False),
    "marks-only-first": Scenario(None, BUNDLES, ipvs=False),
    "change-not-atomic": Scenario(BUNDLES, CHANGED, atomic=False),
    "to-empty": Scenario(BUNDLES, []),
}


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKernel]:
    """A fake kernel holding foreign services; filter names ``fake*`` resolve to its filters
    wherever the Director looks a packet filter up by the name the state file records."""
    fake = FakeKernel(
        services={(FOREIGN.family, FOREIGN.mark): FOREIGN},
        foreign={UNMODELLED: "uses --pe sip"},
    )
    get, packet_filter = registry.get, getattr(registry, "packet_filter", None)

    def fake_get(name: str) -> Any:
        if name.startswith("fake"):
            return lambda netns=None: FakeFilter(fake, name=name, netns=netns)
        return get(name)

    def fake_packet_filter(name: str, netns: Optional[str] = None) -> Any:
        if name.startswith("fake"):
            return FakeFilter(fake, name=name, netns=netns)
        assert packet_filter is not None
        return packet_filter(name, netns)

    monkeypatch.setattr(registry, "get", fake_get)
    monkeypatch.setattr(registry, "packet_filter", fake_packet_filter, raising=False)
    yield fake


def director(
    kernel: FakeKernel, tmp: Path, name: str = "fake-a", ipvs: bool = True, atomic: bool = True
) -> Director:
    """A Director on ``kernel`` with filter ``name``, its state file and lock in ``tmp``."""
    return Director(
        firewall=FakeFilter(kernel, name=name, atomic=atomic),
        ipvs=FakeServices(kernel) if ipvs else None,
        state_file=str(tmp / "state.json"),
        lock_dir=str(tmp),
    )


def prepare(kernel: FakeKernel, tmp: Path, scenario: Scenario) -> Director:
    """The kernel and state file as ``scenario`` starts; the Director that is to apply."""
    if scenario.before is not None:
        director(kernel, tmp, scenario.first, scenario.ipvs).apply(scenario.before)
    return director(kernel, tmp, scenario.second, scenario.ipvs, scenario.atomic)


def snapshot(kernel: FakeKernel, tmp: Path) -> tuple[Any, Optional[str]]:
    """Everything an apply may change: the fake kernel and the raw state-file text."""
    return kernel.contents(), state.read_text(str(tmp / "state.json"))


def wanted(bundles: Sequence[Bundle]) -> dict[Any, FwmarkService]:
    """The IPVS table after applying ``bundles``: their services and the foreign one."""
    table = {(s.family, s.mark): s for s in specify(bundles).services}
    table[(FOREIGN.family, FOREIGN.mark)] = FOREIGN
    return table


def converged(kernel: FakeKernel, tmp: Path, d: Director, scenario: Scenario) -> None:
    """After a successful apply: verify is ok, the kernel holds exactly the scenario's end;
    then destroy leaves nothing of lvsfw's, and the foreign services as they were."""
    report = d.verify(scenario.after)
    assert report.ok, report
    spec = specify(scenario.after)
    rules = {scenario.second: spec.normalized} if spec.rules else {}
    assert {k: v for k, v in kernel.rules.items() if v} == rules
    if scenario.ipvs:
        assert kernel.services == wanted(scenario.after)
    assert kernel.foreign == {UNMODELLED: "uses --pe sip"}
    d.destroy()
    assert {k: v for k, v in kernel.rules.items() if v} == {}
    assert kernel.services == {(FOREIGN.family, FOREIGN.mark): FOREIGN}
    assert kernel.foreign == {UNMODELLED: "uses --pe sip"}


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("case", SCENARIOS)
def test_a_failing_step_changes_nothing(
    kernel: FakeKernel, tmp_path: Path, case: str, step: str
) -> None:
    """A fault at any step is undone: the kernel and the state file are exactly as before."""
    scenario = SCENARIOS[case]
    d = prepare(kernel, tmp_path, scenario)
    before = snapshot(kernel, tmp_path)
    seen: list[str] = []

    def hook(name: str) -> None:
        seen.append(name)
        if name == step:
            raise Injected(name)

    d.step_hook = hook
    with pytest.raises(Injected):
        d.apply(scenario.after)
    assert seen == list(STEPS[: STEPS.index(step) + 1])
    assert snapshot(kernel, tmp_path) == before
    d.step_hook = None
    d.apply(scenario.after)
    converged(kernel, tmp_path, d, scenario)


@pytest.mark.parametrize("case", SCENARIOS)
def test_a_failing_write_changes_nothing(kernel: FakeKernel, tmp_path: Path, case: str) -> None:
    """The Nth write failing, for every N until the apply gets through: nothing changes."""
    scenario = SCENARIOS[case]
    d = prepare(kernel, tmp_path, scenario)
    before = snapshot(kernel, tmp_path)
    for n in range(1, 50):
        kernel.fail_at = n
        log = len(kernel.log)
        try:
            d.apply(scenario.after)
        except CommandFailed:
            assert snapshot(kernel, tmp_path) == before, f"write {n} failed: {kernel.log[log:]}"
            continue
        assert kernel.fail_at is not None  # the apply made fewer than n writes
        kernel.fail_at = None
        break
    else:
        pytest.fail("the apply never got through")
    assert n > 1, "the apply wrote nothing"
    converged(kernel, tmp_path, d, scenario)


@pytest.mark.parametrize("verb", ["check", "commit"])
def test_the_kernel_refusing_the_marks_changes_nothing(
    kernel: FakeKernel, tmp_path: Path, verb: str
) -> None:
    """The packet filter refusing its dry run or its commit: IPVS is put back too."""
    scenario = SCENARIOS["change"]
    d = prepare(kernel, tmp_path, scenario)
    before = snapshot(kernel, tmp_path)
    kernel.fail_on = {f"fake-a:{verb}"}
    with pytest.raises(CommandFailed):
        d.apply(scenario.after)
    assert snapshot(kernel, tmp_path) == before
    kernel.fail_on = set()
    d.apply(scenario.after)
    converged(kernel, tmp_path, d, scenario)


def test_a_foreign_service_on_a_wanted_mark_is_refused_before_any_write(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    web = next(s for s in specify(BUNDLES).services if s.family == Family.IPV4)
    squatter = attrs.evolve(FOREIGN, mark=web.mark)
    kernel.services[(squatter.family, squatter.mark)] = squatter
    before = snapshot(kernel, tmp_path)
    d = director(kernel, tmp_path)
    with pytest.raises(ConflictError, match=rf"fwmark {web.mark} \(ipv4\) is not lvsfw's"):
        d.apply(BUNDLES)
    assert kernel.log == [] and kernel.writes == 0
    assert snapshot(kernel, tmp_path) == before


def test_plan_writes_nothing_and_a_second_apply_writes_nothing(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    d = director(kernel, tmp_path)
    spec = specify(BUNDLES)
    plan = d.plan(BUNDLES)
    assert plan.add_rules == spec.normalized and plan.add_services == spec.services
    assert kernel.writes == 0 and state.read_text(str(tmp_path / "state.json")) is None
    assert d.apply(BUNDLES)
    writes = kernel.writes
    assert not d.plan(BUNDLES) and not d.apply(BUNDLES)
    assert kernel.writes == writes
    report = d.verify(BUNDLES)
    assert report.ok, report


def test_verify_sees_what_changed_behind_its_back(kernel: FakeKernel, tmp_path: Path) -> None:
    d = director(kernel, tmp_path)
    d.apply(BUNDLES)
    kernel.rules["fake-a"] = frozenset(sorted(kernel.rules["fake-a"])[1:])
    del kernel.services[next(iter(wanted(BUNDLES).keys() - {(FOREIGN.family, FOREIGN.mark)}))]
    assert not d.verify(BUNDLES).ok
    d.apply(BUNDLES)
    assert d.verify(BUNDLES).ok


def test_a_stale_filter_is_emptied_by_the_next_apply_and_by_destroy(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    """After a switch the old filter holds nothing; a killed switch's leftovers are seen."""
    director(kernel, tmp_path, "fake-a").apply(BUNDLES)
    b = director(kernel, tmp_path, "fake-b")
    b.apply(BUNDLES)
    assert set(k for k, v in kernel.rules.items() if v) == {"fake-b"}
    FakeFilter(kernel, name="fake-a").apply(specify(BUNDLES))  # as a killed apply left it
    pending = state.State(
        frozenset((s.family, s.mark) for s in specify(BUNDLES).services),
        "fake-b",
        pending=True,
        firewalls=frozenset({"fake-a", "fake-b"}),
    )
    state.save(str(tmp_path / "state.json"), pending)
    assert not b.verify(BUNDLES).ok
    b.destroy()
    assert {k: v for k, v in kernel.rules.items() if v} == {}
    assert kernel.services == {(FOREIGN.family, FOREIGN.mark): FOREIGN}


@pytest.mark.parametrize("half", ["services", "marks"])
def test_ctrl_c_inside_a_commit_keeps_the_pending_ownership(
    kernel: FakeKernel, tmp_path: Path, half: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit stopped by Ctrl-C after its write landed: the undo stack cannot know that, so
    the state file must keep the pending ownership (restoring it orphaned the half-built
    service: the next apply refused it as foreign). The next apply then converges."""
    d = director(kernel, tmp_path)
    cls = FakeServices if half == "services" else FakeFilter
    real = cls.commit

    def interrupted(self: Any, change: Any) -> None:
        real(self, change)  # the kernel took it...
        raise KeyboardInterrupt  # ...and the process was interrupted before it knew

    monkeypatch.setattr(cls, "commit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        d.apply(BUNDLES)
    monkeypatch.setattr(cls, "commit", real)
    left = state.load(d.state_file)
    assert left.pending and left.services  # lvsfw still names what it may have created
    d.apply(BUNDLES)  # no ConflictError: the half-built service is lvsfw's
    assert d.verify(BUNDLES).ok and not state.load(d.state_file).pending
