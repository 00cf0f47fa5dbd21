"""Fault injection into Director.apply: every failure leaves the kernel as it was.

"As it was" is checked on everything an apply may touch: the nft ruleset (with handles), the
mangle tables of both iptables flavours and families, the fake IPVS table and the raw state
file. Faults: the kernel rejecting the change (a real collision in each packet filter), the
step hook raising at every step, ``ipvsadm`` failing at every mutating call of an apply,
``ipvsadm`` or IPVS missing, IPVS vanishing in the middle (undo impossible), and SIGKILL
between steps (no undo possible: the next apply or destroy converges instead).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lvsfw import BackendUnavailable, Bundle, CommandFailed, specify
from lvsfw.director import STEPS
from lvsfw.rules import normalize
from lvsfw.state import load
from tests import fake_ipvsadm, test_director
from tests.netlab import LabError
from tests.test_director import (
    BUNDLES,
    CHANGED,
    FIREWALLS,
    FOREIGN_IPVS,
    FTP6,
    Netns,
    assert_same,
    child,
    director,
    ipvs_services,
    log,
    servers,
    snapshot,
    wanted_services,
)

pytestmark = pytest.mark.kernel
netns = test_director.netns  # the fixtures
fake = test_director.fake

NEW6 = Bundle("new6", "2001:db8::60", "tcp:60", 60, real_servers=servers("2001:db8:1::60"))
#: From BUNDLES: every IPv4 rule removed (web, dns and ftp go), one IPv6 bundle added.
V6_ONLY = [FTP6, NEW6]


def fill_prerouting_hook(ns: Netns) -> None:
    """Fill the IPv4 prerouting hook to the kernel's limit (1024 hook entries per hook point)
    with foreign nft base chains: one more base chain there is refused with E2BIG."""
    ns.nft("table ip filler {\n" + "".join(
        f"\tchain c{i} {{ type filter hook prerouting priority {i}; }}\n" for i in range(1000)
    ) + "}\n")  # fmt: skip
    for i in range(1000, 1100):
        try:
            ns.nft(f"add chain ip filler c{i} {{ type filter hook prerouting priority {i}; }}\n")
        except LabError:
            return
    raise AssertionError("the prerouting hook never filled up")


def test_nftables_rejection_is_caught_by_the_check(netns: Netns, fake: Path) -> None:
    """The prerouting hook is full of foreign base chains: the dry run fails with the
    kernel's own message before any IPVS service is touched, and nothing changes."""
    fill_prerouting_hook(netns)
    d = director(netns, fake)
    before = snapshot(netns, fake, d)
    with pytest.raises(CommandFailed, match="Argument list too long") as failed:
        d.apply(BUNDLES)
    assert "--check" in failed.value.argv
    assert_same(before, snapshot(netns, fake, d))
    assert log(fake) == []


@pytest.mark.parametrize("firewall", ["iptables-legacy", "iptables-nft"])
def test_iptables_rejection_leaves_everything(netns: Netns, fake: Path, firewall: str) -> None:
    """A foreign chain jumps to LVSFW-PREROUTING, so removing lvsfw's IPv4 chain is refused.

    iptables-legacy-restore --test sees it (libiptc counts references): caught by the check,
    no IPVS call at all. iptables-nft-restore --test does not reach the kernel, which refuses
    at commit (EBUSY): IPVS was already changed, and is undone.
    """
    d = director(netns, fake, firewall)
    d.apply(BUNDLES)
    flavour = firewall.split("-")[1]
    netns.xt(flavour, "ip", "*mangle\n:FOREIGN-REF - [0:0]\n-A FOREIGN-REF -j LVSFW-PREROUTING\n"
             "COMMIT\n")  # fmt: skip
    before, calls = snapshot(netns, fake, d), len(log(fake))
    message = r"line \d+ failed" if flavour == "legacy" else "Device or resource busy"
    with pytest.raises(CommandFailed, match=message):
        d.apply(V6_ONLY)
    assert_same(before, snapshot(netns, fake, d))
    if flavour == "legacy":
        assert len(log(fake)) == calls  # checked before anything was written
    else:
        assert len(log(fake)) > calls  # written, then undone


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("firewall", FIREWALLS)
def test_failure_at_each_step_is_undone(netns: Netns, fake: Path, firewall: str, step: str) -> None:
    d = director(netns, fake, firewall)
    d.apply(BUNDLES)
    before = snapshot(netns, fake, d)

    def hook(name: str) -> None:
        if name == step:
            raise RuntimeError(f"injected at {name}")

    d.step_hook = hook
    with pytest.raises(RuntimeError, match=f"injected at {step}"):
        d.apply(CHANGED)
    assert_same(before, snapshot(netns, fake, d))
    d.step_hook = None
    d.apply(CHANGED)
    assert d.verify(CHANGED).ok


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_ipvsadm_failing_at_every_call_is_undone(netns: Netns, fake: Path, firewall: str) -> None:
    """The Nth mutating ipvsadm call of the apply fails, for every N the apply makes."""
    d = director(netns, fake, firewall)
    d.apply(BUNDLES)
    before = snapshot(netns, fake, d)
    n = 0
    while True:
        n += 1
        fake_ipvsadm.update(fake, fail_at=fake_ipvsadm.state_of(fake)["calls"] + n)
        try:
            d.apply(CHANGED)
        except CommandFailed as exc:
            assert "Memory allocation problem" in exc.stderr
            assert_same(before, snapshot(netns, fake, d))
            continue
        break
    assert n > 6, "the apply should need several ipvsadm calls"
    assert d.verify(CHANGED).ok and ipvs_services(fake) == wanted_services(CHANGED)


