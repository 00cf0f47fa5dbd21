"""verify sees foreign re-marks it can read (issue 9, item 4): a later prerouting chain that
sets the mark itself, through a jump, goto or verdict map (nftables), a foreign user chain
jumped to after lvsfw's jump (iptables), or a native nft prerouting chain after mangle seen
from the iptables backends. Each is drift of kind ``override`` naming the foreign chain (exit 3
through the CLI), never repaired; earlier chains, other hooks and chains that set no mark are
not reported. Kernel tests run in throwaway namespaces (the ``netns`` fixture of
tests/test_director.py, which also installs foreign rules at an earlier priority)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from lvsfw import Director
from lvsfw.backends import iptables as iptables_module
from lvsfw.backends.base import Finding
from lvsfw.backends.remarks import Words, native_overrides, nft_overrides, xt_overrides
from lvsfw.enums import Family
from tests import test_director
from tests.netlab import ensure_kernel, xtables_tools
from tests.test_cli import WEB
from tests.test_director import BUNDLES, Netns, director

netns = test_director.netns  # the fixtures
fake = test_director.fake

IPTABLES = ("iptables-nft", "iptables-legacy")
LVSFW = Path(sys.executable).parent / "lvsfw"
#: A native nft table whose prerouting chain (priority 10, after mangle) re-marks through a
#: regular chain, in the way named: ``jump``, ``goto`` or a verdict map.
LATE = """\
table inet late {{
\tmap verdicts {{ type inet_service : verdict; elements = {{ 80 : jump remark }}; }}
\tchain remark {{ meta mark set 0x99; }}
\tchain pre {{
\t\ttype filter hook prerouting priority 10; policy accept;
\t\t{how}
\t}}
}}
"""
HOW = {
    "jump": "jump remark",
    "goto": "tcp dport 443 goto remark",
    "vmap": "tcp dport vmap @verdicts",
    "direct": "meta mark set 0x99",
}
#: Foreign chains that must not be reported: earlier priority, another hook, no mark set
#: (the conntrack mark, a counter), and a chain lvsfw's hook sees after no later one.
HARMLESS = """\
table inet early {
\tchain remark { meta mark set 0x99; }
\tchain pre { type filter hook prerouting priority -200; policy accept; jump remark; }
\tchain input { type filter hook input priority 10; policy accept; jump remark; }
\tchain quiet { ct mark set 0x5; counter; }
\tchain late { type filter hook prerouting priority 10; policy accept; jump quiet; }
}
"""


def overrides(d: Director) -> list[tuple[str, str]]:
    """(bundle, detail) of the ``override`` drift ``d.verify`` reports."""
    return [(x.bundle, x.detail) for x in d.verify(BUNDLES).drift if x.kind == "override"]


def applied(ns: Netns, fake: Path, firewall: str) -> Director:
    """A Director on ``ns`` that applied :data:`BUNDLES`: verify finds no drift."""
    if firewall != "nftables":
        ensure_kernel(xtables_tools(firewall.split("-")[1]))
    d = director(ns, fake, firewall)
    d.apply(BUNDLES)
    report = d.verify(BUNDLES)
    assert report.ok, report
    return d


def ipt(ns: Netns, firewall: str, *rules: str, ips: tuple[str, ...] = ("ip", "ip6")) -> None:
    """``(ip|ip6)tables-restore --noflush`` of mangle ``rules`` for the families ``ips``, in
    ``firewall``'s flavour."""
    text = "*mangle\n" + "".join(f"{rule}\n" for rule in rules) + "COMMIT\n"
    for ip in ips:
        ns.xt(firewall.split("-")[1], ip, text)


def all_blamed(found: list[tuple[str, str]], needle: str) -> None:
    """Every bundle is blamed by a finding containing ``needle``, and only such findings."""
    assert found and all(needle in detail for _, detail in found), found
    assert {bundle for bundle, _ in found} == {b.name for b in BUNDLES}, found


# -- (a) nftables: a later base chain re-marking through a jump, goto or verdict map --------


