"""The fake kernel (lvsfw.backends.fake): the backend contracts, and its own promises.

A write that fails leaves the kernel as it was; a change's inverse undoes it; ``check``
fails exactly where ``commit`` would; ``fail_at`` counts writes of every backend of one
kernel; a foreign service on a wanted key is a conflict, with ipvs's message.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from lvsfw import Bundle, CommandFailed, ConflictError, specify
from lvsfw.backends.base import Change, Live, PacketFilter, ServiceHalf, ServiceLive
from lvsfw.backends.fake import FakeChange, FakeFilter, FakeKernel, FakeLive
from lvsfw.backends.fakeipvs import FakeServiceChange, FakeServiceLive, FakeServices
from lvsfw.enums import Family
from lvsfw.model import VirtualService
from lvsfw.rules import FwmarkService, Specification
from tests.contract import PacketFilterContract, ServiceBackendContract

WEB = Bundle("web", ["192.0.2.10", "2001:db8::10"], "tcp:80,443", 80, real_servers=[
    {"address": "10.0.0.11"}, {"address": "2001:db8:1::11"},
])  # fmt: skip
DNS = Bundle("dns", "192.0.2.53", "tcp:53 udp:53", 53, scheduler="rr")
FOREIGN = FwmarkService(Family.IPV4, 999, VirtualService())
EMPTY = Specification(frozenset(), frozenset())


class TestFakeFilterContract(PacketFilterContract):
    """The shared render -> parse contract (tests/contract.py) on the fake packet filter."""

    backend_name = "fake"

    def _backend(self) -> Any:
        return FakeFilter(FakeKernel())


class TestFakeServicesContract(ServiceBackendContract):
    """The same for the fake IPVS half."""

    backend_name = "fake-ipvs"

    def _backend(self) -> Any:
        return FakeServices(FakeKernel())


# -- the packet filter -----------------------------------------------------------------------


def test_values_satisfy_the_protocols() -> None:
    f = FakeFilter(FakeKernel())
    live = f.observe()
    change = f.diff(specify([WEB]), live)
    assert isinstance(f, PacketFilter) and isinstance(live, Live)
    assert isinstance(change, Change) and isinstance(change.inverse, Change)
    s = FakeServices(FakeKernel())
    assert isinstance(s, ServiceHalf) and isinstance(s.observe(frozenset()), ServiceLive)


def test_diff_commit_read_and_inverse() -> None:
    kernel = FakeKernel()
    f = FakeFilter(kernel, name="fake-a")
    spec = specify([WEB, DNS])
    before = f.observe()
    change = f.diff(spec, before)
    assert change is not None and f.diff(spec, before) == change  # pure
    assert kernel.rules == {} and kernel.writes == 0
    f.check(change)
    f.commit(change)
    assert f.read() == spec.normalized and f.diff(spec, f.observe()) is None
    assert kernel.owners["fake-a"][next(iter(specify([DNS]).rules))] == "dns"
    assert kernel.writes == 1 and kernel.log == [str(change)]
    assert all(line.startswith("fake-a: add ") for line in str(change).splitlines())
    assert f.objects() == {"table:fake-a"} and f.creates(change) == {"table:fake-a"}
    f.commit(change.inverse)
    assert kernel.rules == {} and f.objects() == frozenset()
    assert str(change.inverse).splitlines()[0].startswith("fake-a: remove ")


def test_failed_commit_changes_nothing() -> None:
    kernel = FakeKernel()
    f = FakeFilter(kernel)
    f.apply(specify([WEB]))
    saved = kernel.contents()
    change = f.diff(specify([DNS]), f.observe())
    assert change is not None
    kernel.fail_at = 1
    with pytest.raises(CommandFailed):
        f.commit(change)
    assert kernel.contents() == saved and kernel.fail_at is None and kernel.writes == 2
    kernel.fail_on = {"fake:check"}
    with pytest.raises(CommandFailed):
        f.check(change)
    kernel.fail_on = {"commit"}
    with pytest.raises(CommandFailed):
        f.commit(change)
    assert kernel.contents() == saved and len(kernel.log) == 1


def test_stale_change_is_refused_by_check_and_commit() -> None:
    kernel = FakeKernel()
    f = FakeFilter(kernel)
    stale = f.diff(specify([WEB]), f.observe())
    assert stale is not None
    f.commit(stale)
    saved = kernel.contents()
    for verb in (f.check, f.commit):
        with pytest.raises(CommandFailed, match="rule exists"):
            verb(stale)
    assert kernel.contents() == saved


def test_fail_at_counts_writes_of_every_backend_of_the_kernel() -> None:
    kernel = FakeKernel()
    a, b = FakeFilter(kernel, name="fake-a"), FakeFilter(kernel, name="fake-b")
    ipvs = FakeServices(kernel)
    kernel.fail_at = 3
    a.apply(specify([WEB]))
    first, _ = ipvs.diff(specify([WEB]), ipvs.observe(frozenset()), frozenset())
    assert first is not None
    ipvs.commit(first)
    with pytest.raises(CommandFailed, match="fail_at"):
        b.apply(specify([DNS]))
    assert kernel.fail_at is None and "fake-b" not in kernel.rules
    b.apply(specify([DNS]))
    assert set(kernel.rules) == {"fake-a", "fake-b"}


def test_cached_observe_only_while_unchanged() -> None:
    kernel = FakeKernel()
    f = FakeFilter(kernel)
    f.apply(specify([WEB]))
    fast = f.observe(fast=True)
    assert f.cached(fast) and not f.cached(f.observe())
    assert fast == f.observe()
    FakeFilter(kernel).remove()  # another instance writes: the cache is no proof any more
    assert not f.cached(f.observe(fast=True)) and f.observe(fast=True).rules == frozenset()


def test_values_of_another_backend_are_refused() -> None:
    a, b = FakeFilter(FakeKernel(), name="fake-a"), FakeFilter(FakeKernel(), name="fake-b")
    change = a.diff(specify([WEB]), a.observe())
    assert change is not None
    with pytest.raises(TypeError):
        b.commit(change)
    with pytest.raises(TypeError):
        a.diff(specify([WEB]), FakeServiceLive())  # type: ignore[arg-type]


def test_remove_clears_only_its_own_filter() -> None:
    kernel = FakeKernel()
    a, b = FakeFilter(kernel, name="fake-a"), FakeFilter(kernel, name="fake-b")
    a.apply(specify([WEB]))
    b.apply(specify([DNS]))
    a.remove()
    assert set(kernel.rules) == {"fake-b"} and a.read() == frozenset()
    writes = kernel.writes
    a.remove()  # nothing there: no write
    assert kernel.writes == writes


def test_validate_refuses_what_no_kernel_loads() -> None:
    f = FakeFilter(FakeKernel())
    f.validate(specify([WEB]))
    bad = next(iter(specify([DNS]).rules))
    with pytest.raises(CommandFailed):
        f.validate(Specification(frozenset({attrs.evolve(bad, last_port=70000)})))
    f.kernel.fail_on = {"validate"}
    with pytest.raises(CommandFailed):
        f.validate(specify([WEB]))


# -- the IPVS half ---------------------------------------------------------------------------


def test_services_diff_orders_adds_before_and_removals_after() -> None:
    kernel = FakeKernel(services={(FOREIGN.family, FOREIGN.mark): FOREIGN})
    ipvs = FakeServices(kernel)
    spec = specify([WEB])
    first, last = ipvs.diff(spec, ipvs.observe(frozenset()), frozenset())
    assert isinstance(first, FakeServiceChange) and last is None
    ipvs.check(first)
    ipvs.commit(first)
    assert set(kernel.services.values()) == spec.services | {FOREIGN}
    owned = frozenset((s.family, s.mark) for s in spec.services)
    assert ipvs.diff(spec, ipvs.observe(owned), owned) == (None, None)
    first, last = ipvs.diff(specify([DNS]), ipvs.observe(owned), owned)
    assert first is not None and last is not None
    assert str(last).count("remove") == 2 and "add" in str(first)
    ipvs.commit(first)
    ipvs.commit(last)
    assert set(kernel.services.values()) == specify([DNS]).services | {FOREIGN}
    ipvs.commit(last.inverse)
    ipvs.commit(first.inverse)
    assert set(kernel.services.values()) == spec.services | {FOREIGN}
    ipvs.remove(owned)
    assert list(kernel.services.values()) == [FOREIGN]


def test_foreign_service_on_a_wanted_key_is_a_conflict() -> None:
    squatter = attrs.evolve(FOREIGN, mark=80)
    kernel = FakeKernel(services={(Family.IPV4, 80): squatter})
    ipvs = FakeServices(kernel)
    with pytest.raises(ConflictError, match=r"fwmark 80 \(ipv4\) is not lvsfw's"):
        ipvs.diff(specify([WEB]), ipvs.observe(frozenset()), frozenset())
    owned = frozenset({(Family.IPV4, 80)})  # owned: lvsfw changes it
    first, _ = ipvs.diff(specify([WEB]), ipvs.observe(owned), owned)
    assert first is not None and "change fwmark 80 ipv4" in str(first)
    kernel.foreign[(Family.IPV6, 80)] = "uses --pe sip"
    with pytest.raises(ConflictError, match="uses --pe sip, which lvsfw does not model"):
        ipvs.diff(specify([WEB]), ipvs.observe(owned), owned)
    assert kernel.log == []


def test_failed_service_commit_changes_nothing() -> None:
    kernel = FakeKernel()
    ipvs = FakeServices(kernel)
    first, _ = ipvs.diff(specify([WEB]), ipvs.observe(frozenset()), frozenset())
    assert first is not None
    kernel.fail_at = 1
    with pytest.raises(CommandFailed):
        ipvs.commit(first)
    assert kernel.services == {}
    squatter = attrs.evolve(FOREIGN, family=Family.IPV6, mark=80)
    kernel.services[(Family.IPV6, 80)] = squatter  # the table moved on: the change is stale
    for verb in (ipvs.check, ipvs.commit):
        with pytest.raises(CommandFailed, match="File exists"):
            verb(first)
    assert kernel.services == {(Family.IPV6, 80): squatter} and kernel.log == []


def test_kernel_contents_ignore_empty_filters() -> None:
    assert FakeKernel(rules={"x": frozenset()}).contents() == FakeKernel().contents()
    assert isinstance(FakeFilter(FakeKernel()).observe(), FakeLive)
    assert FakeChange("fake", FakeLive(), FakeLive()).inverse == FakeChange(
        "fake", FakeLive(), FakeLive()
    )
