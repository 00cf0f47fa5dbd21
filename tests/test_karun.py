"""keepalived as the IPVS half (issue 11, "Run"), on the host: the config file's life cycle.

The host kernel has no IPVS, so a real keepalived cannot run here (its checker exits at once);
these tests drive everything up to it for real — the nft marks in a throwaway namespace, the
real ``keepalived --config-test`` inside it (which checks the VRRP interface), the atomic
write, the refusal of a foreign file — and stand a process *named* keepalived in for the
daemon to prove the reload signal. keepalived itself reloading, health checks and failover
are proven in the VM (tests/guest/test_keepalived_ha.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from lvsfw import Bundle, Cluster, Director, config
from lvsfw.backends.base import ServiceHalf
from lvsfw.backends.kaconf import HEADER
from lvsfw.backends.karun import KeepalivedRuntime, default_pid_file
from lvsfw.errors import CommandFailed, ConflictError
from lvsfw.rules import specify
from tests import fake_ipvsadm
from tests.test_cluster import vrrp_netns
from tests.test_director import Netns

LVSFW = Path(sys.executable).parent / "lvsfw"
PAIR = {
    "interface": "eth0",
    "virtual_router_id": 51,
    "node": [
        {"name": "lb1", "address": "192.168.50.1", "priority": 150},
        {"name": "lb2", "address": "192.168.50.2", "priority": 100},
    ],
}
WEB = Bundle("web", ["192.0.2.10"], "tcp:80,443", 80, persistence=300,
             real_servers=["10.0.0.11", "10.0.0.12"],
             health={"check": "http", "path": "/healthz", "port": 80})  # fmt: skip
DNS = Bundle("dns", ["192.0.2.53"], "tcp:53 udp:53", 53, real_servers=["10.0.0.21"],
             health={"check": "tcp", "port": 53})  # fmt: skip


@pytest.fixture
def vrrp_ns() -> Iterator[Netns]:
    """A namespace with the VRRP interface ``eth0``, one per test."""
    with vrrp_netns() as ns:
        yield ns


class FakeDaemon:
    """A process whose name is ``keepalived`` (a copy of sleep), its pid in ``pid_file``."""

    def __init__(self, folder: Path, pid_file: Path) -> None:
        binary = folder / "keepalived"
        shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
        self.process = subprocess.Popen([str(binary), "1000"])
        pid_file.write_text(f"{self.process.pid}\n", encoding="ascii")

    def signalled(self) -> int | None:
        """The signal that ended it (None: still running)."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None
        return -code

    def close(self) -> None:
        """Stop it."""
        self.process.kill()
        self.process.wait()


def runtime(ns: Netns, tmp: Path, **fields: Any) -> KeepalivedRuntime:
    """The keepalived half for node lb1 writing ``tmp/keepalived.conf``."""
    fields.setdefault("cluster", Cluster.parse(PAIR))
    fields.setdefault("node", "lb1")
    return KeepalivedRuntime(ns.name, conf=str(tmp / "keepalived.conf"),
                             pid_file=str(tmp / "keepalived.pid"), **fields)  # fmt: skip


def director(ns: Netns, tmp: Path, half: ServiceHalf, ipvsadm: str = "ipvsadm") -> Director:
    """An nftables Director in ``ns`` running ``half``, its state and lock under ``tmp``
    (``ipvsadm``: what removes services a state file says ipvsadm made)."""
    return Director("nftables", half, ns.name, state_file=str(tmp / "state.json"),
                    lock_dir=str(tmp), ipvsadm=ipvsadm)  # fmt: skip


def marks(ns: Netns) -> str:
    return ns.exec("nft", "list", "ruleset")