@pytest.mark.kernel
@pytest.mark.parametrize("how", list(HOW))
def test_nftables_later_chain_re_marking_through_a_jump(netns: Netns, fake: Path, how: str) -> None:
    d = applied(netns, fake, "nftables")
    netns.nft(LATE.format(how=HOW[how]))
    found = overrides(d)
    via = "" if how == "direct" else ", through chain remark"
    all_blamed(found, f"foreign chain inet late pre re-marks packets after lvsfw's"
                      f" (prerouting, priority 10{via}): meta mark set 0x99")  # fmt: skip
    assert not d.plan(BUNDLES)  # reported, never "repaired"
    d.apply(BUNDLES)
    assert "table inet late" in netns.exec("nft", "list", "tables")  # left alone


# -- (b) iptables: a foreign user chain jumped to after lvsfw's jump ----------------------


@pytest.mark.kernel
@pytest.mark.parametrize("firewall", IPTABLES)
def test_iptables_user_chain_after_the_jump_re_marks(
    netns: Netns, fake: Path, firewall: str
) -> None:
    d = applied(netns, fake, firewall)
    ipt(netns, firewall, ":FOREIGN-OUTER - [0:0]", ":FOREIGN-INNER - [0:0]",
        "-A FOREIGN-INNER -j CONNMARK --restore-mark",
        "-A FOREIGN-OUTER -p tcp -m comment --comment foreign",
        "-A FOREIGN-OUTER -p tcp --dport 443 -g FOREIGN-INNER",
        "-A PREROUTING -d 192.0.2.10/32 -j FOREIGN-OUTER", ips=("ip",))  # fmt: skip
    found = overrides(d)
    # narrowed by the -d of PREROUTING's rule and the port of FOREIGN-OUTER's
    assert len(found) == 1 and found[0][0] == "web", found
    assert found[0][1] == (
        "foreign chain FOREIGN-INNER overrides lvsfw's marks after its jump (reached by:"
        " -A PREROUTING -d 192.0.2.10/32 -j FOREIGN-OUTER): -A FOREIGN-INNER -j CONNMARK"
        " --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff (tcp:443)"
    ), found
    assert not d.plan(BUNDLES)
    ipt(netns, firewall, ":FOREIGN-ALL - [0:0]", "-A FOREIGN-ALL -j MARK --set-mark 0x99",
        "-A PREROUTING -j FOREIGN-ALL")  # fmt: skip
    every = [x for x in overrides(d) if "foreign chain FOREIGN-ALL overrides" in x[1]]
    assert {b for b, _ in every} == {b.name for b in BUNDLES}, every  # IPv4 and IPv6


@pytest.mark.kernel
@pytest.mark.parametrize("firewall", IPTABLES)
def test_iptables_chains_that_cannot_override_are_not_reported(
    netns: Netns, fake: Path, firewall: str
) -> None:
    """A chain jumped to before lvsfw's jump may set the mark (lvsfw marks later) or accept
    (an ssh rule: packets lvsfw may never mark); one after it may save the mark to conntrack
    or accept. None of them overrides a bundle's mark."""
    d = applied(netns, fake, firewall)
    ipt(netns, firewall, ":FOREIGN-EARLY - [0:0]", ":FOREIGN-QUIET - [0:0]",
        "-A FOREIGN-EARLY -j MARK --set-mark 0x99", "-A FOREIGN-EARLY -p tcp --dport 22 -j ACCEPT",
        "-I PREROUTING 1 -j FOREIGN-EARLY",
        "-A FOREIGN-QUIET -j CONNMARK --save-mark", "-A FOREIGN-QUIET -j ACCEPT",
        "-A PREROUTING -j FOREIGN-QUIET")  # fmt: skip
    assert d.verify(BUNDLES).ok, d.verify(BUNDLES)
    ipt(netns, firewall, "-A FOREIGN-QUIET -j MARK --set-mark 0x98")  # now it does
    found = overrides(d)
    assert {b for b, _ in found} == {b.name for b in BUNDLES}, found
    assert all("foreign chain FOREIGN-QUIET overrides" in x for _, x in found), found


