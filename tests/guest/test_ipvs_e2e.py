"""End to end in the VM: lvsfw's marks plus its IPVS fwmark services balance real traffic.

One lab (client, director, two real servers; see ``e2e_lab``) serves the whole module. For each
mark backend, :class:`TestBundles` deploys five coexisting bundles once through lvsfw's API in
the director (IPVS first, then marks), its tests send real requests from the client, and the
deployment is removed at the end (checked: no lvsfw rule and no lvsfw IPVS service left).
Marks differ per backend, so the persistence templates a run leaves behind (they outlive their
service by up to the persistence timeout) never meet the next backend's services.

``test_edit_touches_only_the_entry`` (IPVS edits, foreign services) is about the IPVS half and
``test_director_apply_verify_destroy`` about the orchestration: each runs once, with nftables.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_lab import (
    SERVERS,
    VIP6,
    VIPS,
    Deploy,
    Lab,
    real_server_of_template,
    template_lines,
)

from lvsfw import Bundle, RealServer
from lvsfw.backends.ipvs import Ipvs, canonical
from lvsfw.backends.nftables import Nftables
from lvsfw.director import Director
from lvsfw.enums import Family
from lvsfw.rules import Specification

pytestmark = pytest.mark.kernel

BACKENDS = ("nftables", "iptables-nft", "iptables-legacy")
MARK_BASE = {"nftables": 100, "iptables-nft": 200, "iptables-legacy": 300}
RS1_4, RS1_6 = SERVERS["rs1"][:2]
RS2_4, RS2_6 = SERVERS["rs2"][:2]
NAMES = {"rs1", "rs2"}
WEB, RR, DUAL, DR = VIPS["web"], VIPS["rr"], VIPS["dual"], VIPS["dr"]
# Mark offsets of the bundles of TestBundles (added to the backend's MARK_BASE).
M_WEB, M_RR, M_FTP, M_DUAL, M_DR = 80, 81, 21, 53, 90


def servers(forwarding: str = "masq", v6: bool = False) -> list[RealServer]:
    addrs = [RS1_4, RS2_4] + ([RS1_6, RS2_6] if v6 else [])
    return [RealServer(a, forwarding=forwarding) for a in addrs]


def bundles(base: int) -> list[Bundle]:
    """The bundles every mark backend deploys together."""
    return [
        Bundle(
            "web",
            WEB,
            "tcp:80,443",
            base + M_WEB,
            scheduler="rr",
            persistence=300,
            real_servers=servers(),
        ),
        Bundle("web-rr", RR, "tcp:80,443", base + M_RR, scheduler="rr", real_servers=servers()),
        Bundle(
            "ftp",
            WEB,
            "tcp:21,10000-10010",
            base + M_FTP,
            scheduler="rr",
            persistence=300,
            real_servers=servers(),
        ),
        Bundle(
            "dual",
            [DUAL, VIP6],
            "udp:53 tcp:80",
            base + M_DUAL,
            scheduler="rr",
            real_servers=servers(v6=True),
        ),
        Bundle(
            "dr",
            DR,
            "tcp:80,443",
            base + M_DR,
            scheduler="rr",
            persistence=300,
            real_servers=servers("route"),
        ),
    ]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as built:
        yield built


class Stack:
    """One backend's deployment of :func:`bundles` and its specification."""

    def __init__(self, deploy: Deploy, spec: Specification, base: int) -> None:
        self.deploy, self.spec, self.base = deploy, spec, base

    def mark(self, offset: int) -> int:
        return self.base + offset


@pytest.fixture(scope="class", params=BACKENDS)
def stack(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Stack]:
    """The bundles deployed with mark backend ``request.param``; removed and checked after."""
    base = MARK_BASE[request.param]
    deploy = Deploy(lab, request.param, base)
    try:
        spec = deploy.apply(bundles(base))
        yield Stack(deploy, spec, base)
    finally:
        owned = set(deploy.owned)
        deploy.remove()
        assert deploy.firewall.read() == frozenset()
        left = {s.mark for s in deploy.ipvs.read()} & owned
        assert not left, f"lvsfw IPVS services left after remove: {left}"


def lines_of(lab: Lab, mark: int) -> list[str]:
    """The ``ipvsadm -Sn`` lines of fwmark ``mark`` (both families)."""
    return [line for line in lab.ipvsadm("-Sn").splitlines() if f"-f {mark} " in line]


