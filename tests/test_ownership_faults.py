"""A killed apply never orphans lvsfw's rules (issue 9, item 2), and destroy without IPVS.

The fault matrix: for a first apply on each packet filter and for each switch of packet
filter, a child process applies and is killed (SIGKILL, no undo can run) before each step of
:data:`lvsfw.director.STEPS`. Then ``show`` and ``verify`` (fresh ``lvsfw`` processes) must
see what the killed apply may have left, and a plain ``lvsfw destroy`` (no ``--firewall``)
must leave nothing of lvsfw's in any packet filter, foreign state byte-identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lvsfw.director import STEPS
from lvsfw.state import load
from tests import fake_ipvsadm, test_director
from tests.test_director import BUNDLES, FOREIGN_IPVS, Netns, child, director

pytestmark = pytest.mark.kernel
netns = test_director.netns  # the fixtures
fake = test_director.fake
LVSFW = Path(sys.executable).parent / "lvsfw"

#: (packet filter of a first, successful apply or None, packet filter of the killed apply).
SWITCHES = [
    (None, "nftables"),
    (None, "iptables-nft"),
    (None, "iptables-legacy"),
    ("nftables", "iptables-nft"),
    ("iptables-nft", "nftables"),
    ("iptables-legacy", "nftables"),
    ("nftables", "iptables-legacy"),
]
CASES = [(before, after, step) for before, after in SWITCHES for step in STEPS]


def cli(d_state: str, ns: Netns, fake: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``lvsfw ARGS --netns NS`` as a fresh process, on the test's state file and fake."""
    argv = [str(LVSFW), *args, "--netns", ns.name, "--state-file", d_state]
    argv += ["--ipvsadm", str(fake), "--lock-dir", str(Path(d_state).parent)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def config_file(tmp_path: Path) -> Path:
    """BUNDLES as a TOML config (what show and verify are given)."""
    from lvsfw import config

    path = tmp_path / "lvsfw.toml"
    path.write_text(config.dumps(BUNDLES), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-to-{c[1]}-killed-at-{c[2]}")
def test_killed_apply_then_plain_destroy_leaves_nothing(
    netns: Netns, fake: Path, tmp_path: Path, case: tuple[str | None, str, str]
) -> None:
    before, after, step = case
    foreign = netns.filters(own=False)
    if before is not None:
        director(netns, fake, before).apply(BUNDLES)
    killed = director(netns, fake, after, lock_timeout=5)
    proc = child(killed, "bundles", kill=step)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -9, err
    recorded = load(killed.state_file)
    assert recorded.pending and after in recorded.filters
    if step in ("ipvs-remove", "commit"):  # the marks were written: every view must see them
        shown = cli(killed.state_file, netns, fake, "show", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["rules"], shown.stdout
    if before is not None and step in ("ipvs-remove", "commit"):
        verified = cli(killed.state_file, netns, fake, "verify", str(config_file(tmp_path)))
        assert verified.returncode == 3, verified.stdout + verified.stderr
        # verify runs on the recorded (old) filter and names the one holding the new rules
        assert f"{after} still holds" in verified.stdout, verified.stdout
    destroyed = cli(killed.state_file, netns, fake, "destroy", "--yes")
    assert destroyed.returncode == 0, destroyed.stderr
    assert netns.filters() == foreign, "lvsfw's rules or sets were left behind"
    assert fake_ipvsadm.table(fake) == FOREIGN_IPVS
    assert not load(killed.state_file).pending


def test_killed_switch_then_apply_converges(netns: Netns, fake: Path) -> None:
    """The next apply after a killed switch removes what the killed one wrote in the old and
    in the new filter, whichever it is run with."""
    foreign = netns.filters(own=False)
    director(netns, fake, "iptables-nft").apply(BUNDLES)
    killed = director(netns, fake, "nftables", lock_timeout=5)
    proc = child(killed, "bundles", kill="ipvs-remove")
    assert proc.wait(60) == -9
    again = director(netns, fake, "iptables-legacy")
    again.apply(BUNDLES)
    assert again.verify(BUNDLES).ok, again.verify(BUNDLES)
    state = load(again.state_file)
    assert state.filters == {"iptables-legacy"} and not state.pending
    again.destroy()
    assert netns.filters() == foreign


def test_destroy_after_marks_only_apply_does_not_need_ipvs(netns: Netns, fake: Path) -> None:
    """Item 12: the state records no IPVS service, so destroy never calls ipvsadm."""
    marks_only = director(netns, fake, ipvs=False)
    marks_only.apply(BUNDLES)
    fake_ipvsadm.update(fake, absent=True)  # a host without IPVS: every ipvsadm call fails
    with_ipvs = director(netns, fake)  # as `lvsfw destroy` builds it: IPVS on by default
    with_ipvs.destroy()  # raised BackendUnavailable ("the kernel has no IPVS") before
    assert netns.filters() == netns.filters(own=False)