# -- (c) iptables backends: native nft chains after mangle ---------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("firewall", IPTABLES)
def test_iptables_native_nft_chain_after_mangle_re_marks(
    netns: Netns, fake: Path, firewall: str
) -> None:
    d = applied(netns, fake, firewall)
    netns.nft("table inet foreign2 { chain pre { type filter hook prerouting priority 10;"
              " meta mark set 0x99; }; }\n")  # fmt: skip
    all_blamed(overrides(d), "foreign chain inet foreign2 pre re-marks packets after lvsfw's"
                             " (prerouting, priority 10): meta mark set 0x99")  # fmt: skip
    assert not d.plan(BUNDLES)
    netns.nft("delete table inet foreign2\n"
              "table ip v4only { chain pre { type filter hook prerouting priority -150;"
              " jump remark; }; chain remark { meta mark set 0x98; }; }\n")  # fmt: skip
    found = overrides(d)
    # an ip (IPv4) table blames the bundles with an IPv4 VIP only
    assert {b for b, _ in found} == {"web", "dns", "ftp"}, found
    assert all("foreign chain ip v4only pre re-marks" in x for _, x in found), found


@pytest.mark.kernel
@pytest.mark.parametrize("firewall", ["nftables", *IPTABLES])
def test_earlier_other_hook_and_markless_chains_are_not_reported(
    netns: Netns, fake: Path, firewall: str
) -> None:
    d = applied(netns, fake, firewall)  # the fixture's own foreign chain is at mangle - 5
    netns.nft(HARMLESS)
    report = d.verify(BUNDLES)
    assert report.ok, report


@pytest.mark.kernel
@pytest.mark.parametrize("firewall", IPTABLES)
def test_apply_and_plan_do_not_list_native_chains(
    netns: Netns, fake: Path, firewall: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extra nf_tables listing is verify's alone: apply and plan never make it."""
    d = applied(netns, fake, firewall)
    calls: list[Optional[str]] = []

    def counted(ns: Optional[str]) -> list[Finding]:
        calls.append(ns)
        return native_overrides(ns)

    monkeypatch.setattr(iptables_module, "native_overrides", counted)
    d.apply([*BUNDLES[:2]])
    d.plan(BUNDLES)
    assert calls == []
    d.verify(BUNDLES)
    assert calls == [netns.name]


# -- the command, as a fresh process --------------------------------------------------------


SETUPS = {
    "nftables-jump": ("nftables", "nft", LATE.format(how=HOW["jump"]), "chain inet late pre"),
    "iptables-nft-user-chain": (
        "iptables-nft", "xt", "*mangle\n:FOREIGN-LATE - [0:0]\n-A FOREIGN-LATE -j MARK"
        " --set-mark 0x99\n-A PREROUTING -j FOREIGN-LATE\nCOMMIT\n", "chain FOREIGN-LATE",
    ),
    "iptables-nft-native": (
        "iptables-nft", "nft", LATE.format(how=HOW["direct"]), "chain inet late pre",
    ),
    "iptables-legacy-native": (
        "iptables-legacy", "nft", LATE.format(how=HOW["goto"]), "chain inet late pre",
    ),
}  # fmt: skip


@pytest.mark.kernel
@pytest.mark.parametrize("setup", list(SETUPS))
def test_cli_verify_exits_3_naming_the_foreign_chain(
    netns: Netns, tmp_path: Path, setup: str
) -> None:
    firewall, kind, script, needle = SETUPS[setup]
    if firewall != "nftables":
        ensure_kernel(xtables_tools(firewall.split("-")[1]))
    config = tmp_path / "web.toml"
    config.write_text(WEB)
    flags = ["--netns", netns.name, "--firewall", firewall, "--no-ipvs",
             "--state-file", str(tmp_path / "state.json"), "--lock-dir", str(tmp_path)]  # fmt: skip

    def lvsfw(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(LVSFW), *args, *flags]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)

    assert lvsfw("apply", str(config), "--yes").returncode == 0
    clean = lvsfw("verify", str(config))
    assert (clean.returncode, clean.stdout) == (0, "ok: no drift\n"), clean
    if kind == "nft":
        netns.nft(script)
    else:
        netns.xt("nft", "ip", script)
    drift = lvsfw("verify", str(config))
    assert drift.returncode == 3, drift
    assert f"override: foreign {needle}" in drift.stdout, drift.stdout
    assert "Traceback" not in drift.stderr