class TestBundles:
    def test_reads_back_and_reapply_is_a_noop(self, stack: Stack, lab: Lab) -> None:
        """What the kernel holds equals the specification, both halves; applying the same
        specification again plans no IPVS call (and no nftables transaction)."""
        deploy = stack.deploy
        assert deploy.ipvs.read() == {canonical(s) for s in stack.spec.services}
        assert deploy.ipvs.plan(stack.spec, deploy.owned) == []
        deploy.firewall.apply(stack.spec)
        if isinstance(deploy.firewall, Nftables):
            assert deploy.firewall.last_transaction is None
        assert lines_of(lab, stack.mark(M_WEB)) == [
            f"-A -f {stack.mark(M_WEB)} -s rr -p 300",
            f"-a -f {stack.mark(M_WEB)} -r {RS1_4}:0 -m -w 1",
            f"-a -f {stack.mark(M_WEB)} -r {RS2_4}:0 -m -w 1",
        ]

    def test_http_https_persistence(self, stack: Stack, lab: Lab) -> None:
        """80, 443, 80 from one client land on one real server; -Lnc shows the template."""
        assert lab.names is not None
        del lab.names.seen[:]
        names = lab.request(("tcp", WEB, 80), ("tcp", WEB, 443), ("tcp", WEB, 80))
        assert len(set(names)) == 1 and names[0] in NAMES, names
        # NAT: the real server saw its own address as destination.
        own = SERVERS[names[0]][0]
        assert lab.names.seen == [(names[0], own)] * 3, lab.names.seen
        listing = lab.ipvsadm("-Lnc")
        templates = template_lines(listing, stack.mark(M_WEB))
        assert len(templates) == 1, listing
        assert lab.server_name(real_server_of_template(templates[0])) == names[0]

    def test_round_robin_without_persistence_reaches_both(self, stack: Stack, lab: Lab) -> None:
        """The control: without persistence, rr alternates between the two real servers."""
        names = lab.request(*[("tcp", RR, port) for port in (80, 443, 80, 443)])
        assert set(names) == NAMES, names
        assert names[0] != names[1] and names[0] == names[2], names
        assert template_lines(lab.ipvsadm("-Lnc"), stack.mark(M_RR)) == []

    def test_ftp_shape_persistence(self, stack: Stack, lab: Lab) -> None:
        """Port 21 and a port of the passive range share one server; 10011 is not bundled."""
        names = lab.request(("tcp", WEB, 21), ("tcp", WEB, 10005), ("tcp", WEB, 21))
        assert len(set(names)) == 1 and names[0] in NAMES, names
        outside = lab.request(("tcp", WEB, 10011))
        assert outside[0].startswith("ERR ConnectionRefusedError"), outside
        assert len(template_lines(lab.ipvsadm("-Lnc"), stack.mark(M_FTP))) == 1

    def test_udp_and_dual_stack(self, stack: Stack, lab: Lab) -> None:
        """udp:53 tcp:80 on an IPv4 and an IPv6 VIP: two IPVS services on one mark."""
        mark = stack.mark(M_DUAL)
        heads = [line for line in lines_of(lab, mark) if line.startswith("-A")]
        assert sorted(heads) == sorted([f"-A -f {mark} -s rr", f"-A -f {mark} -6 -s rr"])
        found = sorted((s.family, s.mark) for s in stack.deploy.ipvs.read() if s.mark == mark)
        assert found == [(Family.IPV4, mark), (Family.IPV6, mark)]
        names = lab.request(
            ("udp", DUAL, 53),
            ("udp", DUAL, 53),
            ("udp", VIP6, 53),
            ("udp", VIP6, 53),
            ("tcp", VIP6, 80),
            ("tcp", VIP6, 80),
            ("tcp", DUAL, 80),
        )
        assert all(n in NAMES for n in names), names
        assert set(names[0:2]) == set(names[2:4]) == set(names[4:6]) == NAMES, names

    def test_direct_routing(self, stack: Stack, lab: Lab) -> None:
        """route: the service loads with -g; DR traffic keeps HTTP and HTTPS together."""
        mark = stack.mark(M_DR)
        assert lines_of(lab, mark) == [
            f"-A -f {mark} -s rr -p 300",
            f"-a -f {mark} -r {RS1_4}:0 -g -w 1",
            f"-a -f {mark} -r {RS2_4}:0 -g -w 1",
        ]
        assert lab.names is not None
        del lab.names.seen[:]
        names = lab.request(("tcp", DR, 80), ("tcp", DR, 443), ("tcp", DR, 80))
        assert len(set(names)) == 1 and names[0] in NAMES, names
        # Direct routing: the packets reached the real server still addressed to the VIP.
        assert lab.names.seen == [(names[0], DR)] * 3, lab.names.seen
        templates = template_lines(lab.ipvsadm("-Lnc"), mark)
        assert [lab.server_name(real_server_of_template(t)) for t in templates] == names[:1]


