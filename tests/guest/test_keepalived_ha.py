"""keepalived as lvsfw's IPVS half, proven in the VM with a real keepalived (issue 11).

One HA lab (``ha_lab``: directors lb1/lb2, a client, real servers rs1/rs2 and a sorry server on
one bridge; **direct routing**) serves the whole module, and its tests are one scenario run in
file order (``-x`` stops at the first failure; each test starts from where the previous one left
the pair):

1. ``lvsfw apply`` of one TOML on both directors (``--ipvs keepalived``, each its own
   ``--netns``, ``--node``, ``--keepalived-conf``, ``--state-file``) before keepalived runs: the
   marks and the file are written, the reload says keepalived is not running. keepalived is
   started on both; lb1 (priority 150) becomes VRRP master and takes the VIP.
2. HTTP and HTTPS with persistence reach one real server through lb1; ``lvsfw verify`` is clean
   on both directors.
3. Health: a stopped real server leaves IPVS within ``delay_loop * (retry + 1)`` plus slack and
   is listed "down" by verify (exit 0); it comes back when restarted. Every real server down:
   the sorry server answers, verify exit 0. An edited file (one more bundle, no sorry server)
   applied while keepalived runs reloads it (the new service appears in IPVS); with every server
   down that bundle is drift "service-down" (exit 3).
4. Failover: lb1's keepalived is SIGKILLed (its whole process group, as a crash: nothing sends
   priority 0, so lb2 waits for the master-down timer); lb2 takes the VIP and new requests go
   through it. Restarted, lb1 takes the VIP back (``preempt``, the default, is configured).
5. Agreement: a mark element deleted by hand, then a service keepalived lost (``ipvsadm -D``),
   are drift (exit 3). ``lvsfw destroy`` empties both directors.

lvsfw's command line runs in this process (click's runner on :data:`lvsfw.cli.cli`, exactly
the code ``.venv/bin/lvsfw`` runs, without a Python start of several seconds under TCG per
call); ``keepalived --config-test`` runs are counted by wrapping the ``run`` lvsfw's keepalived
backend calls. One verify goes through the installed ``lvsfw`` script itself. Measured times go
to ``$LVSFW_VM_RESULTS/keepalived-ha.json`` and to the terminal summary.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner
from e2e_lab import real_server_of_template, sh, template_lines
from ha_lab import CLIENT, DIRECTORS, REAL, SERVERS, VIP, HaLab, wait_for

from lvsfw.backends import karun
from lvsfw.cli import cli

pytestmark = pytest.mark.kernel

DELAY_LOOP, RETRY, CHECK_TIMEOUT, DELAY_BEFORE_RETRY = 1, 1, 1, 1
ADVERT_INT = 1
#: Seconds allowed on top of the nominal times (TCG is slow, and polls are 0.1 s apart).
SLACK = 4.0
#: A check fails at the next tick of delay_loop, and is retried ``retry`` times.
DETECTION_BOUND = DELAY_LOOP * (RETRY + 1) + SLACK
#: VRRP master-down timer: 3 adverts plus the skew of lb2's priority, then gratuitous ARP.
FAILOVER_BOUND = 3 * ADVERT_INT + (256 - DIRECTORS["lb2"][1]) / 256 * ADVERT_INT + SLACK + 2
M_WEB, M_API = 780, 781
API_PORT = 10005
RS = {name: SERVERS[name] for name in REAL}
SORRY = SERVERS["sorry"]
HEADER = "# keepalived.conf written by lvsfw for node"


def config_text(api: bool) -> str:
    """The pair's TOML: bundle "web" (HTTP + HTTPS, persistence, http check, sorry server);
    with ``api`` also bundle "api" (tcp:10005, tcp check, no sorry server)."""
    nodes = "".join(
        f'\n[[cluster.node]]\nname = "{name}"\naddress = "{address}"\npriority = {priority}\n'
        for name, (address, priority) in DIRECTORS.items()
    )
    servers = ", ".join(f'{{ address = "{a}", forwarding = "route" }}' for a in RS.values())
    timing = (
        f"retry = {RETRY}, timeout = {CHECK_TIMEOUT}, delay_before_retry = {DELAY_BEFORE_RETRY}"
    )
    text = f"""# The keepalived HA pair of tests/guest/test_keepalived_ha.py
[director]
ipvs = "keepalived"
firewall = "nftables"

