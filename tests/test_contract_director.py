"""The one Director path over the backend contract (issue 10): halves handed in as backends,
``plan`` showing exactly what ``apply`` sends, and a newcomer's words for a first apply."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvsfw import Bundle, Director, config, specify
from lvsfw.backends.base import Change, Live
from lvsfw.backends.fake import FakeFilter, FakeKernel
from lvsfw.backends.fakeipvs import FakeServices
from lvsfw.backends.ipvs import Ipvs
from lvsfw.backends.nftables import Nftables
from tests.test_director import Netns, kernel_ready

LVSFW = Path(sys.executable).parent / "lvsfw"
WEB = Bundle("web", "192.0.2.10", "tcp:80,443", 80, real_servers=["10.0.0.11"])


@pytest.fixture
def ns() -> Iterator[Netns]:
    kernel_ready()
    space = Netns()
    try:
        yield space
    finally:
        space.close()


def test_halves_are_backends_and_the_old_flags_are_aliases(tmp_path: Path) -> None:
    kernel = FakeKernel()
    files = {"state_file": str(tmp_path / "s.json"), "lock_dir": str(tmp_path)}
    d = Director(FakeFilter(kernel), FakeServices(kernel), **files)
    d.apply([WEB])
    assert d.verify([WEB]).ok and kernel.rules["fake"]
    assert isinstance(Director("nftables", True, **files).services, Ipvs)
    assert isinstance(Director("nftables", "ipvsadm", **files).ipvs, Ipvs)
    for marks_only in (False, None, "none"):
        only = Director("nftables", marks_only, **files)
        assert only.ipvs is None and not only.services.manages


def test_values_are_typed_and_a_backend_refuses_anothers(ns: Netns) -> None:
    nft = Nftables(netns=ns.name)
    live = nft.observe()
    assert isinstance(live, Live)
    change = nft.diff(specify([]), live)
    assert change is None  # an empty table read back and an empty spec: nothing to send
    fake_live = FakeFilter(FakeKernel()).observe()
    with pytest.raises(TypeError, match="not a LiveState of this backend"):
        nft.diff(specify([]), fake_live)


def test_first_apply_creates_and_a_damaged_one_repairs(ns: Netns, tmp_path: Path) -> None:
    files = {"state_file": str(tmp_path / "s.json"), "lock_dir": str(tmp_path)}
    for firewall in ("nftables", "iptables-legacy"):
        d = Director(firewall, None, ns.name, **files)
        text = str(d.plan([WEB]))
        assert "create" in text and "repair" not in text, text
        d.apply([WEB])
        d.destroy()
    d = Director("nftables", None, ns.name, **files)
    d.apply([WEB])
    ns.exec("nft", "delete", "table", "inet", "lvsfw")
    assert "nftables: repair table inet lvsfw is missing" in str(d.plan([WEB]))


def test_plan_verbose_prints_exactly_what_apply_sends(ns: Netns, tmp_path: Path) -> None:
    cfg = tmp_path / "web.toml"
    cfg.write_text(config.dumps([WEB]), encoding="utf-8")
    files = ["--state-file", str(tmp_path / "s.json"), "--lock-dir", str(tmp_path)]
    argv = [str(LVSFW), "plan", str(cfg), "--verbose", "--netns", ns.name, "--no-ipvs", *files]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    script = done.stdout.split("# nftables\n", 1)[1].strip()
    d = Director("nftables", None, ns.name, state_file=str(tmp_path / "s.json"),
                 lock_dir=str(tmp_path))  # fmt: skip
    planned = d.plan([WEB]).scripts
    assert planned == (("nftables", script + "\n"),)  # the command strips the last newline
    assert script.startswith("table inet lvsfw {")  # a new table is sent as nft -f text
    d.apply([WEB])
    assert isinstance(d.firewall, Nftables)
    assert script + "\n" == d.firewall.last_transaction  # the very transaction sent
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and "#" not in again.stdout


def test_iptables_change_prints_the_tools_input(ns: Netns, tmp_path: Path) -> None:
    d = Director("iptables-nft", None, ns.name, state_file=str(tmp_path / "s.json"),
                 lock_dir=str(tmp_path))  # fmt: skip
    change = d.firewall.diff(specify([WEB]), d.firewall.observe())
    assert isinstance(change, Change)
    text = str(change)
    assert "# ipset -exist restore\ncreate lvsfw4-nft-new hash:ip,port" in text
    assert "# iptables-restore --noflush\n" in text and "-A LVSFW-PREROUTING" in text
    assert "reload" in str(change.inverse)

