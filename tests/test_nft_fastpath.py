"""Scale mechanics of the nftables path: one read per apply, the generation-keyed fast path
(never trusted after any foreign commit, never used by verify), undo by the inverse delta, and
the incremental normalizer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvsfw import Bundle
from lvsfw.backends import nftables as nftmod
from lvsfw.backends.nftgen import generation
from lvsfw.director import Director
from lvsfw.netns import call_in_netns
from lvsfw.rules import MarkRule, Normalizer, normalize, specify
from tests import strategies
from tests.netlab import empty_netns, run
from tests.test_nftables import kernel_ready

BUNDLES = [
    Bundle("web", "192.0.2.10", "tcp:80,443", 80),
    Bundle("ftp", "192.0.2.21", "tcp:21,10000-10100", 21),
    Bundle("dns", ["192.0.2.53", "2001:db8::53"], "udp:53 tcp:53", "0x35/0xff"),
]
CHANGED = [*BUNDLES[:2], Bundle("dns", ["192.0.2.53", "2001:db8::53"], "udp:53,5353", "0x35/0xff")]


@given(st.lists(strategies.bundles(max_size=4), min_size=1, max_size=5))
@settings(max_examples=60, deadline=None)
def test_normalizer_equals_normalize_over_any_sequence(sets: list[list[Bundle]]) -> None:
    normalizer = Normalizer()
    pool: list[MarkRule] = []
    for bundles in sets:
        rules = specify(bundles).rules
        pool += rules
        for candidate in (rules, frozenset(pool), rules, frozenset(pool[: len(pool) // 2])):
            assert normalizer(candidate) == normalize(candidate)


@pytest.fixture
def netns() -> Iterator[str]:
    kernel_ready()
    with empty_netns() as name:
        yield name


class Calls:
    """Every libnftables command, by verb (list / write / check)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.argv: list[tuple[str, ...]] = []
        real = nftmod.Context.json

        def record(ctx: Any, command: dict[str, Any], argv: tuple[str, ...]) -> Any:
            self.argv.append(argv)
            return real(ctx, command, argv)

        monkeypatch.setattr(nftmod.Context, "json", record)

    def table_listings(self) -> int:
        return sum(1 for a in self.argv if a[-3:] == ("table", "inet", "lvsfw") and "list" in a)

    def clear(self) -> None:
        self.argv.clear()


def _director(netns: str, tmp_path: Any) -> Director:
    state = str(tmp_path / "state.json")
    return Director("nftables", ipvs=False, netns=netns, state_file=state, lock_dir=str(tmp_path))


@pytest.mark.kernel
def test_own_commit_skips_the_listing_any_foreign_commit_forces_it(
    netns: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _director(netns, tmp_path)
    calls = Calls(monkeypatch)
    d.apply(BUNDLES)
    calls.clear()
    assert not d.apply(BUNDLES)  # nothing changed since lvsfw's own commit: no listing
    assert calls.table_listings() == 0
    d.apply(CHANGED)
    assert calls.table_listings() == 0
    assert d.verify(CHANGED).ok
    assert calls.table_listings() == 1  # verify always reads the kernel

    # a foreign commit anywhere in the namespace (here: damage to lvsfw's own map)
    run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "nft",
            "delete element inet lvsfw mark4 { 192.0.2.10 . tcp . 80 }",
        ]
    )
    assert not d.verify(CHANGED).ok
    calls.clear()
    plan = d.apply(CHANGED)
    assert calls.table_listings() == 1  # the generation moved: read in full, repair
    assert {(r.vip.exploded, r.first_port) for r in plan.add_rules} == {("192.0.2.10", 80)}
    assert d.verify(CHANGED).ok


@pytest.mark.kernel
def test_generation_moves_by_one_per_commit_and_not_on_dry_runs(netns: str) -> None:
    first = call_in_netns(netns, generation)
    assert first is not None
    run(["ip", "netns", "exec", netns, "nft", "add table ip t1"])
    run(["ip", "netns", "exec", netns, "nft", "-c", "add table ip t2"])
    assert call_in_netns(netns, generation) == (first[0], first[1] + 1)
    assert call_in_netns(None, generation) != call_in_netns(netns, generation)


@pytest.mark.kernel
def test_failure_after_the_delta_is_undone_by_its_inverse(
    netns: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _director(netns, tmp_path)
    d.apply(BUNDLES)
    listed = run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "lvsfw"])

    def fail(step: str) -> None:
        if step == "commit":
            raise RuntimeError("injected")

    d.step_hook = fail
    calls = Calls(monkeypatch)
    with pytest.raises(RuntimeError):
        d.apply(CHANGED)
    writes = [a for a in calls.argv if a[-3:] == ("-j", "-f", "-") and "--check" not in a]
    assert len(writes) == 2  # the delta, then its inverse: no snapshot reload
    assert run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "lvsfw"]) == listed
    d.step_hook = None
    assert d.verify(BUNDLES).ok
    d.apply(CHANGED)  # the undo was not cached as lvsfw's state: this reads and converges
    assert d.verify(CHANGED).ok