[cluster]
interface = "eth0"
virtual_router_id = 78
advert_int = {ADVERT_INT}
preempt = true
{nodes}
[[bundle]]
name = "web"
vips = ["{VIP}"]
ports = "tcp:80,443"
mark = {M_WEB}
scheduler = "rr"
persistence = 300
delay_loop = {DELAY_LOOP}
health = {{ check = "http", path = "/", port = 80, {timing} }}
sorry_server = "{SORRY}"
real_servers = [{servers}]
"""
    if api:
        text += f"""
[[bundle]]
name = "api"
vips = ["{VIP}"]
ports = "tcp:{API_PORT}"
mark = {M_API}
scheduler = "rr"
delay_loop = {DELAY_LOOP}
health = {{ check = "tcp", port = {API_PORT}, {timing} }}
real_servers = [{servers}]
"""
    return text


@attrs.frozen
class Result:
    """One lvsfw command: its exit status, stdout and stderr."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout as JSON (for ``--json``)."""
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (f"lvsfw {' '.join(self.args)} -> exit {self.code}\n"
                f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}")  # fmt: skip


class Pair:
    """The lab plus lvsfw's files per director, the command runner and the measurements."""

    def __init__(self, lab: HaLab, workdir: Path) -> None:
        self.lab = lab
        self.file_a = workdir / "pair.toml"
        self.file_b = workdir / "pair-edited.toml"
        self.file_a.write_text(config_text(api=False))
        self.file_b.write_text(config_text(api=True))
        self.conf = {d: workdir / f"keepalived-{d}.conf" for d in DIRECTORS}
        self.state = {d: workdir / f"state-{d}.json" for d in DIRECTORS}
        self.config_tests = 0
        self.metrics: dict[str, Any] = {
            "delay_loop_s": DELAY_LOOP, "retry": RETRY, "delay_before_retry_s": DELAY_BEFORE_RETRY,
            "advert_int_s": ADVERT_INT, "forwarding": "direct routing (DR)",
        }  # fmt: skip

    def node_args(self, director: str) -> list[str]:
        """The flags that make a command about ``director``."""
        return [
            "--netns", self.lab.ns[director], "--node", director,
            "--keepalived-conf", str(self.conf[director]),
            "--state-file", str(self.state[director]),
        ]  # fmt: skip

    def lvsfw(self, *args: str) -> Result:
        """``lvsfw ARGS``, run in this process by click's runner."""
        done = CliRunner().invoke(cli, list(args), catch_exceptions=True)
        stderr = done.stderr
        if done.exception is not None and not isinstance(done.exception, SystemExit):
            stderr += f"\n(exception {done.exception!r})"
        return Result(tuple(args), done.exit_code, done.stdout, stderr)

    def apply(self, director: str, file: Path) -> Result:
        """``lvsfw apply FILE -y`` on ``director``; it must succeed."""
        result = self.lvsfw("apply", str(file), "-y", *self.node_args(director))
        assert result.code == 0, f"{result}\n{self.lab.logs_text()}"
        return result

    def verify(self, director: str, file: Path, expect: int = 0) -> dict[str, Any]:
        """``lvsfw verify FILE --json`` on ``director``: exit ``expect``, its JSON report."""
        result = self.lvsfw("verify", str(file), "--json", *self.node_args(director))
        assert result.code == expect, f"{result}\n{self.ipvs_text()}"
        report: dict[str, Any] = result.json()
        assert report["ok"] == (expect == 0), result
        return report

    def ipvs_text(self) -> str:
        """Both directors' IPVS tables and the keepalived logs, for failure messages."""
        tables = "\n".join(f"{d}: {self.lab.ipvs_table(d)}" for d in DIRECTORS)
        return f"IPVS (fwmark -> real servers):\n{tables}\n{self.lab.logs_text()}"

    def wait_table(
        self, director: str, want: dict[int, set[str]], timeout: float, what: str
    ) -> float:
        """Seconds until ``director``'s IPVS holds exactly ``want`` (fails after ``timeout``)."""
        got, took, ok = wait_for(lambda: self.lab.ipvs_table(director), lambda t: t == want,
                                 timeout)  # fmt: skip
        assert ok, (f"{what}: {director}'s IPVS is {got}, not {want} after {took:.1f}s\n"
                    f"{self.ipvs_text()}")  # fmt: skip
        return took

    def through(self, director: str, port: int, timeout: float) -> tuple[float, list[str]]:
        """Seconds until a request from the client to VIP:port succeeds *through*
        ``director`` (its IPVS holds the connection); every answer on the way."""
        answers: list[str] = []
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            answer, sport = self.lab.ask(port, timeout=1)
            answers.append(answer)
            if not answer.startswith("ERR") and sport in self.lab.client_ports(director):
                return time.monotonic() - start, answers
            time.sleep(0.05)
        raise AssertionError(
            f"no request through {director} within {timeout}s: {answers[-10:]}\n{self.ipvs_text()}"
        )


