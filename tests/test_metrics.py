"""``lvsfw metrics``: the scrape parsed back with prometheus_client's parser (and linted by
``promtool check metrics`` when the Debian ``prometheus`` package is installed), the IPVS
listings it reads, the last apply's record, and the examples (systemd timer, alert rules).

The kernel tests run in throwaway namespaces ``lvsfw-t-<hex>``, IPVS through the fake ipvsadm
(tests/fake_ipvsadm.py: this host has no IPVS).
"""

from __future__ import annotations

import configparser
import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lvsfw import config, metrics, state
from lvsfw.drift import KINDS, Drift, Report
from lvsfw.enums import Family
from lvsfw.errors import LvsfwError, ParseError
from tests import fake_ipvsadm
from tests.netlab import empty_netns, run
from tests.test_cli import WEB, invoke

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PROMTOOL = shutil.which("promtool")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, parsed by prometheus_client: (name, labels) -> value."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"duplicate sample {key}"
            found[key] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def promtool_lint(text: str) -> None:
    """``promtool check metrics`` on ``text`` when promtool is installed."""
    if PROMTOOL is None:
        return
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- ipvsadm's listings -----------------------------------------------------------------------

# As ipvsadm 1.31 prints them (printf "%s %s" / "  -> %-28s %-7s %-6d %-10u %-10u"; with
# --stats, "%-33s" then print_largenum: "%*llu", at least 9 wide with --exact).
LISTING = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  198.51.100.1:80 rr
  -> 10.9.9.9:80                  Masq    1      7          7
FWM  80 wlc persistent 300
  -> 10.0.0.11:0                  Route   1      12         3
  -> 10.0.0.12:0                  Route   0      0          41
FWM  80 IPv6 wlc persistent 300
  -> [2001:db8:1::11]:0           Route   1      2          0
FWM  -1294967296 rr
"""
STATS = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  198.51.100.1:80                     9        9        9        9        9
  -> 10.9.9.9:80                         9        9        9        9        9
FWM  80                               1500   100000        0  12000000000 0
  -> 10.0.0.11:0                      1000    60000        0  7000000000 0
  -> 10.0.0.12:0                       500    40000        0  5000000000 0
FWM  80 IPv6                             1        2        0      160        0
  -> [2001:db8:1::11]:0                  1        2        0      160        0
FWM  -1294967296                         0        0        0        0        0
"""


def test_parse_listing_and_stats() -> None:
    v4, v6, big = (Family.IPV4, 80), (Family.IPV6, 80), (Family.IPV4, 3000000000)
    listing = metrics.parse_listing(LISTING)
    assert set(listing) == {v4, v6, big}  # the TCP service is not lvsfw's kind
    assert listing[v4] == {
        ipaddress.ip_address("10.0.0.11"): (1, 12, 3),
        ipaddress.ip_address("10.0.0.12"): (0, 0, 41),
    }
    assert listing[v6] == {ipaddress.ip_address("2001:db8:1::11"): (1, 2, 0)}
    assert listing[big] == {}
    stats = metrics.parse_stats(STATS)
    assert stats[v4][0] == metrics.Counters(1500, 100000, 0, 12000000000, 0)
    assert stats[v4][1][ipaddress.ip_address("10.0.0.12")].in_bytes == 5000000000
    assert stats[v6][0].in_bytes == 160 and stats[big][1] == {}


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (metrics.parse_listing, LISTING.replace("Route   1      12", "Route   x      12")),
        (metrics.parse_stats, STATS.replace(" 1500 ", " 15K ")),  # not --exact
        (metrics.parse_stats, STATS.replace("  -> 10.0.0.11:0  ", "  => 10.0.0.11:0  ")),
    ],
)
def test_parse_errors_name_the_line(parse: object, text: str) -> None:
    with pytest.raises(ParseError):
        parse(text)  # type: ignore[operator]


def output(*argv: object) -> str:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=True).stdout


def test_the_fake_ipvsadm_prints_what_the_parser_reads(tmp_path: Path) -> None:
    """tests/fake_ipvsadm.py's --stats listing (from ipvsadm's printf formats) parses back."""
    ipvsadm = fake_ipvsadm.install(tmp_path)
    subprocess.run([ipvsadm, "-A", "-f", "80", "-s", "wlc"], check=True)
    subprocess.run([ipvsadm, "-a", "-f", "80", "-r", "10.0.0.11:0", "-g", "-w", "3"], check=True)
    fake_ipvsadm.traffic(
        ipvsadm, 80, "10.0.0.11", active=4, inactive=5, conns=123456789, inbytes=10**13
    )
    stats = metrics.parse_stats(output(ipvsadm, "-L", "-n", "--stats", "--exact"))
    assert stats[(Family.IPV4, 80)][0] == metrics.Counters(123456789, 0, 0, 10**13, 0)
    rough = output(ipvsadm, "-Ln", "--stats")
    assert "123456K" in rough and "10000G" in rough  # what --exact avoids
    assert metrics.parse_listing(output(ipvsadm, "-L", "-n"))[(Family.IPV4, 80)] == {
        ipaddress.ip_address("10.0.0.11"): (3, 4, 5)
    }


