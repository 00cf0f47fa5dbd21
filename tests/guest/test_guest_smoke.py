"""Smoke test: the VM's kernel has a working IPVS and nftables inside a network namespace."""

from __future__ import annotations

import subprocess

import pytest

pytestmark = pytest.mark.kernel

NFT_RULES = """
table inet lvsfw_smoke {
    chain pre {
        type filter hook prerouting priority mangle; policy accept;
        ip daddr 10.0.0.100 tcp dport { 80, 443 } meta mark set 80
    }
}
"""


def run(argv: list[str], netns: str = "", stdin: str = "") -> str:
    """Run ``argv`` (inside ``netns`` if given) and return stdout; fail the test on error."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else argv
    proc = subprocess.run(full, input=stdin, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{full} failed ({proc.returncode}): {proc.stderr.strip()}"
    return proc.stdout


def test_ipvs_fwmark_service_round_trips(netns: str) -> None:
    """An fwmark service with persistence and a NAT real server reads back from ``-Sn``."""
    run(["ip", "-n", netns, "link", "add", "dummy0", "type", "dummy"])
    run(["ip", "-n", netns, "addr", "add", "10.0.0.1/24", "dev", "dummy0"])
    run(["ip", "-n", netns, "link", "set", "dummy0", "up"])
    run(["ipvsadm", "-A", "-f", "80", "-s", "rr", "-p", "300"], netns)
    run(["ipvsadm", "-a", "-f", "80", "-r", "10.0.0.11:0", "-m"], netns)
    lines = run(["ipvsadm", "-Sn"], netns).splitlines()
    assert lines == ["-A -f 80 -s rr -p 300", "-a -f 80 -r 10.0.0.11:0 -m -w 1"]


def test_ipvs_is_per_namespace(netns: str) -> None:
    """A service created in the namespace is invisible from a second, fresh namespace."""
    run(["ipvsadm", "-A", "-f", "81", "-s", "wlc"], netns)
    assert "-A -f 81 -s wlc" in run(["ipvsadm", "-Sn"], netns)
    other = netns + "b"
    run(["ip", "netns", "add", other])
    try:
        assert run(["ipvsadm", "-Sn"], other).strip() == ""
    finally:
        run(["ip", "netns", "del", other])


def test_nft_mark_rule_loads(netns: str) -> None:
    """An nftables rule setting fwmark 80 loads in the same namespace as the IPVS service."""
    run(["ipvsadm", "-A", "-f", "80", "-s", "rr"], netns)
    run(["nft", "-f", "-"], netns, stdin=NFT_RULES)
    listed = run(["nft", "list", "table", "inet", "lvsfw_smoke"], netns)
    assert "meta mark set 0x00000050" in listed
    assert "tcp dport { 80, 443 }" in listed
