"""Director.verify on real kernels: every kind of drift is found and names bundle and port;
apply repairs what is lvsfw's own (and leaves foreign overrides alone)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lvsfw import Director, Report, registry
from lvsfw.backends.iptables import Iptables
from lvsfw.enums import Family
from tests import test_director
from tests.test_director import (
    BUNDLES,
    FIREWALLS,
    Netns,
    director,
)

pytestmark = pytest.mark.kernel
netns = test_director.netns  # the fixtures
fake = test_director.fake

IPT = {"iptables-nft": "iptables-nft", "iptables-legacy": "iptables-legacy"}


def ipt(ns: Netns, firewall: str, *args: str) -> None:
    """``iptables-<flavour> -t mangle ARGS`` in ``ns``."""
    ns.exec(IPT[firewall], "-t", "mangle", *args)


def set_name(firewall: str) -> str:
    """The backend's own ipset holding ``firewall``'s IPv4 single ports."""
    backend = registry.get(firewall)
    assert issubclass(backend, Iptables)
    return backend.set_names[Family.IPV4]


def applied(ns: Netns, fake: Path, firewall: str) -> Director:
    d = director(ns, fake, firewall)
    d.apply(BUNDLES)
    assert d.verify(BUNDLES).ok
    return d


def findings(report: Report, kind: str) -> list[tuple[str, str]]:
    """(bundle, detail) of the findings of ``kind``."""
    return [(d.bundle, d.detail) for d in report.drift if d.kind == kind]


def repaired(d: Director) -> None:
    """apply puts lvsfw's own state back, and then nothing drifts."""
    assert d.plan(BUNDLES)
    d.apply(BUNDLES)
    assert d.verify(BUNDLES).ok, d.verify(BUNDLES)
    assert not d.plan(BUNDLES)


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_a_port_that_lost_its_mark(netns: Netns, fake: Path, firewall: str) -> None:
    d = applied(netns, fake, firewall)
    if firewall == "nftables":
        netns.nft("delete element inet lvsfw mark4 { 192.0.2.53 . udp . 53 }\n")
    else:
        netns.exec("ipset", "del", set_name(firewall), "192.0.2.53,udp:53")
    report = d.verify(BUNDLES)
    assert findings(report, "missing") == [
        ("dns", "192.0.2.53 udp:53 is not marked (want mark 53)")
    ], report
    assert report.missing and not report.ok and "dns: missing" in str(report)
    plan = d.plan(BUNDLES)
    assert [str(r.vip) for r in plan.add_rules] == ["192.0.2.53"] and not plan.remove_rules
    repaired(d)


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_own_chain_emptied(netns: Netns, fake: Path, firewall: str) -> None:
    d = applied(netns, fake, firewall)
    if firewall == "nftables":  # the maps keep their elements; the hook chain does nothing
        netns.nft("flush chain inet lvsfw prerouting\n")
        report = d.verify(BUNDLES)
        structure = findings(report, "structure")
        assert {b for b, _ in structure} == {b.name for b in BUNDLES}, report
        assert all("(all ports: " in detail for _, detail in structure)
        assert d.plan(BUNDLES).repair and "repair" in str(d.plan(BUNDLES))
    else:
        ipt(netns, firewall, "-F", "LVSFW-PREROUTING")
        report = d.verify(BUNDLES)
        missing = findings(report, "missing")
        assert ("web", "192.0.2.10 tcp:443 is not marked (want mark 80)") in missing
        assert {b for b, _ in missing} == {"web", "dns", "ftp"}  # the IPv4 chain
    repaired(d)


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_own_table_or_jump_deleted(netns: Netns, fake: Path, firewall: str) -> None:
    d = applied(netns, fake, firewall)
    if firewall == "nftables":
        netns.nft("delete table inet lvsfw\n")
        report = d.verify(BUNDLES)
        assert ("ftp", "192.0.2.21 tcp:10000-20000 is not marked (want mark 21)") in findings(
            report, "missing"
        )
        assert any("table inet lvsfw is missing" in x for _, x in findings(report, "structure"))
    else:  # the chain is intact, only the jump to it is gone: read() alone sees nothing
        ipt(netns, firewall, "-D", "PREROUTING", "-m", "comment", "--comment", "lvsfw",
            "-j", "LVSFW-PREROUTING")  # fmt: skip
        report = d.verify(BUNDLES)
        assert not report.missing
        structure = findings(report, "structure")
        assert ("web", "iptables mangle: PREROUTING jumps to LVSFW-PREROUTING 0 times"
                " (all ports: tcp:80,443)") in structure, report  # fmt: skip
        # only the IPv4 jump is gone: bundles without an IPv4 VIP are not blamed
        assert "ftp6" not in {bundle for bundle, _ in structure}, report
        assert d.plan(BUNDLES).repair
    repaired(d)


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_foreign_rule_overriding_in_the_same_hook(netns: Netns, fake: Path, firewall: str) -> None:
    d = applied(netns, fake, firewall)
    if firewall == "nftables":
        netns.nft("table inet intruder {\n\tchain pre {\n\t\ttype filter hook prerouting"
                  " priority -140; policy accept;\n\t\tmeta mark set 0x1\n\t}\n}\n")  # fmt: skip
        override = findings(d.verify(BUNDLES), "override")
        assert {b for b, _ in override} == {b.name for b in BUNDLES}
        assert all("inet intruder pre re-marks packets" in x for _, x in override), override
    else:
        ipt(netns, firewall, "-A", "PREROUTING", "-d", "192.0.2.10/32", "-p", "tcp",
            "--dport", "80", "-j", "MARK", "--set-mark", "1")  # fmt: skip
        override = findings(d.verify(BUNDLES), "override")
        assert len(override) == 1 and override[0][0] == "web", override
        assert "after lvsfw's jump overrides" in override[0][1]
        assert override[0][1].endswith("(tcp:80)")
        ipt(netns, firewall, "-I", "PREROUTING", "1", "-j", "ACCEPT")
        override = findings(d.verify(BUNDLES), "override")
        skipping = [x for x in override if "before lvsfw's jump skips" in x[1]]
        # an iptables (IPv4) ACCEPT skips the marks of every bundle with an IPv4 VIP only
        ipv4 = {b.name for b in BUNDLES if any(v.version == 4 for v in b.vips)}
        assert {b for b, _ in skipping} == ipv4 and "ftp6" not in ipv4, override
    assert not d.plan(BUNDLES)  # foreign rules are reported, never "repaired"