# -- the exposition, without a kernel ---------------------------------------------------------


def snapshot(tmp_path: Path, **fields: object) -> metrics.Snapshot:
    bundles = tuple(config.loads(WEB).bundles)
    live = {
        (Family.IPV4, 80): metrics.ServiceStats(
            metrics.Counters(1500, 100, 90, 12000, 9000),
            (
                metrics.ServerStats(
                    ipaddress.ip_address("10.0.0.11"), 1, 12, 3, metrics.Counters(1000)
                ),
                metrics.ServerStats(ipaddress.ip_address("10.0.0.12"), 0, 0, 41),
            ),
        ),
    }
    base: dict[str, object] = {
        "state_file": str(tmp_path / "state.json"),
        "bundles": bundles,
        "report": Report((Drift("missing", "dns", "192.0.2.53 udp:53 is not marked"),)),
        "owned": state.State(frozenset({(Family.IPV4, 80), (Family.IPV4, 53)}), "nftables"),
        "last_apply": metrics.LastApply(1700000000.5, True),
        "ipvs": live,
    }
    base.update(fields)
    return metrics.Snapshot(**base)  # type: ignore[arg-type]


def test_exposition_parses_back(tmp_path: Path) -> None:
    text = metrics.exposition(snapshot(tmp_path))
    found = samples(text)
    assert value(found, "lvsfw_bundles") == 2
    assert value(found, "lvsfw_drift", bundle="dns", kind="missing") == 1
    for kind in KINDS:  # every (bundle, kind) is there, 0 when clean, for `lvsfw_drift > 0`
        assert value(found, "lvsfw_drift", bundle="web", kind=kind) == 0
        assert value(found, "lvsfw_drift", bundle="-", kind=kind) == 0
    assert value(found, "lvsfw_last_apply_timestamp_seconds") == 1700000000.5
    assert value(found, "lvsfw_last_apply_success") == 1
    assert value(found, "lvsfw_state_pending") == 0
    web4 = {"family": "ipv4", "mark": "80", "bundle": "web"}
    assert value(found, "lvsfw_ipvs_service_connections_total", **web4) == 1500
    assert value(found, "lvsfw_ipvs_service_bytes_total", **web4, direction="out") == 9000
    assert value(found, "lvsfw_ipvs_service_real_servers", **web4) == 2
    assert value(found, "lvsfw_ipvs_service_real_servers_up", **web4) == 1  # .12 has weight 0
    one = {**web4, "server": "10.0.0.11"}
    assert value(found, "lvsfw_ipvs_real_server_active_connections", **one) == 12
    assert value(found, "lvsfw_ipvs_real_server_inactive_connections", **one) == 3
    assert value(found, "lvsfw_ipvs_real_server_connections_total", **one) == 1000
    assert value(found, "lvsfw_ipvs_real_server_weight", **one) == 1
    assert value(found, "lvsfw_ipvs_real_server_up", **one) == 1
    assert value(found, "lvsfw_ipvs_real_server_up", **{**one, "server": "10.0.0.12"}) == 0
    # wanted but not live: the v6 service and dns's service have no real server up
    web6 = {**web4, "family": "ipv6"}
    assert value(found, "lvsfw_ipvs_service_real_servers_up", **web6) == 0
    assert value(found, "lvsfw_ipvs_real_server_up", **web6, server="2001:db8:1::11") == 0
    dns = {"family": "ipv4", "mark": "53", "bundle": "dns"}
    assert value(found, "lvsfw_ipvs_service_real_servers_up", **dns) == 0
    assert ("lvsfw_ipvs_service_connections_total", frozenset(dns.items())) not in found
    assert value(found, "lvsfw_collector_success", collector="ipvs") == 1
    kinds = types(text)
    assert kinds["lvsfw_ipvs_service_packets"] == "counter"
    assert kinds["lvsfw_drift"] == kinds["lvsfw_ipvs_real_server_up"] == "gauge"
    promtool_lint(text)