def down_of(report: dict[str, Any]) -> list[tuple[str, int, str]]:
    """verify's "down" list as (bundle, mark, address)."""
    return sorted((d["bundle"], d["mark"], d["address"]) for d in report["down"])


def kinds_of(report: dict[str, Any]) -> list[tuple[str, str]]:
    """verify's "drift" list as (kind, bundle)."""
    return sorted((d["kind"], d["bundle"]) for d in report["drift"])


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Pair]:
    """The lab and lvsfw's files; keepalived --config-test runs counted; the measurements
    written to $LVSFW_VM_RESULTS/keepalived-ha.json (and the logs copied there) at the end."""
    for tool in ("keepalived", "ipvsadm", "nft"):
        assert shutil.which(tool, path=karun.TOOL_PATH), f"{tool} missing in the guest"
    workdir = tmp_path_factory.mktemp("ha")
    real_run = karun.run

    with HaLab(workdir) as lab, pytest.MonkeyPatch.context() as patch:
        built = Pair(lab, workdir)

        def counting_run(argv: Sequence[str], **kwargs: Any) -> str:
            if "--config-test" in argv:
                built.config_tests += 1
            return real_run(argv, **kwargs)

        patch.setattr(karun, "run", counting_run)
        try:
            yield built
        finally:
            built.metrics["keepalived_config_tests"] = built.config_tests
            _publish(built, pytestconfig)


def _publish(built: Pair, pytestconfig: pytest.Config) -> None:
    """The measurements as JSON in the results dir, the logs beside them, one summary line."""
    results = os.environ.get("LVSFW_VM_RESULTS")
    text = json.dumps(built.metrics, indent=2, sort_keys=True)
    if results and os.path.isdir(results):
        Path(results, "keepalived-ha.json").write_text(text + "\n")
        for log in built.lab.logs:
            if log.exists():
                shutil.copyfile(log, Path(results, f"keepalived-ha-{log.name}"))
    numbers = " ".join(
        f"{k}={v}" for k, v in sorted(built.metrics.items()) if isinstance(v, (int, float))
    )
    line = f"keepalived-ha: {numbers}"
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        print(line, file=sys.stderr)


# ---- 1. apply before keepalived, then keepalived on both ------------------------------------


def test_apply_before_keepalived_runs(pair: Pair) -> None:
    """apply on both: exit 0, the note that keepalived is not running, each node's whole
    keepalived.conf written; a second apply changes nothing and tests no config."""
    for director in DIRECTORS:
        result = pair.apply(director, pair.file_a)
        assert "lvsfw: keepalived is not running" in result.stderr, result
        text = pair.conf[director].read_text()
        assert text.startswith(f"{HEADER} {director}"), text[:200]
        assert f"router_id {director}" in text and f"virtual_server fwmark {M_WEB}" in text, text
        assert pair.lab.ipvs_table(director) == {}, "keepalived does not run: IPVS stays empty"
    assert pair.config_tests >= 2, f"{pair.config_tests} keepalived --config-test runs"
    before = pair.config_tests
    again = pair.apply("lb1", pair.file_a)
    assert "no changes" in again.stdout, again
    assert pair.config_tests == before, "an unchanged file must not be config-tested again"
    pair.metrics["config_tests_first_applies"] = before


def test_keepalived_builds_ipvs_and_lb1_masters(pair: Pair) -> None:
    """keepalived on both (lb2 once lb1 is master): both build the fwmark service from lvsfw's file,
    lb1 becomes VRRP master and holds the VIP, lb2 stays backup; the pid file lvsfw reads
    holds the pid of the keepalived started in the foreground."""
    lab = pair.lab
    start = time.monotonic()
    ka = lab.start_keepalived("lb1", pair.conf["lb1"])
    _, _, master = wait_for(ka.text, lambda t: "Entering MASTER STATE" in t, 20)
    assert master, f"lb1 never became VRRP master\n{lab.logs_text()}"
    pair.metrics["start_to_lb1_master_s"] = round(time.monotonic() - start, 2)
    # lb2 starts once lb1 is master: it hears lb1's adverts from the start and stays backup
    lab.start_keepalived("lb2", pair.conf["lb2"])
    want = {M_WEB: set(RS.values())}
    for director in DIRECTORS:
        pair.wait_table(director, want, 30, "keepalived start")
    pid_text, _, found = wait_for(
        lambda: Path(ka.pid_file).read_text() if os.path.exists(ka.pid_file) else "",
        lambda t: bool(t.strip()), 10,
    )  # fmt: skip
    assert found and int(pid_text) == ka.proc.pid, (ka.pid_file, pid_text, ka.proc.pid)
    assert lab.holds_vip("lb1") and not lab.holds_vip("lb2"), lab.logs_text()
    assert "Entering MASTER STATE" not in lab.keepalived["lb2"].text(), lab.logs_text()


