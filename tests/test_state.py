"""The state file and the lock: strict parsing, atomic writes, keyed by namespace identity.

Issue 9: items 3 (lock and state keyed by the namespace, not its name), 5 (damaged state
files give one ``lvsfw:`` line, never a traceback), 6 (boot files never written through a
planted symlink) and 9 (every field of the state file validated strictly).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lvsfw import Bundle, Director, LvsfwError, specify
from lvsfw.enums import Family
from lvsfw.files import write_atomic
from lvsfw.lock import LockTimeout, lock_path, locked
from lvsfw.netns import identity, namespace_key
from lvsfw.state import State, load, save, state_path
from tests.test_director import BUNDLES, Netns, kernel_ready

LVSFW = Path(sys.executable).parent / "lvsfw"
IP, UNSHARE = shutil.which("ip") or "ip", shutil.which("unshare") or "unshare"
GOOD = {"version": 1, "firewall": "nftables", "pending": False,
        "services": [{"family": "ipv4", "mark": 80}]}  # fmt: skip


# -- item 9: strict fields -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mark", 1.5),
        ("mark", True),
        ("mark", -5),
        ("mark", 0),
        ("mark", 2**32),
        ("mark", "80"),
        ("family", "ipv5"),
        ("family", 4),
    ],
)
def test_bad_service_fields_are_refused(tmp_path: Path, field: str, value: object) -> None:
    data = json.loads(json.dumps(GOOD))
    data["services"][0][field] = value
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LvsfwError, match=f"state file .*damaged.*{field}"):
        load(str(path))


@pytest.mark.parametrize(
    "change",
    [
        {"pending": "no"},
        {"pending": 1},
        {"firewall": 7},
        {"firewall": "nft tables\n"},
        {"version": 4},
        {"version": True},
        {"services": {"family": "ipv4", "mark": 80}},
        {"services": [{"family": "ipv4", "mark": 80, "extra": 1}]},
        {"services": ["ipv4:80"]},
        {"objects": ["ipset:lvsfw4-nft\n"]},
        {"objects": "ipset:x"},
        {"firewalls": [None]},
        {"owner": "me"},
        {"ipvs": 1},
        {"ipvs": "keepalived:relative.conf"},
        {"ipvs": "keepalived:/etc/keepalived/x.conf\n"},
        {"ipvs": "Ipvs"},
    ],
)
def test_bad_top_level_fields_are_refused(tmp_path: Path, change: dict[str, object]) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(LvsfwError, match="damaged"):
        load(str(path))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"version": 1, "services": [{"family": "ipv4", "mark": 1e400}]}',  # OverflowError
        b'{"version": 1, "services": [{"family": "ipv4", "mark": Infinity}]}',
        b'{"version": 1, "firewall": "nft\xff\xfe", "services": []}',  # UnicodeDecodeError
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError
        b"",
        b"null",
    ],
)
def test_damaged_files_are_one_clear_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(raw)
    with pytest.raises(LvsfwError, match="damaged"):
        load(str(path))


def test_damaged_state_is_one_line_from_the_command(tmp_path: Path) -> None:
    """Item 5 through the front door: no traceback, one ``lvsfw:`` line, exit 2."""
    state = tmp_path / "state.json"
    state.write_bytes(b'{"version": 1, "services": [{"family": "ipv4", "mark": 1e400}]}')
    done = subprocess.run(
        [str(LVSFW), "show", "--state-file", str(state), "--no-ipvs", "--firewall", "nftables"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.startswith("lvsfw: state file") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_round_trip_and_version_1_files(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = State(
        frozenset({(Family.IPV4, 80), (Family.IPV6, 80)}),
        "iptables-nft",
        pending=True,
        firewalls=frozenset({"nftables", "iptables-nft"}),
        objects=frozenset({"ipset:lvsfw4-nft", "table:ip mangle"}),
        ipvs="keepalived:/etc/keepalived/lvsfw conf.d/lb1.conf",
    )
    save(str(path), state)
    assert load(str(path)) == state
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    path.write_text(json.dumps(GOOD))  # written by lvsfw before version 2
    old = load(str(path))
    assert old.filters == {"nftables"} and old.objects == frozenset()
    assert old.services == {(Family.IPV4, 80)}
    assert old.ipvs is None  # who made them was recorded from version 3 on


# -- item 6: atomic writes -----------------------------------------------------------------


def test_write_atomic_never_follows_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = tmp_path / "lvsfw.rules.v4"
    for planted in (f"{target}.tmp", f"{target}.new", str(tmp_path / f".{target.name}.tmp")):
        os.symlink(victim, planted)
    write_atomic(str(target), "new\n")
    assert victim.read_text() == "precious\n" and target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink()) == sorted(
        ["victim", "lvsfw.rules.v4"]
    )


def test_save_boot_files_do_not_write_through_a_link(tmp_path: Path) -> None:
    """``Director.save`` used ``open(path + ".tmp", "w")``: a link there was written through."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    boot = tmp_path / "boot"
    boot.mkdir()
    d = Director("nftables", ipvs=False, state_file=str(tmp_path / "s.json"))
    names = d.firewall.boot_files(specify(BUNDLES))
    for name in names:
        os.symlink(victim, boot / f"{name}.tmp")
    d.save(BUNDLES, str(boot))
    assert victim.read_text() == "precious\n"
    assert all((boot / name).read_text() == text for name, text in names.items())