def test_exposition_without_a_config_or_a_record(tmp_path: Path) -> None:
    """Without FILE: what lvsfw owns; without a record, the state file's mtime and flag."""
    owned = state.State(frozenset({(Family.IPV4, 80)}), "nftables", pending=True)
    snap = snapshot(
        tmp_path, bundles=None, report=None, last_apply=None, state_mtime=1.5e9, owned=owned
    )
    found = samples(metrics.exposition(snap))
    names = {name for name, _ in found}
    assert "lvsfw_bundles" not in names and "lvsfw_drift" not in names
    assert value(found, "lvsfw_last_apply_timestamp_seconds") == 1.5e9
    assert value(found, "lvsfw_last_apply_success") == 0  # pending: an apply did not finish
    assert value(found, "lvsfw_state_pending") == 1
    v4 = {"family": "ipv4", "mark": "80", "bundle": "-"}
    assert value(found, "lvsfw_ipvs_service_real_servers_up", **v4) == 1
    assert {c for n, c in found if n == "lvsfw_collector_success"} == {
        frozenset({("collector", "state")}),
        frozenset({("collector", "ipvs")}),
    }


def test_a_failed_part_is_named_and_the_rest_written(tmp_path: Path) -> None:
    snap = snapshot(tmp_path, ipvs=None, report=None, errors={"ipvs": "no", "verify": "no"})
    found = samples(metrics.exposition(snap))
    assert value(found, "lvsfw_collector_success", collector="ipvs") == 0
    assert value(found, "lvsfw_collector_success", collector="verify") == 0
    assert value(found, "lvsfw_collector_success", collector="state") == 1
    assert value(found, "lvsfw_bundles") == 2
    assert not any(n.startswith(("lvsfw_ipvs_", "lvsfw_drift")) for n, _ in found)


def test_textfile_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "lvsfw.prom"
    path.write_text("old\n")
    metrics.write_textfile(str(path), snapshot(tmp_path))
    assert value(samples(path.read_text()), "lvsfw_bundles") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lvsfw.prom"]  # no temporary left
    with pytest.raises(LvsfwError, match="does not exist"):
        metrics.write_textfile(str(tmp_path / "nowhere" / "x.prom"), snapshot(tmp_path))


def test_last_apply_record(tmp_path: Path) -> None:
    state_file = str(tmp_path / "state.json")
    assert metrics.read_last_apply(state_file) is None
    metrics.record_apply(state_file, False, "ipvsadm said no")
    record = metrics.read_last_apply(state_file)
    assert record is not None and (record.ok, record.error) == (False, "ipvsadm said no")
    Path(metrics.last_apply_path(state_file)).write_text('{"time": "soon", "ok": true}')
    with pytest.raises(LvsfwError, match="damaged"):
        metrics.read_last_apply(state_file)


# -- the command, in a throwaway namespace ----------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    with empty_netns() as name:
        yield name


