"""The Ipvs backend against the VM's real IPVS: read, plan/diff, apply, undo, remove.

Each test works in its own throwaway namespace (the ``netns`` fixture of conftest.py). The
backend is driven through its API; ``ipvsadm`` is called by hand only to read the table back
(``-Sn``) and to create "foreign" services lvsfw must never touch.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import attrs
import pytest
from e2e_lab import sh

from lvsfw import Bundle, ConflictError, RealServer, specify
from lvsfw.backends.ipvs import Ipvs, canonical, render_services
from lvsfw.command import run
from lvsfw.enums import Family
from lvsfw.errors import CommandFailed
from lvsfw.rules import FwmarkService, Specification

pytestmark = pytest.mark.kernel


def sn(netns: str) -> list[str]:
    """``ipvsadm -Sn`` of ``netns``, one line per item."""
    return sh("ipvsadm", "-Sn", netns=netns).splitlines()


def ipvsadm(netns: str, *args: str) -> None:
    sh("ipvsadm", *args, netns=netns)


def spec_of(*bundles: Bundle) -> Specification:
    return specify(bundles)


def wanted(spec: Specification) -> frozenset[FwmarkService]:
    return frozenset(canonical(s) for s in spec.services)


def without_thresholds(spec: Specification) -> list[FwmarkService]:
    """The services as ``ipvsadm -S`` prints them: it never shows -x/-y."""
    out = []
    for fs in spec.services:
        rs = [
            attrs.evolve(r, upper_threshold=0, lower_threshold=0) for r in fs.service.real_servers
        ]
        out.append(attrs.evolve(fs, service=attrs.evolve(fs.service, real_servers=rs)))
    return out


RICH = Bundle(
    "rich",
    ["192.0.2.10", "2001:db8::10"],
    "tcp:80,443 udp:53",
    4294967040,
    scheduler="wrr",
    persistence=600,
    persistence_netmask=24,
    persistence_prefix=64,
    real_servers=[
        RealServer(
            "10.0.0.11", weight=3, forwarding="route", upper_threshold=100, lower_threshold=10
        ),
        RealServer("10.0.0.12", weight=0, forwarding="masq"),
        RealServer("10.0.0.13", forwarding="tunnel"),
        RealServer("2001:db8::11", weight=7, forwarding="masq"),
    ],
)


def test_empty_namespace_reads_nothing_and_remove_is_a_noop(netns: str) -> None:
    ipvs = Ipvs(netns=netns)
    assert ipvs.read() == frozenset()
    assert ipvs.remove([80, (Family.IPV6, 81)]) == []
    assert sn(netns) == []


def test_apply_reads_back_equal_and_is_idempotent(netns: str) -> None:
    """Every modelled field (families, big mark, -M both ways, -g/-m/-i, weight 0, -x/-y)
    survives the kernel: ``read()`` equals the spec, ``-Sn`` equals the rendered text."""
    ipvs = Ipvs(netns=netns)
    spec = spec_of(RICH)
    ipvs.apply(spec, [RICH.mark.value])
    assert ipvs.read() == wanted(spec)
    # ipvsadm -S prints the mark with %d: marks from 2**31 up come out negative.
    signed = f"-f {RICH.mark.value - 2**32} "
    rendered = render_services(without_thresholds(spec)).replace(f"-f {RICH.mark.value} ", signed)
    assert "\n".join(sn(netns)) + "\n" == rendered
    assert ipvs.plan(spec, [RICH.mark.value]) == []
    assert ipvs.apply(spec, [RICH.mark.value]) == []  # nothing run, nothing to undo


def test_plan_is_the_minimal_diff_and_apply_runs_exactly_it(netns: str) -> None:
    """A weight change, an added and a removed real server, a scheduler change: one ipvsadm
    call each, and the kernel ends equal to the new spec."""
    ipvs = Ipvs(netns=netns)
    old = Bundle(
        "b",
        "192.0.2.10",
        "tcp:80",
        80,
        scheduler="rr",
        persistence=300,
        real_servers=[
            RealServer("10.0.0.11", forwarding="masq"),
            RealServer("10.0.0.12", forwarding="masq"),
        ],
    )
    ipvs.apply(spec_of(old), [80])
    new = Bundle(
        "b",
        "192.0.2.10",
        "tcp:80",
        80,
        scheduler="wlc",
        persistence=300,
        real_servers=[
            RealServer("10.0.0.11", weight=5, forwarding="masq"),
            RealServer("10.0.0.13", forwarding="masq"),
        ],
    )
    plan = ipvs.plan(spec_of(new), [80])
    assert plan == [
        ["ipvsadm", "-E", "-f", "80", "-s", "wlc", "-p", "300"],
        ["ipvsadm", "-a", "-f", "80", "-r", "10.0.0.13:0", "-m", "-w", "1"],
        ["ipvsadm", "-e", "-f", "80", "-r", "10.0.0.11:0", "-m", "-w", "5", "-x", "0", "-y", "0"],
        ["ipvsadm", "-d", "-f", "80", "-r", "10.0.0.12:0"],
    ]
    ipvs.apply(spec_of(new), [80])
    assert ipvs.read() == wanted(spec_of(new))
    assert sn(netns) == [
        "-A -f 80 -s wlc -p 300",
        "-a -f 80 -r 10.0.0.11:0 -m -w 5",
        "-a -f 80 -r 10.0.0.13:0 -m -w 1",
    ]


def test_service_and_server_edits_in_place(netns: str) -> None:
    """Dropping persistence (-E without -p), changing the forwarding method and thresholds of a
    real server (-e): the kernel takes each edit and reads back equal."""
    ipvs = Ipvs(netns=netns)
    old = Bundle(
        "b",
        "192.0.2.10",
        "tcp:80",
        80,
        scheduler="rr",
        persistence=300,
        real_servers=[RealServer("10.0.0.11", forwarding="route", upper_threshold=5)],
    )
    new = Bundle(
        "b",
        "192.0.2.10",
        "tcp:80",
        80,
        scheduler="rr",
        real_servers=[
            RealServer("10.0.0.11", forwarding="masq", lower_threshold=2, upper_threshold=9)
        ],
    )
    ipvs.apply(spec_of(old), [80])
    assert ipvs.read() == wanted(spec_of(old))
    ipvs.apply(spec_of(new), [80])
    assert ipvs.read() == wanted(spec_of(new))
    assert sn(netns) == ["-A -f 80 -s rr", "-a -f 80 -r 10.0.0.11:0 -m -w 1"]


FOREIGN = [
    ["-A", "-t", "198.51.100.1:22", "-s", "rr"],
    ["-a", "-t", "198.51.100.1:22", "-r", "10.0.0.21:22", "-m", "-w", "3"],
    ["-A", "-u", "[2001:db8::53]:53", "-s", "wlc"],
    ["-A", "-f", "999", "-s", "wlc", "-p", "60"],
    ["-a", "-f", "999", "-r", "10.0.0.22:0", "-g", "-w", "2"],
]


def test_foreign_services_are_untouched_by_apply_and_remove(netns: str) -> None:
    for argv in FOREIGN:
        ipvsadm(netns, *argv)
    before = sn(netns)
    ipvs = Ipvs(netns=netns)
    spec = spec_of(RICH)
    mark = RICH.mark.value
    ipvs.apply(spec, [mark])
    after = sn(netns)
    mine = [line for line in after if f"-f {mark - 2**32} " in line]  # printed with %d
    assert len(mine) == 6, after
    assert [line for line in after if line not in mine] == before
    dump = ipvs.read_dump()
    assert {s.mark for s in dump.services} == {999, mark}
    assert len(dump.foreign) == 2
    ipvs.remove([mark])
    assert sn(netns) == before


def test_wanted_mark_held_by_a_foreign_service_is_a_conflict(netns: str) -> None:
    ipvsadm(netns, "-A", "-f", "80", "-s", "sh")
    before = sn(netns)
    ipvs = Ipvs(netns=netns)
    bundle = Bundle("b", "192.0.2.10", "tcp:80", 80, scheduler="rr")
    with pytest.raises(ConflictError, match="not lvsfw's"):
        ipvs.apply(spec_of(bundle), [])
    assert sn(netns) == before


def test_owned_service_with_unmodelled_options_is_refused(netns: str) -> None:
    """A service using ``-b sh-port`` (not modelled) is reported, never rewritten."""
    ipvsadm(netns, "-A", "-f", "81", "-s", "sh", "-b", "sh-port")
    before = sn(netns)
    ipvs = Ipvs(netns=netns)
    dump = ipvs.read_dump()
    assert (Family.IPV4, 81) in dump.unmodelled, (before, dump)
    bundle = Bundle("b", "192.0.2.10", "tcp:80", 81, scheduler="sh")
    with pytest.raises(ConflictError):
        ipvs.apply(spec_of(bundle), [81])
    with pytest.raises(ConflictError):
        ipvs.remove([81])
    assert sn(netns) == before


def test_undo_restores_the_table_exactly(netns: str) -> None:
    ipvs = Ipvs(netns=netns)
    first = Bundle(
        "a",
        "192.0.2.10",
        "tcp:80",
        70,
        scheduler="rr",
        real_servers=[RealServer("10.0.0.11", forwarding="masq")],
    )
    ipvs.apply(spec_of(first), [70])
    before = sn(netns)
    changed = Bundle(
        "a",
        "192.0.2.10",
        "tcp:80",
        70,
        scheduler="wlc",
        persistence=30,
        real_servers=[RealServer("10.0.0.12", weight=4, forwarding="route")],
    )
    added = Bundle(
        "b",
        ["192.0.2.11", "2001:db8::11"],
        "udp:53",
        71,
        real_servers=["10.0.0.13", "2001:db8::13"],
    )
    undo = ipvs.apply(spec_of(changed, added), [70, 71])
    assert sn(netns) != before
    ipvs.undo(undo)
    assert sn(netns) == before


def test_a_failing_step_rolls_back_what_was_done(netns: str) -> None:
    """The third step fails (as the kernel would); the two done before are undone."""
    ipvs0 = Ipvs(netns=netns)
    base = Bundle(
        "a",
        "192.0.2.10",
        "tcp:80",
        70,
        scheduler="rr",
        real_servers=[RealServer("10.0.0.11", forwarding="masq")],
    )
    ipvs0.apply(spec_of(base), [70])
    before = sn(netns)
    calls: list[Sequence[str]] = []

    def runner(argv: Sequence[str]) -> str:
        calls.append(list(argv))
        if argv[1] == "-e":
            raise CommandFailed(list(argv), 2, "Memory allocation problem (injected)")
        return run(argv, netns=netns)

    ipvs = Ipvs(netns=netns, runner=runner)
    target = Bundle(
        "a",
        "192.0.2.10",
        "tcp:80",
        70,
        scheduler="wlc",
        real_servers=[
            RealServer("10.0.0.11", weight=9, forwarding="masq"),
            RealServer("10.0.0.13", forwarding="masq"),
        ],
    )
    with pytest.raises(CommandFailed, match="injected"):
        ipvs.apply(spec_of(target), [70])
    assert sn(netns) == before
    ran = [c[1] for c in calls if c[1] in {"-E", "-a", "-e", "-d"}]
    assert ran == ["-E", "-a", "-e", "-d", "-E"], calls  # 2 done, 1 failed, 2 undone


def test_kernel_refusal_mid_apply_is_rolled_back(netns: str) -> None:
    """A real kernel refusal: scheduler ``twos`` (Linux 6.2+) is missing from the VM's 6.1
    kernel, so ``-A -f 71 -s twos`` fails after the edit of mark 70 was done; the edit is
    undone and the error carries ipvsadm's message."""
    release = os.uname().release
    if glob.glob(f"/lib/modules/{release}/kernel/net/netfilter/ipvs/ip_vs_twos.ko*"):
        pytest.skip(f"kernel {release} has ip_vs_twos; this test needs a missing scheduler")
    ipvs = Ipvs(netns=netns)
    keep = Bundle(
        "a",
        "192.0.2.10",
        "tcp:80",
        70,
        scheduler="rr",
        real_servers=[RealServer("10.0.0.11", forwarding="masq")],
    )
    ipvs.apply(spec_of(keep), [70])
    before = sn(netns)
    edited = Bundle(
        "a",
        "192.0.2.10",
        "tcp:80",
        70,
        scheduler="wlc",
        real_servers=[RealServer("10.0.0.11", forwarding="masq")],
    )
    twos = Bundle("t", "192.0.2.11", "tcp:80", 71, scheduler="twos")
    with pytest.raises(CommandFailed) as failed:
        ipvs.apply(spec_of(edited, twos), [70, 71])
    assert failed.value.argv[-5:] == ("-A", "-f", "71", "-s", "twos"), failed.value.argv
    assert "Scheduler or persistence engine not found" in failed.value.stderr, failed.value.stderr
    assert sn(netns) == before


def test_remove_only_the_owned_marks_and_both_families(netns: str) -> None:
    ipvs = Ipvs(netns=netns)
    dual = Bundle("d", ["192.0.2.10", "2001:db8::10"], "tcp:80", 60)
    other = Bundle("o", "192.0.2.11", "tcp:80", 61)
    ipvs.apply(spec_of(dual, other), [60, 61])
    assert {(s.family, s.mark) for s in ipvs.read()} == {
        (Family.IPV4, 60),
        (Family.IPV6, 60),
        (Family.IPV4, 61),
    }
    ipvs.remove([60])
    assert sn(netns) == ["-A -f 61 -s wlc"]
    ipvs.remove([(Family.IPV6, 61)])  # owns only the (absent) v6 half: the v4 one stays
    assert sn(netns) == ["-A -f 61 -s wlc"]