# -- item 3: keyed by identity --------------------------------------------------------------


def test_keys_follow_the_namespace_not_the_path() -> None:
    kernel_ready()
    ns = Netns()
    try:
        inside = subprocess.run(
            [IP, "netns", "exec", ns.name, sys.executable, "-c",
             "from lvsfw.state import state_path; from lvsfw.lock import lock_path;"
             "print(state_path(None)); print(lock_path(None))"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.split()  # fmt: skip
        assert inside == [state_path(ns.name), lock_path(ns.name)]
        assert namespace_key(ns.name) == ns.name != namespace_key(None)
        assert identity(ns.name) != identity(None)
    finally:
        ns.close()


def test_unnamed_namespace_gets_its_own_key() -> None:
    """An unnamed namespace is told from PID 1's by identity where PID 1's can be read (in a
    restricted container it cannot: then it shares the default files, as documented)."""
    kernel_ready()
    out = subprocess.run(
        [UNSHARE, "--net", sys.executable, "-c",
         "from lvsfw.state import state_path; print(state_path(None))"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    if os.access("/proc/1/ns/net", os.R_OK):
        assert out.startswith("/var/lib/lvsfw/state-ns@") and out.endswith(".json")
    else:
        assert out == "/var/lib/lvsfw/state.json"


def test_exec_and_netns_flag_share_one_lock(tmp_path: Path) -> None:
    """``ip netns exec NS lvsfw apply`` waits for ``lvsfw apply --netns NS`` (and fails at
    once with --lock-timeout 0)."""
    kernel_ready()
    ns = Netns()
    try:
        cfg = tmp_path / "web.toml"
        cfg.write_text('[[bundle]]\nname = "web"\nvips = ["192.0.2.10"]\nports = "tcp:80"\n'
                       "mark = 80\n")  # fmt: skip
        with locked(lock_path(ns.name, str(tmp_path))):
            start = time.monotonic()
            done = subprocess.run(
                [IP, "netns", "exec", ns.name, str(LVSFW), "apply", str(cfg), "--yes",
                 "--no-ipvs", "--lock-dir", str(tmp_path), "--lock-timeout", "0",
                 "--state-file", str(tmp_path / "state.json")],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert time.monotonic() - start < 10
        assert done.returncode != 0 and "lock" in done.stderr, done.stderr
        assert ns.exec("nft", "list", "ruleset").strip() == ""  # nothing applied
    finally:
        ns.close()


def test_lock_timeout_zero_fails_at_once_and_negative_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "l.lock")
    with locked(path):
        start = time.monotonic()
        with pytest.raises(LockTimeout), locked(path, timeout=0):
            pass
        assert time.monotonic() - start < 1
    with pytest.raises(LvsfwError, match="lock_timeout"), locked(path, timeout=-1):
        pass


def test_apply_records_every_filter_before_writing(tmp_path: Path) -> None:
    """What a killed first apply leaves: pending, naming the filter it was writing."""
    kernel_ready()
    ns = Netns()
    try:
        d = Director("iptables-nft", ipvs=False, netns=ns.name,
                     state_file=str(tmp_path / "s.json"), lock_dir=str(tmp_path))  # fmt: skip
        seen: list[State] = []
        d.step_hook = lambda step: seen.append(load(d.state_file)) if step == "marks" else None
        d.apply([Bundle("web", "192.0.2.10", "tcp:80", 80)])
        assert seen[0].pending and seen[0].filters == {"iptables-nft"}
        assert "ipset:lvsfw4-nft" in seen[0].objects
        final = load(d.state_file)
        assert not final.pending and final.filters == {"iptables-nft"}
        assert "ipset:lvsfw4-nft" in final.objects
        assert not any(o.endswith("-new") for o in final.objects)
        d.destroy()
    finally:
        ns.close()