def test_ipvs_drift(netns: Netns, fake: Path) -> None:
    d = applied(netns, fake, "nftables")

    def ipvsadm(*args: str) -> None:
        subprocess.run([str(fake), *args], check=True)

    ipvsadm("-D", "-f", "53", "-6")
    ipvsadm("-E", "-f", "80", "-s", "rr")  # persistence dropped, scheduler changed
    ipvsadm("-d", "-f", "80", "-r", "10.0.0.12:0")
    ipvsadm("-a", "-f", "80", "-r", "10.0.0.99:0", "-g", "-w", "1")
    ipvsadm("-e", "-f", "80", "-r", "10.0.0.11:0", "-m", "-w", "7")
    report = d.verify(BUNDLES)
    assert findings(report, "service-missing") == [
        ("dns", "fwmark 53 ipv6 (tcp:53 udp:53) has no IPVS service")
    ], report
    [(bundle, detail)] = findings(report, "service-changed")
    assert bundle == "web" and detail.startswith("fwmark 80 ipv4 (tcp:80,443): ")
    for part in (
        "scheduler is rr, want wlc",
        "persistence is None, want 300",
        "real server 10.0.0.12 missing",
        "real server 10.0.0.99 not wanted",
        "real server 10.0.0.11 differs",
    ):
        assert part in detail, detail
    assert report.changed and not report.ok
    plan = d.plan(BUNDLES)
    assert {(s.mark, str(s.family)) for s in plan.add_services} == {(53, "ipv6")}
    assert {(s.mark, str(s.family)) for s in plan.change_services} == {(80, "ipv4")}
    repaired(d)


@pytest.mark.parametrize("firewall", list(IPT))
def test_unknown_rule_inside_own_chain_is_reported_and_repaired(
    netns: Netns, fake: Path, firewall: str
) -> None:
    """A rule lvsfw did not write, placed inside its own chain, is drift, not a crash."""
    d = applied(netns, fake, firewall)
    ipt(
        netns, firewall, "-I", "LVSFW-PREROUTING", "1", "-p", "tcp", "--dport", "80", "-j", "ACCEPT"
    )
    report = d.verify(BUNDLES)
    structure = findings(report, "structure")
    assert any("--dport 80 -j ACCEPT" in detail for _, detail in structure), report
    repaired(d)