@pytest.mark.kernel
def test_metrics_command(netns: str, tmp_path: Path) -> None:
    web = tmp_path / "web.toml"
    web.write_text(WEB)
    ipvsadm = fake_ipvsadm.install(tmp_path / "ipvs")
    state_file = tmp_path / "state.json"
    flags = ["--netns", netns, "--ipvsadm", str(ipvsadm), "--state-file", str(state_file)]
    flags += ["--lock-dir", str(tmp_path)]
    assert invoke("apply", str(web), *flags, "--yes").exit_code == 0
    record = json.loads(Path(metrics.last_apply_path(str(state_file))).read_text())
    assert record["ok"] is True and record["error"] is None
    fake_ipvsadm.traffic(ipvsadm, 80, "10.0.0.12", active=5, inactive=2, conns=70, inpkts=700)
    result = invoke("metrics", str(web), *flags)
    assert result.exit_code == 0, result.stderr
    found = samples(result.stdout)
    assert value(found, "lvsfw_bundles") == 2
    assert sum(v for (n, _), v in found.items() if n == "lvsfw_drift") == 0
    assert value(found, "lvsfw_last_apply_success") == 1
    two = {"family": "ipv4", "mark": "80", "bundle": "web", "server": "10.0.0.12"}
    assert value(found, "lvsfw_ipvs_real_server_weight", **two) == 2
    assert value(found, "lvsfw_ipvs_real_server_active_connections", **two) == 5
    assert value(found, "lvsfw_ipvs_real_server_packets_total", **two, direction="in") == 700
    web4 = {k: v for k, v in two.items() if k != "server"}
    assert value(found, "lvsfw_ipvs_service_connections_total", **web4) == 70
    assert value(found, "lvsfw_ipvs_service_real_servers_up", **web4) == 2
    promtool_lint(result.stdout)
    # drift: a mark dropped behind lvsfw's back, a real server taken out of its service
    run(["ip", "netns", "exec", netns, "nft", "delete", "element", "inet", "lvsfw", "mark4",
         "{ 192.0.2.53 . udp . 53 }"])  # fmt: skip
    subprocess.run([ipvsadm, "-d", "-f", "53", "-r", "10.0.0.53:0"], check=True)
    textfile = tmp_path / "textfile" / "lvsfw.prom"
    textfile.parent.mkdir()
    result = invoke("metrics", str(web), *flags, "--textfile", str(textfile))
    assert (result.exit_code, result.stdout) == (0, "")
    found = samples(textfile.read_text())
    assert value(found, "lvsfw_drift", bundle="dns", kind="missing") == 1
    assert value(found, "lvsfw_drift", bundle="dns", kind="service-changed") == 1
    assert value(found, "lvsfw_drift", bundle="web", kind="missing") == 0
    dns = {"family": "ipv4", "mark": "53", "bundle": "dns"}
    assert value(found, "lvsfw_ipvs_service_real_servers_up", **dns) == 0
    assert value(found, "lvsfw_ipvs_real_server_up", **dns, server="10.0.0.53") == 0
    # without FILE: what the state file says lvsfw owns
    bare = samples(invoke("metrics", *flags).stdout)
    assert ("lvsfw_bundles", frozenset()) not in bare
    assert value(bare, "lvsfw_owned_ipvs_services") == 3
    # IPVS gone: the rest is still written, the failure named in one line, exit 1
    fake_ipvsadm.update(ipvsadm, absent=True)
    failed = invoke("metrics", str(web), *flags, "--textfile", str(textfile))
    assert failed.exit_code == 1 and failed.stderr.count("\n") == 1
    assert failed.stderr.startswith("lvsfw: metrics incomplete: ") and "IPVS" in failed.stderr
    found = samples(textfile.read_text())
    assert value(found, "lvsfw_collector_success", collector="ipvs") == 0
    assert value(found, "lvsfw_bundles") == 2
    # a failed apply is recorded as such
    assert invoke("apply", str(web), *flags, "--yes").exit_code == 1
    record = json.loads(Path(metrics.last_apply_path(str(state_file))).read_text())
    assert record["ok"] is False and "IPVS" in record["error"]
    fake_ipvsadm.update(ipvsadm, absent=False)
    found = samples(invoke("metrics", str(web), *flags).stdout)
    assert value(found, "lvsfw_last_apply_success") == 0


def test_metrics_rejects_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[bundle]]\nname = 1\n")
    result = invoke("metrics", str(path))
    assert result.exit_code == 1 and result.stderr.startswith(f"lvsfw: {path}")
    assert "Traceback" not in result.output


# -- examples: systemd units and alert rules --------------------------------------------------


def test_systemd_timer_runs_metrics_every_30_seconds() -> None:
    service, timer = configparser.ConfigParser(), configparser.ConfigParser()
    service.read(EXAMPLES / "lvsfw-metrics.service")
    timer.read(EXAMPLES / "lvsfw-metrics.timer")
    argv = service["Service"]["ExecStart"].split()
    assert argv[1:3] == ["metrics", "/etc/lvsfw/lvsfw.toml"] and "--textfile" in argv
    assert argv[argv.index("--textfile") + 1].endswith(".prom")
    assert service["Service"]["Type"] == "oneshot"
    assert timer["Timer"]["OnUnitActiveSec"] == "30s"
    assert timer["Install"]["WantedBy"] == "timers.target"
    # the flags it passes are the command's own
    usage = invoke("metrics", "--help")
    assert usage.exit_code == 0 and "--textfile" in usage.output


def test_alert_rules_use_metrics_lvsfw_exports(tmp_path: Path) -> None:
    """A parser check (PyYAML, from ansible-core) of examples/lvsfw-alerts.yml: every lvsfw_*
    name in an expression is one a scrape holds."""
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load((EXAMPLES / "lvsfw-alerts.yml").read_text())
    exported = {name for name, _ in samples(metrics.exposition(snapshot(tmp_path)))}
    exported |= set(types(metrics.exposition(snapshot(tmp_path))))
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert alerts["LvsfwDrift"] == "lvsfw_drift > 0"
    assert "lvsfw_ipvs_service_real_servers_up == 0" in alerts.values()
    for expr in alerts.values():
        for name in re.findall(r"\blvsfw_[a-z_]+", expr):
            assert name in exported, f"{name} in {expr!r} is not exported"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    assert PROMTOOL is not None
    for argv in (
        [PROMTOOL, "check", "rules", str(EXAMPLES / "lvsfw-alerts.yml")],
        [PROMTOOL, "test", "rules", str(ROOT / "tests" / "data" / "lvsfw-alerts.test.yml")],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)
        assert done.returncode == 0, done.stdout + done.stderr