def test_apply_writes_the_tested_file_then_reloads_once(vrrp_ns: Netns, tmp_path: Path) -> None:
    """The first apply writes marks and the node's whole file and signals keepalived; the
    same apply again writes nothing and signals nothing; an edit signals once more."""
    half = runtime(vrrp_ns, tmp_path)
    daemon = FakeDaemon(tmp_path, tmp_path / "keepalived.pid")
    try:
        done = director(vrrp_ns, tmp_path, half).apply([WEB])
        assert done
        conf = tmp_path / "keepalived.conf"
        text = conf.read_text(encoding="utf-8")
        assert text.startswith(HEADER) and "router_id lb1" in text
        assert "virtual_server fwmark 80" in text and "192.0.2.10/32 dev eth0" in text
        assert "192.0.2.10" in marks(vrrp_ns)
        assert daemon.signalled() == signal.SIGHUP
    finally:
        daemon.close()
    daemon = FakeDaemon(tmp_path, tmp_path / "keepalived.pid")
    try:
        inode = os.stat(tmp_path / "keepalived.conf").st_ino
        again = director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path)).apply([WEB])
        assert not again
        assert os.stat(tmp_path / "keepalived.conf").st_ino == inode  # not even rewritten
        assert daemon.signalled() is None
        director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path)).apply([WEB, DNS])
        assert "virtual_server fwmark 53" in (tmp_path / "keepalived.conf").read_text()
        assert daemon.signalled() == signal.SIGHUP
    finally:
        daemon.close()


def test_keepalived_not_running_is_said_and_the_file_waits(
    vrrp_ns: Netns, tmp_path: Path
) -> None:
    half = runtime(vrrp_ns, tmp_path)
    director(vrrp_ns, tmp_path, half).apply([WEB])
    assert (tmp_path / "keepalived.conf").is_file()
    assert len(half.notes) == 1 and "not running" in half.notes[0]
    assert f"--namespace {vrrp_ns.name}" in half.notes[0]


def test_a_file_lvsfw_did_not_write_is_never_overwritten(vrrp_ns: Netns, tmp_path: Path) -> None:
    """Could fail: the admin's own keepalived.conf survives byte for byte, no mark is written."""
    conf = tmp_path / "keepalived.conf"
    own = "global_defs {\n    router_id mine\n}\n"
    conf.write_text(own, encoding="utf-8")
    before = marks(vrrp_ns)
    with pytest.raises(ConflictError, match="include"):
        director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path)).apply([WEB])
    assert conf.read_text(encoding="utf-8") == own
    assert marks(vrrp_ns) == before


def test_a_failed_config_test_leaves_marks_and_file_as_they_were(
    vrrp_ns: Netns, tmp_path: Path
) -> None:
    """keepalived refuses a VRRP interface the namespace lacks: nothing is half-applied."""
    director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path)).apply([WEB])
    conf = tmp_path / "keepalived.conf"
    text, rules = conf.read_text(encoding="utf-8"), marks(vrrp_ns)
    state = (tmp_path / "state.json").read_text(encoding="utf-8")
    moved = Cluster.parse({**PAIR, "interface": "eth7"})
    with pytest.raises(CommandFailed, match="eth7"):
        director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path, cluster=moved)).apply([WEB, DNS])
    assert conf.read_text(encoding="utf-8") == text
    assert marks(vrrp_ns) == rules
    assert (tmp_path / "state.json").read_text(encoding="utf-8") == state


def test_a_failed_reload_puts_the_old_file_back(vrrp_ns: Netns, tmp_path: Path) -> None:
    director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path)).apply([WEB])
    conf = tmp_path / "keepalived.conf"
    text, rules = conf.read_text(encoding="utf-8"), marks(vrrp_ns)

    class Broken(KeepalivedRuntime):
        def reload(self) -> None:
            raise CommandFailed(["systemctl", "reload", "keepalived"], 1, "reload refused")

    broken = Broken(vrrp_ns.name, cluster=Cluster.parse(PAIR), node="lb1", conf=str(conf),
                    pid_file=str(tmp_path / "keepalived.pid"))  # fmt: skip
    with pytest.raises(CommandFailed, match="reload refused"):
        director(vrrp_ns, tmp_path, broken).apply([WEB, DNS])
    assert conf.read_text(encoding="utf-8") == text
    assert marks(vrrp_ns) == rules


def test_destroy_empties_the_file_and_removes_the_marks(vrrp_ns: Netns, tmp_path: Path) -> None:
    before = marks(vrrp_ns)
    director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path)).apply([WEB, DNS])
    director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path)).destroy()
    text = (tmp_path / "keepalived.conf").read_text(encoding="utf-8")
    assert text.startswith(HEADER) and "virtual_server" not in text
    assert marks(vrrp_ns) == before