# -- the walkers, without a kernel -----------------------------------------------------------


def test_xt_walk_has_a_cycle_guard_and_never_enters_lvsfws_chain() -> None:
    """Chains jumping to each other are walked once each; lvsfw's own chain never."""
    others = [
        "-A A -j B", "-A B -j A", "-A B -j LVSFW-PREROUTING", "-A B -p tcp -j MARK --set-mark 1",
        "-A LVSFW-PREROUTING -j MARK --set-mark 2",
    ]  # fmt: skip
    found = xt_overrides([], ["-A PREROUTING -j A"], others, "LVSFW-PREROUTING")
    assert [detail.rsplit(": ", 1)[1] for detail, _ in found] == [
        "-A B -p tcp -j MARK --set-mark 1"
    ]
    assert "-p" in found[0][1] and "tcp" in found[0][1]


def test_xt_negated_options_do_not_narrow() -> None:
    found = xt_overrides([], ["-A PREROUTING ! -d 192.0.2.10/32 -j A"],
                         ["-A A -j MARK --set-mark 1"], "LVSFW-PREROUTING")  # fmt: skip
    assert len(found) == 1 and "-d" not in found[0][1]


def test_nft_walk_follows_jumps_maps_once_and_skips_tables() -> None:
    """A diamond and a loop of jumps (which the kernel refuses, the walker survives) reach the
    marking rule once; skipped tables and earlier priorities are never listed."""
    chains: dict[tuple[str, ...], list[Any]] = {
        ("inet", "t", "pre"): [{"jump": {"target": "a"}}, {"goto": {"target": "b"}}],
        ("inet", "t", "a"): [{"vmap": {"key": 1, "data": "@m"}}],
        ("inet", "t", "b"): [{"jump": {"target": "a"}}, {"mangle": {
            "key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 4]}}}],
    }  # fmt: skip
    listed: list[Words] = []

    def read(words: Words) -> list[Any]:
        listed.append(words)
        if words == ("list", "chains"):
            return [
                {"chain": {"family": "inet", "table": "t", "name": "pre", "hook": "prerouting",
                           "prio": -150}},
                {"chain": {"family": "inet", "table": "lvsfw", "name": "prerouting",
                           "hook": "prerouting", "prio": -150}},
                {"chain": {"family": "ip", "table": "e", "name": "pre", "hook": "prerouting",
                           "prio": -151}},
                {"chain": {"family": "netdev", "table": "n", "name": "i", "hook": "ingress",
                           "prio": 0}},
            ]  # fmt: skip
        if words[1] == "map":
            return [{"map": {"name": "m", "elem": [[1, {"jump": {"target": "b"}}]]}}]
        key = words[2:]
        return [{"rule": {"expr": [e], "handle": i}} for i, e in enumerate(chains[key])]

    found = nft_overrides(read)
    assert [f.detail for f in found] == [
        "foreign chain inet t pre re-marks packets after lvsfw's (prerouting, priority -150,"
        " through chain a -> b): meta mark set meta mark | 0x4 (handle 1)"
    ]
    assert found[0].family is None
    assert sorted(set(listed)) == sorted(listed)  # each listing once
    assert not [w for w in listed if w[2:3] in (("lvsfw",), ("e",), ("n",))]


def test_nft_families_narrow_the_finding() -> None:
    def read(words: Words) -> list[Any]:
        if words == ("list", "chains"):
            return [{"chain": {"family": "ip6", "table": "t", "name": "pre",
                               "hook": "prerouting", "prio": 0}}]  # fmt: skip
        return [{"rule": {"expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1}}]}}]

    [finding] = nft_overrides(read)
    assert finding.family == Family.IPV6 and "(prerouting, priority 0)" in finding.detail
