"""Scale through the front door (issue 13): the expansion memo by value, the incremental
conflict check, lazy line numbers in config errors, the iptables record of what lvsfw wrote,
and the command-line benchmark's helpers. Kernel tests run in throwaway namespaces they
create and delete; no timing is asserted anywhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from benchmarks.cli import edit_ports, write_config
from benchmarks.workload import make_bundle, make_bundles
from lvsfw import Bundle, ConflictError, Director, config
from lvsfw.backends import iptrecord
from lvsfw.conflicts import check_bundles
from lvsfw.model import VirtualService
from lvsfw.rules import Memo, specify
from tests.netlab import empty_netns, run, xtables_tools


def _conflict(bundles: list[Bundle]) -> str:
    with pytest.raises(ConflictError) as info:
        check_bundles(bundles)
    return str(info.value)


# -- memo by value and the incremental check ----------------------------------------------------


def test_fresh_bundles_reuse_the_rule_objects_of_equal_ones() -> None:
    memo: Memo = {}
    first = specify(make_bundles(50), memo=memo)
    again = specify(make_bundles(50), memo=memo)  # equal by value, all new objects
    assert again.rules == first.rules
    by_value = {r: r for r in first.rules}
    assert all(by_value[r] is r for r in again.rules)
    assert len(memo) == 50


def test_one_changed_bundle_is_expanded_afresh() -> None:
    memo: Memo = {}
    specify(make_bundles(20), memo=memo)
    changed = make_bundles(20)
    changed[7] = make_bundle(7, extra_port=True)
    spec = specify(changed, memo=memo)
    assert spec == specify(changed, check=False)
    assert make_bundle(7) not in memo and changed[7] in memo


@pytest.mark.parametrize(
    "intruder",
    [
        Bundle("svc3", "10.99.0.1", "tcp:1", 900),  # a name already taken
        Bundle("new", "10.64.0.4", "tcp:443", 900),  # a VIP:port already taken
        Bundle("new", "10.99.0.1", "tcp:1", 5, scheduler="rr"),  # mark 5, another service
        Bundle("new", "10.99.0.1", "tcp:1", "0x5/0xff"),  # mark 5, another mask
    ],
)
def test_incremental_check_says_what_a_full_check_says(intruder: Bundle) -> None:
    base = make_bundles(40)
    specify(base)  # now known conflict-free
    bundles = [*make_bundles(40), intruder]
    expected = _conflict(bundles)
    with pytest.raises(ConflictError) as info:
        specify(bundles)
    assert str(info.value) == expected


def test_fields_equality_ignores_still_count_for_the_check() -> None:
    fields = {f.name for f in attrs.fields(VirtualService) if not f.eq}
    if "delay_loop" not in fields:
        pytest.skip("VirtualService has no delay_loop (keepalived settings) here")
    pair = [Bundle("a", "10.9.0.1", "tcp:80", 5), Bundle("b", "10.9.0.2", "tcp:80", 5)]
    specify(pair)
    other = Bundle("a", "10.9.0.1", "tcp:80", 5, delay_loop=10)
    assert other == pair[0]  # equal, yet a different keepalived setting on a shared mark
    bundles = [other, pair[1]]
    expected = _conflict(bundles)
    with pytest.raises(ConflictError) as info:
        specify(bundles)
    assert str(info.value) == expected


def test_a_bundle_listed_twice_is_a_conflict_even_when_known() -> None:
    bundles = make_bundles(10)
    specify(bundles)
    with pytest.raises(ConflictError, match="svc4"):
        specify([*bundles, make_bundle(4)])


def test_a_memo_hit_is_still_checked_against_the_others() -> None:
    memo: Memo = {}
    alone = Bundle("a", "10.64.0.1", "tcp:80", 77)
    specify([alone], memo=memo)  # fine on its own
    specify(make_bundles(5))  # another set becomes the known conflict-free one
    with pytest.raises(ConflictError, match=r"both claim 10\.64\.0\.1 tcp port 80"):
        specify([*make_bundles(5), alone], memo=memo)


# -- config: line numbers found only on error ---------------------------------------------------


def _numbered(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_config_errors_keep_their_line_numbers() -> None:
    text = "".join(
        f'[[bundle]]\nname = "b{i}"\nvips = "192.0.2.{i}"\nports = "tcp:80"\nmark = {i + 1}\n'
        f'scheduler = "rr"\nreal_servers = [\n  "10.0.0.1",\n  {{ address = "10.0.0.2" }},\n]\n\n'
        for i in range(4)
    )
    heavy = text[::-1].replace('"10.0.0.2" }'[::-1], '"10.0.0.2", weight = "x" }'[::-1], 1)[::-1]
    with pytest.raises(config.ConfigError) as info:
        config.loads(heavy, "f")
    assert info.value.line == _numbered(heavy, 'weight = "x"')
    assert info.value.field == "bundle[3] (b3).real_servers[1].weight"
    seven = text[::-1].replace('scheduler = "rr"'[::-1], "scheduler = 7"[::-1], 1)[::-1]
    with pytest.raises(config.ConfigError) as info:
        config.loads(seven, "f")
    assert (info.value.line, info.value.field) == (
        _numbered(seven, "= 7"),
        "bundle[3] (b3).scheduler",
    )


def test_shared_port_lists_are_parsed_once_and_errors_still_point_at_them() -> None:
    cfg = config.loads(config.dumps(make_bundles(8)))
    assert cfg.bundles[0].ports is cfg.bundles[4].ports  # same text, one PortBundle
    bad = config.dumps(make_bundles(8)).replace('ports = "tcp:21,10000-10099"', 'ports = "tcp:x"')
    with pytest.raises(config.ConfigError) as info:
        config.loads(bad, "f.toml")
    assert info.value.field == "bundle[2] (svc2).ports"
    assert info.value.line is not None
    assert bad.splitlines()[info.value.line - 1].startswith("ports")


# -- the benchmark's file editing ---------------------------------------------------------------


def test_edit_ports_adds_and_removes_one_port(tmp_path: Path) -> None:
    path = tmp_path / "lvsfw.toml"
    write_config(path, 6, "nftables", "ns", str(tmp_path / "state.json"))
    edit_ports(path, "svc3", add=True)
    assert config.load(str(path)).bundles[3] == make_bundle(3, extra_port=True)
    edit_ports(path, "svc3", add=False)
    assert list(config.load(str(path)).bundles) == make_bundles(6)


# -- the iptables record ---------------------------------------------------------------------


def test_stable_text_drops_timestamps_and_counters() -> None:
    one = "# Generated on Mon\n*mangle\n:PREROUTING ACCEPT [12:3456]\n-A PREROUTING -j X\nCOMMIT\n"
    two = "# Generated on Tue\n*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j X\nCOMMIT\n"
    assert iptrecord.stable_text(one) == iptrecord.stable_text(two)
    assert iptrecord.stable_text(one) != iptrecord.stable_text(two.replace("-j X", "-j Y"))


def test_headers_of_a_terse_listing() -> None:
    text = (
        "Name: lvsfw4-nft\nType: hash:ip,port\nRevision: 7\nHeader: family inet hashsize 1024"
        " maxelem 65536 comment skbinfo\nSize in memory: 330\nReferences: 1\n"
        "Number of entries: 3\nName: lvsfw6-nft\nType: hash:ip,port\nHeader: family inet6\n"
        "Number of entries: 0\n"
    )
    found = iptrecord.headers(text)
    assert found["lvsfw4-nft"] == (
        ("hash:ip,port", "family", "inet", "hashsize", "1024", "maxelem", "65536", "comment",
         "skbinfo"),
        3,
    )  # fmt: skip
    assert found["lvsfw6-nft"] == (("hash:ip,port", "family", "inet6"), 0)


@pytest.fixture
def netns() -> Iterator[str]:
    with empty_netns(("ipset", *xtables_tools("legacy"))) as name:
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield name


@pytest.mark.kernel
def test_iptables_trusts_what_it_wrote_and_verify_reads_in_full(netns: str, tmp_path: Path) -> None:
    director = Director("iptables-legacy", False, netns, state_file=str(tmp_path / "s.json"),
                        lock_dir=str(tmp_path))  # fmt: skip
    bundles = make_bundles(6)
    director.apply(bundles)
    assert director.apply(make_bundles(6)).rules_changed is False  # fresh objects, a no-op
    ipset = ["ip", "netns", "exec", netns, "ipset"]

    def swap_member() -> None:  # a foreign edit keeping the member count
        run([*ipset, "del", "lvsfw4-legacy", "10.64.0.0,tcp:80"])
        run([*ipset, "add", "lvsfw4-legacy", "10.64.0.0,tcp:81", "skbmark", "0x1"])

    swap_member()
    assert not director.apply(bundles)  # trusted: header and count are as lvsfw left them
    run([*ipset, "del", "lvsfw4-legacy", "10.64.0.0,tcp:81"])  # the count changes
    assert director.apply(bundles)  # doubt: read in full, tcp:80 put back
    assert director.verify(bundles).ok
    swap_member()
    assert not director.verify(bundles).ok  # verify always reads in full
    assert director.apply(bundles)  # and that read is what the next apply plans on
    assert director.verify(bundles).ok
    director.destroy()