def test_a_hand_edit_of_the_file_is_planned_as_a_rewrite(vrrp_ns: Netns, tmp_path: Path) -> None:
    director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path)).apply([WEB])
    conf = tmp_path / "keepalived.conf"
    conf.write_text(conf.read_text(encoding="utf-8").replace("priority 150", "priority 200"))
    plan = director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path)).plan([WEB])
    assert plan and any("differs" in line for line in plan.repair)
    director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path)).apply([WEB])
    assert "priority 150" in conf.read_text(encoding="utf-8")


def test_blocks_only_without_a_cluster(vrrp_ns: Netns, tmp_path: Path) -> None:
    """No [cluster]: lvsfw's blocks under its header, which keepalived accepts alone."""
    misc = Bundle("app", ["192.0.2.20"], "tcp:8080", 20, real_servers=["10.0.0.31"],
                  health={"check": "misc", "script": "/bin/true"})  # fmt: skip
    half = runtime(vrrp_ns, tmp_path, cluster=None, node=None)
    director(vrrp_ns, tmp_path, half).apply([WEB, misc])
    text = (tmp_path / "keepalived.conf").read_text(encoding="utf-8")
    assert text.startswith(HEADER) and "vrrp_instance" not in text
    assert "enable_script_security" in text and "MISC_CHECK" in text


def test_pid_files_follow_keepalived_namespace_layout() -> None:
    assert default_pid_file(None) == "/run/keepalived.pid"
    assert default_pid_file("lb1") == "/run/keepalived/lb1/keepalived.pid"


def write_config(tmp: Path, ns: Netns, director_lines: str) -> Path:
    path = tmp / "lvsfw.toml"
    text = config.dumps([WEB]) + "\n" + tomli_w.dumps({"cluster": PAIR})
    head = (f"[director]\nfirewall = \"nftables\"\nnetns = \"{ns.name}\"\n"
            f"state_file = \"{tmp / 'state.json'}\"\n{director_lines}\n")  # fmt: skip
    path.write_text(head + text, encoding="utf-8")
    return path


def lvsfw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LVSFW), *args], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def test_the_command_line_runs_it_from_the_file(vrrp_ns: Netns, tmp_path: Path) -> None:
    """A fresh ``lvsfw apply`` on a file saying ipvs = "keepalived" and its node."""
    conf = tmp_path / "ka.conf"
    path = write_config(tmp_path, vrrp_ns, f'ipvs = "keepalived"\nnode = "lb1"\n'
                        f'keepalived_conf = "{conf}"')  # fmt: skip
    done = lvsfw("apply", "--yes", str(path), "--lock-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "lvsfw: keepalived is not running" in done.stderr
    assert conf.read_text(encoding="utf-8").startswith(HEADER)
    again = lvsfw("apply", "--yes", str(path), "--lock-dir", str(tmp_path))
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout + again.stderr
    other = lvsfw("render", str(path), "--backend", "keepalived", "--node", "lb1")
    assert other.stdout.rstrip("\n") == conf.read_text(encoding="utf-8").rstrip("\n")
    gone = lvsfw("destroy", "--yes", "-c", str(path), "--lock-dir", str(tmp_path))
    assert gone.returncode == 0 and "lvsfw: keepalived is not running" in gone.stderr, gone
    assert "virtual_server" not in conf.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("lines", "flags", "words"),
    [
        ('ipvs = "keepalived"', (), "this director's node of [cluster] (lb1, lb2)"),
        ('ipvs = "ipvsadm"\nnode = "lb1"', (), 'node: \'lb1\' is not valid; expected a node with'),
        ('ipvs = "keepalived"', ("--node", "lb9"), "lb9"),
    ],
)
def test_bad_runtime_settings_are_one_line(
    vrrp_ns: Netns, tmp_path: Path, lines: str, flags: tuple[str, ...], words: str
) -> None:
    path = write_config(tmp_path, vrrp_ns, lines)
    done = lvsfw("apply", "--yes", str(path), *flags, "--lock-dir", str(tmp_path))
    assert done.returncode != 0 and words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert specify([WEB]).rules  # the bundles themselves are fine