# ---- 2. traffic through lb1, verify clean ----------------------------------------------------


def test_http_https_persistence_through_lb1(pair: Pair) -> None:
    """80, 443, 80 from the client reach one real server, through lb1 (its IPVS holds the
    three connections, lb2's none); lb1's -Lnc holds the persistence template; direct routing: the
    real server saw the VIP as destination."""
    lab = pair.lab
    for server in lab.servers.values():
        del server.seen[:]
    asked = [lab.ask(port) for port in (80, 443, 80)]
    names = [name for name, _ in asked]
    assert len(set(names)) == 1 and names[0] in RS, names
    sports = {sport for _, sport in asked}
    held = {d: sports & lab.client_ports(d) for d in DIRECTORS}
    assert held == {"lb1": sports, "lb2": set()}, held
    listing = lab.ipvsadm("lb1", "-Lnc")
    templates = template_lines(listing, M_WEB)
    assert len(templates) == 1, listing
    assert real_server_of_template(templates[0]) == RS[names[0]], listing
    assert sum(f"{CLIENT}:" in line for line in listing.splitlines()) >= 3, listing
    seen = [local for name, local in lab.servers[names[0]].seen if local == VIP]
    assert len(seen) == 3, lab.servers[names[0]].seen


def test_verify_and_show_healthy_on_both(pair: Pair) -> None:
    """verify --json: ok, no drift, nothing down, on both directors (lb2 through the installed
    ``lvsfw`` script, a process of its own); show lists the service and its servers."""
    report = pair.verify("lb1", pair.file_a)
    assert report["drift"] == [] and report["down"] == [], report
    script = Path(sys.executable).with_name("lvsfw")
    argv = [str(script), "verify", str(pair.file_a), "--json", *pair.node_args("lb2")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    assert json.loads(done.stdout) == {"ok": True, "drift": [], "down": []}, done.stdout
    shown = pair.lvsfw("show", "-c", str(pair.file_a), *pair.node_args("lb1"))
    assert shown.code == 0, shown
    assert str(M_WEB) in shown.stdout and all(a in shown.stdout for a in RS.values()), shown


# ---- 3. health checks ----------------------------------------------------------------------


def test_health_one_server_down_and_back(pair: Pair) -> None:
    """rs1 stopped: it leaves both directors' IPVS within delay_loop * (retry + 1) + slack,
    every request lands on rs2, verify lists rs1 down and exits 0; restarted, it is back."""
    lab = pair.lab
    lab.stop_server("rs1")
    only_rs2 = {M_WEB: {RS["rs2"]}}
    detected = pair.wait_table("lb1", only_rs2, 30, "rs1 stopped")
    detected_lb2 = pair.wait_table("lb2", only_rs2, 30, "rs1 stopped")
    pair.metrics["detection_s"] = round(detected, 2)
    pair.metrics["detection_lb2_s"] = round(detected_lb2 + detected, 2)
    assert detected <= DETECTION_BOUND, (
        f"detection took {detected:.2f}s > delay_loop*(retry+1)+slack = {DETECTION_BOUND}s"
    )
    listing = lab.ipvsadm("lb1", "-Ln")
    assert RS["rs2"] in listing and RS["rs1"] not in listing, listing
    assert lab.requests(80, 443, 80, 80) == ["rs2"] * 4
    report = pair.verify("lb1", pair.file_a)
    assert report["drift"] == [] and down_of(report) == [("web", M_WEB, RS["rs1"])], report

    lab.start_server("rs1")
    both = {M_WEB: set(RS.values())}
    back = pair.wait_table("lb1", both, 30, "rs1 restarted")
    pair.wait_table("lb2", both, 30, "rs1 restarted")
    pair.metrics["recovery_s"] = round(back, 2)
    assert back <= DETECTION_BOUND, f"rs1 took {back:.2f}s to come back"
    assert pair.verify("lb1", pair.file_a)["down"] == []


def test_all_down_sorry_server_then_reload_by_apply(pair: Pair) -> None:
    """Both real servers stopped: the sorry server takes over (requests reach it), verify
    exit 0 with both down. The edited file (bundle api added, no sorry server) applied on
    both while keepalived runs: SIGHUP, the new service appears; with no server up it is
    drift "service-down" (exit 3). Servers restarted: both services full, verify clean."""
    lab = pair.lab
    for name in RS:
        lab.stop_server(name)
    took = pair.wait_table("lb1", {M_WEB: {SORRY}}, 30, "every real server stopped")
    pair.metrics["all_down_to_sorry_s"] = round(took, 2)
    assert lab.requests(80, 443) == ["sorry", "sorry"]
    report = pair.verify("lb1", pair.file_a)
    assert report["drift"] == [], report
    assert down_of(report) == [("web", M_WEB, a) for a in sorted(RS.values())], report

    tests_before = pair.config_tests
    logged = {d: len(lab.keepalived[d].text()) for d in DIRECTORS}
    start = time.monotonic()
    for director in DIRECTORS:
        result = pair.apply(director, pair.file_b)
        assert "not running" not in result.stderr, result
    assert pair.config_tests == tests_before + 2, (tests_before, pair.config_tests)
    _, took, ok = wait_for(lambda: lab.ipvs_table("lb1"), lambda t: M_API in t, 30)
    assert ok, f"the reload added no fwmark {M_API} service\n{pair.ipvs_text()}"
    pair.metrics["apply_to_new_service_s"] = round(time.monotonic() - start, 2)
    for director in DIRECTORS:  # the SIGHUP reached the keepalived lvsfw found by pid file
        assert "Reloading" in lab.keepalived[director].text()[logged[director] :], lab.logs_text()
    pair.wait_table("lb1", {M_WEB: {SORRY}, M_API: set()}, 30, "api: no server up")
    report = pair.verify("lb1", pair.file_b, expect=3)
    assert kinds_of(report) == [("service-down", "api")], report
    assert len(report["down"]) == 4, report

    for name in RS:
        lab.start_server(name)
    full = {M_WEB: set(RS.values()), M_API: set(RS.values())}
    for director in DIRECTORS:
        pair.wait_table(director, full, 30, "servers restarted")
    assert set(lab.requests(API_PORT, API_PORT)) == set(RS), "rr over the new service"
    for director in DIRECTORS:
        report = pair.verify(director, pair.file_b)
        assert report["drift"] == [] and report["down"] == [], report


# ---- 4. failover -----------------------------------------------------------------------------


def test_failover_when_lb1_keepalived_is_killed(pair: Pair) -> None:
    """SIGKILL to lb1's keepalived (all three processes): lb2 becomes master after the
    master-down timer and new HTTP and HTTPS requests succeed through lb2."""
    lab = pair.lab
    start = time.monotonic()
    lab.kill_keepalived("lb1", signal.SIGKILL)
    took, answers = pair.through("lb2", 80, FAILOVER_BOUND + 20)
    pair.metrics["failover_s"] = round(took, 2)
    pair.metrics["failover_requests_through_lb1_meanwhile"] = len(answers) - 1
    assert took <= FAILOVER_BOUND, f"failover took {took:.2f}s > {FAILOVER_BOUND:.1f}s"
    assert answers[-1] in RS, answers
    assert "Entering MASTER STATE" in lab.keepalived["lb2"].text(), lab.logs_text()
    assert lab.holds_vip("lb2"), lab.logs_text()
    # SIGKILL cleans nothing up: lb1 still holds the VIP and its IPVS services (a crashed
    # keepalived, not a dead host); the client follows lb2's gratuitous ARP.
    pair.metrics["lb1_kept_vip_after_sigkill"] = lab.holds_vip("lb1")
    took443, _ = pair.through("lb2", 443, 10)
    assert took443 < 10
    pair.metrics["kill_to_https_through_lb2_s"] = round(time.monotonic() - start, 2)
    # connections whose SYN crossed lb1 and the rest lb2: the server waited for a request
    # that never came (on its own thread, so the health checks kept being answered)
    pair.metrics["failover_half_moved_connections"] = sum(
        "timed out" in error for server in lab.servers.values() for error in server.errors
    )
    report = pair.verify("lb2", pair.file_b)
    assert report["drift"] == [] and report["down"] == [], report


def test_lb1_restarted_takes_the_vip_back(pair: Pair) -> None:
    """preempt = true: restarted, lb1 (priority 150) becomes master again, requests go
    through it, lb2 drops the VIP; verify is clean on both."""
    lab = pair.lab
    assert "preempt = true" in pair.file_b.read_text()
    lb2_log = len(lab.keepalived["lb2"].text())
    lab.start_keepalived("lb1", pair.conf["lb1"])
    took, _ = pair.through("lb1", 80, FAILOVER_BOUND + 20)
    pair.metrics["failback_s"] = round(took, 2)
    _, _, backup = wait_for(lambda: lab.keepalived["lb2"].text()[lb2_log:],
                            lambda t: "Entering BACKUP STATE" in t, 15)  # fmt: skip
    assert backup, f"lb2 did not go back to backup\n{lab.logs_text()}"
    assert lab.holds_vip("lb1") and not lab.holds_vip("lb2"), lab.logs_text()
    full = {M_WEB: set(RS.values()), M_API: set(RS.values())}
    pair.wait_table("lb1", full, 30, "lb1 restarted")
    for director in DIRECTORS:
        report = pair.verify(director, pair.file_b)
        assert report["drift"] == [] and report["down"] == [], report


# ---- 5. agreement: drift by hand, destroy --------------------------------------------------


def test_mark_deleted_or_service_lost_is_drift(pair: Pair) -> None:
    """A mark element deleted by hand is drift "missing" (exit 3); keepalived losing a
    service (ipvsadm -D) adds "service-missing"."""
    lab = pair.lab
    ns = lab.ns["lb1"]
    listed = sh("nft", "list", "map", "inet", "lvsfw", "mark4", netns=ns)
    assert f"{VIP} . tcp . 443" in listed, listed
    sh("nft", "delete", "element", "inet", "lvsfw", "mark4", f"{{ {VIP} . tcp . 443 }}", netns=ns)
    report = pair.verify("lb1", pair.file_b, expect=3)
    assert kinds_of(report) == [("missing", "web")], report

    lab.ipvsadm("lb1", "-D", "-f", str(M_API))
    report = pair.verify("lb1", pair.file_b, expect=3)
    assert kinds_of(report) == [("missing", "web"), ("service-missing", "api")], report

    # apply puts the mark back; the keepalived.conf is unchanged, so keepalived is not
    # reloaded (a reload would not re-add it): apply says to restart keepalived
    repair = pair.apply("lb1", pair.file_b)
    pair.metrics["apply_after_lost_service"] = repair.stdout.strip().splitlines()
    lost = f"keepalived does not hold fwmark {M_API} (ipv4)"
    assert lost in repair.stderr and "restart keepalived" in repair.stderr, repair
    after = pair.lvsfw("verify", str(pair.file_b), "--json", *pair.node_args("lb1"))
    pair.metrics["apply_restores_lost_keepalived_service"] = M_API in lab.ipvs_table("lb1")
    pair.metrics["verify_after_that_apply"] = [after.code, kinds_of(after.json())]
    # does a reload by hand bring it back? (what apply could do; recorded only)
    lab.keepalived["lb1"].proc.send_signal(signal.SIGHUP)
    _, _, back = wait_for(lambda: lab.ipvs_table("lb1"), lambda t: M_API in t, 6)
    pair.metrics["sighup_restores_lost_keepalived_service"] = back
    assert after.code in (0, 3) and ("missing", "web") not in kinds_of(after.json()), after


def test_destroy_empties_both_directors(pair: Pair) -> None:
    """destroy on both: lvsfw's nft table is gone, keepalived (reloaded) removes the
    services, the file stays lvsfw's with no virtual_server; show lists nothing."""
    lab = pair.lab
    for director in DIRECTORS:
        args = ["destroy", "-c", str(pair.file_b), "-y", *pair.node_args(director)]
        result = pair.lvsfw(*args)
        assert result.code == 0, f"{result}\n{lab.logs_text()}"
        tables = sh("nft", "list", "tables", netns=lab.ns[director])
        assert "lvsfw" not in tables, tables
        text = pair.conf[director].read_text()
        assert text.startswith(HEADER) and "virtual_server" not in text, text
    for director in DIRECTORS:
        pair.wait_table(director, {}, 30, "destroy")
    shown = pair.lvsfw("show", "-c", str(pair.file_b), *pair.node_args("lb1"))
    assert shown.code == 0, shown