def test_ipvsadm_or_ipvs_missing(netns: Netns, fake: Path, tmp_path: Path) -> None:
    d = director(netns, fake)
    d.apply(BUNDLES)
    before = snapshot(netns, fake, d)
    missing = director(netns, fake, ipvsadm=str(tmp_path / "nowhere" / "ipvsadm"), fast=False)
    with pytest.raises(BackendUnavailable, match="not found; apt-get install ipvsadm"):
        missing.apply(CHANGED)
    fake_ipvsadm.update(fake, absent=True)
    with pytest.raises(BackendUnavailable, match="the kernel has no IPVS"):
        d.apply(CHANGED)
    with pytest.raises(BackendUnavailable):
        d.destroy()
    fake_ipvsadm.update(fake, absent=False)
    assert_same(before, snapshot(netns, fake, d))


def test_ipvs_vanishing_mid_apply_keeps_pending_ownership(netns: Netns, fake: Path) -> None:
    """IPVS gone after services were added: undo cannot reach it, so the state file keeps the
    pending ownership; once IPVS is back, apply converges and destroy removes everything."""
    d = director(netns, fake)
    d.apply(BUNDLES)
    foreign = netns.filters(own=False)

    def vanish(step: str) -> None:
        if step == "ipvs-remove":
            fake_ipvsadm.update(fake, absent=True)

    d.step_hook = vanish
    with pytest.raises(BackendUnavailable) as failed:
        d.apply(CHANGED)
    assert any("undo failed too" in note for note in failed.value.__notes__)
    assert normalize(d.firewall.read()) == normalize(specify(BUNDLES).rules)  # marks undone
    pending = load(d.state_file)
    assert pending.pending and (25 in {m for _, m in pending.services})  # smtp was added
    fake_ipvsadm.update(fake, absent=False)
    d.step_hook = None
    d.apply(BUNDLES)  # smtp's orphan service goes: lvsfw still owns it
    assert d.verify(BUNDLES).ok and ipvs_services(fake) == wanted_services(BUNDLES)
    assert not load(d.state_file).pending
    d.destroy()
    assert netns.filters() == foreign and fake_ipvsadm.table(fake) == FOREIGN_IPVS


def test_switching_packet_filter_undone_on_failure(netns: Netns, fake: Path) -> None:
    """lvsfw moves its marks from nftables to iptables-legacy; a failure after the old
    table was removed puts it back, and a successful switch leaves only the new rules."""
    director(netns, fake, "nftables").apply(BUNDLES)
    d = director(netns, fake, "iptables-legacy")
    before = snapshot(netns, fake, d)

    def fail_at_commit(step: str) -> None:
        if step == "commit":
            raise RuntimeError(step)

    d.step_hook = fail_at_commit
    with pytest.raises(RuntimeError):
        d.apply(BUNDLES)
    assert_same(before, snapshot(netns, fake, d))
    d.step_hook = None
    assert d.apply(BUNDLES).rules_changed
    assert "lvsfw" not in netns.filters()["nft"]
    assert d.verify(BUNDLES).ok
    d.destroy()
    assert netns.filters() == netns.filters(own=False)


# -- SIGKILL between steps ----------------------------------------------------------------

KILLS = [("nftables", step) for step in STEPS] + [
    ("iptables-legacy", "ipvs-remove"), ("iptables-nft", "marks"),
]  # fmt: skip


@pytest.mark.parametrize(("firewall", "step"), KILLS)
def test_sigkill_between_steps_then_converge(
    netns: Netns, fake: Path, firewall: str, step: str
) -> None:
    """The guarantee after SIGKILL (no undo can run): the lock is released by the kernel, the
    state file names every IPVS service the killed apply may have created (``pending``), each
    packet-filter write was atomic, and foreign state is untouched; so the next apply -- of
    any bundles, here the *old* ones -- converges, and destroy removes everything lvsfw made."""
    d = director(netns, fake, firewall, lock_timeout=5)
    d.apply(BUNDLES)
    foreign = netns.filters(own=False)
    proc = child(d, "changed", kill=step)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -9, err
    assert load(d.state_file).pending
    assert netns.filters(own=False) == foreign
    d.apply(BUNDLES)  # back to the old bundles: services the killed apply added must go
    assert d.verify(BUNDLES).ok, d.verify(BUNDLES)
    assert ipvs_services(fake) == wanted_services(BUNDLES)
    assert normalize(d.firewall.read()) == normalize(specify(BUNDLES).rules)
    assert not load(d.state_file).pending
    d.destroy()
    assert netns.filters() == foreign and fake_ipvsadm.table(fake) == FOREIGN_IPVS
    assert json.loads(Path(d.state_file).read_text())["services"] == []


def test_first_apply_failing_leaves_no_state_file(netns: Netns, fake: Path) -> None:
    """Undo restores the state file exactly: absent before, absent after."""
    d = director(netns, fake)
    before = snapshot(netns, fake, d)

    def hook(step: str) -> None:
        if step == "ipvs-remove":
            raise KeyboardInterrupt

    d.step_hook = hook
    with pytest.raises(KeyboardInterrupt):
        d.apply(BUNDLES)
    assert before["state"] is None
    assert_same(before, snapshot(netns, fake, d))