def test_verify_and_show_tell_down_servers_from_drift(vrrp_ns: Netns, tmp_path: Path) -> None:
    """The IPVS table keepalived built (played by the ipvsadm double, filled by ipvsadm
    calls as keepalived makes them): one server taken out by its check is *down*, exit 0;
    keepalived losing the service is drift, exit 3."""
    conf = tmp_path / "ka.conf"
    ipvsadm = fake_ipvsadm.install(tmp_path / "ipvs")
    path = write_config(tmp_path, vrrp_ns, f'ipvs = "keepalived"\nnode = "lb1"\n'
                        f'keepalived_conf = "{conf}"')  # fmt: skip
    flags = ("--ipvsadm", str(ipvsadm), "--lock-dir", str(tmp_path))
    assert lvsfw("apply", "--yes", str(path), *flags).returncode == 0
    for argv in (["-A", "-f", "80", "-s", "wlc", "-p", "300"],
                 ["-a", "-f", "80", "-r", "10.0.0.12", "-g", "-w", "1"]):  # fmt: skip
        subprocess.run([str(ipvsadm), *argv], check=True)
    done = lvsfw("verify", str(path), *flags, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["drift"] == []
    assert report["down"] == [{"bundle": "web", "family": "ipv4", "mark": 80,
                               "address": "10.0.0.11"}]  # fmt: skip
    text = lvsfw("verify", str(path), *flags)
    assert "web: down by health check: fwmark 80 (ipv4) real server 10.0.0.11" in text.stdout
    shown = json.loads(lvsfw("show", "-c", str(path), *flags, "--json").stdout)
    states = {s["address"]: s["state"] for s in shown["services"][0]["real_servers"]}
    assert states == {"10.0.0.11": "down", "10.0.0.12": "up"}
    assert "10.0.0.12 route w1 up" in lvsfw("show", "-c", str(path), *flags).stdout
    metrics = lvsfw("metrics", str(path), *flags).stdout
    assert 'mark="80",server="10.0.0.12"} 1.0' in metrics  # its up gauge, read from IPVS
    subprocess.run([str(ipvsadm), "-D", "-f", "80"], check=True)
    lost = lvsfw("verify", str(path), *flags)
    assert lost.returncode == 3 and "service-missing" in lost.stdout, lost.stdout


def test_save_writes_no_ipvsadm_file_for_keepalived(vrrp_ns: Netns, tmp_path: Path) -> None:
    """Boot files: the marks only; keepalived restores IPVS from its own file (an
    ``lvsfw.ipvs`` here would feed keepalived.conf text to ipvsadm-restore)."""
    (tmp_path / "boot").mkdir()
    lb = director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path))
    paths = lb.save([WEB], str(tmp_path / "boot"))
    assert [Path(p).name for p in paths] == ["lvsfw-nftables.rules"]


def test_a_service_keepalived_lost_is_said_by_apply(vrrp_ns: Netns, tmp_path: Path) -> None:
    """The file is unchanged but the running keepalived's IPVS lacks a service it configures
    (``ipvsadm -D`` by hand): a reload cannot bring it back, so apply says to restart."""
    ipvsadm = str(fake_ipvsadm.install(tmp_path / "ipvs"))
    director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path, ipvsadm=ipvsadm)).apply([WEB, DNS])
    subprocess.run([ipvsadm, "-A", "-f", "53", "-s", "wlc"], check=True)  # 80 is "lost"
    daemon = FakeDaemon(tmp_path, tmp_path / "keepalived.pid")
    try:
        half = runtime(vrrp_ns, tmp_path, ipvsadm=ipvsadm)
        assert not director(vrrp_ns, tmp_path, half).apply([WEB, DNS])
        assert daemon.signalled() is None  # nothing written, nothing signalled
    finally:
        daemon.close()
    assert len(half.notes) == 1, half.notes
    assert "does not hold fwmark 80 (ipv4)" in half.notes[0] and "restart" in half.notes[0]