FOREIGN = [
    ["-A", "-t", "198.51.100.1:22", "-s", "rr"],
    ["-a", "-t", "198.51.100.1:22", "-r", RS1_4 + ":22", "-m", "-w", "3"],
    ["-A", "-f", "999", "-s", "wlc"],
    ["-a", "-f", "999", "-r", RS2_4 + ":0", "-g", "-w", "2"],
]


def test_edit_touches_only_the_entry(lab: Lab) -> None:
    """Weight 0, then removing rs2, each run one ipvsadm call and change one -Sn line (traffic
    follows); services made by hand before (``-t`` and ``-f 999``) survive apply and removal."""
    vip, mark = VIPS["edit"], 500
    deploy = Deploy(lab, "nftables", mark)
    for argv in FOREIGN:
        lab.ipvsadm(*argv)
    try:
        before = lab.ipvsadm("-Sn").splitlines()
        both = servers()
        deploy.apply([Bundle("edit", vip, "tcp:80,443", mark, scheduler="rr", real_servers=both)])
        applied = lab.ipvsadm("-Sn").splitlines()
        assert [line for line in applied if f"-f {mark} " not in line] == before
        assert set(lab.request(*[("tcp", vip, 80)] * 4)) == NAMES

        quiet = [both[0], RealServer(RS2_4, 0, forwarding="masq")]
        deploy.apply(
            [Bundle("edit", vip, "tcp:80,443", mark, scheduler="rr", real_servers=quiet)], plan=True
        )
        assert deploy.ipvs_commands == [
            [
                "ipvsadm",
                "-e",
                "-f",
                str(mark),
                "-r",
                f"{RS2_4}:0",
                "-m",
                "-w",
                "0",
                "-x",
                "0",
                "-y",
                "0",
            ]
        ]
        edited = lab.ipvsadm("-Sn").splitlines()
        changed = [(a, b) for a, b in zip(applied, edited) if a != b]
        assert changed == [
            (f"-a -f {mark} -r {RS2_4}:0 -m -w 1", f"-a -f {mark} -r {RS2_4}:0 -m -w 0")
        ], (applied, edited)
        assert lab.request(*[("tcp", vip, 80)] * 3) == ["rs1"] * 3

        deploy.apply(
            [Bundle("edit", vip, "tcp:80", mark, scheduler="rr", real_servers=quiet[:1])], plan=True
        )
        assert deploy.ipvs_commands == [["ipvsadm", "-d", "-f", str(mark), "-r", f"{RS2_4}:0"]]
        assert lab.ipvsadm("-Sn").splitlines() == [
            line for line in edited if line != f"-a -f {mark} -r {RS2_4}:0 -m -w 0"
        ]
        assert lab.request(("tcp", vip, 80), ("tcp", vip, 80)) == ["rs1"] * 2
        refused = lab.request(("tcp", vip, 443))
        assert refused[0].startswith("ERR"), refused  # 443 left the bundle: no mark, no service

        deploy.remove()
        assert lab.ipvsadm("-Sn").splitlines() == before
        assert deploy.firewall.read() == frozenset()
    finally:
        deploy.remove()
        lab.ipvsadm("-D", "-t", "198.51.100.1:22")
        lab.ipvsadm("-D", "-f", "999")


def test_director_apply_verify_destroy(lab: Lab, tmp_path: Path) -> None:
    """The orchestration end to end, once (nftables): Director.apply brings traffic up,
    verify() finds no drift, a second apply changes nothing, destroy() leaves nothing."""
    vip, mark = VIPS["edit"], 600
    bundle = Bundle(
        "director", vip, "tcp:80,443", mark, scheduler="rr", persistence=300,
        real_servers=servers(),
    )  # fmt: skip
    director = Director(
        "nftables", netns=lab.director, state_file=str(tmp_path / "state.json"),
        lock_dir=str(tmp_path),
    )  # fmt: skip
    try:
        plan = director.apply([bundle])
        assert plan, "the first apply must change something"
        report = director.verify([bundle])
        assert report.ok, report
        names = lab.request(("tcp", vip, 80), ("tcp", vip, 443))
        assert len(set(names)) == 1 and names[0] in NAMES, names
        assert not director.apply([bundle]), "a second apply must change nothing"
    finally:
        director.destroy()
    assert Ipvs(netns=lab.director).read() == frozenset()
    assert director.firewall.read() == frozenset()
