"""The ``lvsfw`` command through click's runner: every command and exit code, without a kernel
and against real kernels in throwaway namespaces (``lvsfw-t-<hex>``). The real console script,
the README's tour and the docs: tests/test_cli_script.py."""

from __future__ import annotations

import json
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lvsfw import config, registry, specify
from lvsfw.backends.iptables import Iptables
from lvsfw.cli import cli
from lvsfw.enums import Family
from tests import fake_ipvsadm
from tests.netlab import empty_netns, ensure_kernel, run, xtables_tools

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
LVSFW = Path(sys.executable).parent / "lvsfw"
COMMANDS = ("check", "render", "plan", "apply", "verify", "show", "destroy", "save", "import")
WEB = """\
[director]
firewall = "nftables"
ipvs = true

[[bundle]]
name = "web"
vips = ["192.0.2.10", "2001:db8::10"]
ports = "tcp:80,443"
mark = 80
scheduler = "wlc"
persistence = 300
real_servers = ["10.0.0.11", { address = "10.0.0.12", weight = 2 }, "2001:db8:1::11"]

[[bundle]]
name = "dns"
vips = "192.0.2.53"
ports = "udp:53 tcp:53"
mark = 53
real_servers = ["10.0.0.53"]
"""
BAD = '[[bundle]]\nname = "web"\nvips = "192.0.2.10"\nports = "tcp:80"\nmark = 80\nweigth = 1\n'


def runner() -> CliRunner:
    """A runner keeping stderr apart (the default from click 8.2; click 8.1, the last for
    Python 3.9, needs ``mix_stderr=False``)."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def invoke(*args: str, stdin: str | None = None) -> Result:
    return runner().invoke(cli, list(args), input=stdin)


def one_error_line(result: Result) -> str:
    """The failure's single stderr line (and no traceback anywhere)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lvsfw: "), result.stderr
    return lines[0]


@pytest.fixture
def web(tmp_path: Path) -> Path:
    path = tmp_path / "web.toml"
    path.write_text(WEB)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    return path


# -- no kernel --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_of_every_command(command: str | None) -> None:
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0 and "Usage: " in result.output
    if command is None:
        assert all(c in result.output for c in COMMANDS)


def test_version() -> None:
    assert re.match(r"lvsfw, version \S+", invoke("--version").output)


def test_check_of_many_bundles_names_ten(tmp_path: Path) -> None:
    """A big file's one line names ten bundles and counts the rest; --json lists all; the
    service count equals the specification's (counted without building the services)."""
    from lvsfw import Bundle

    bundles = [Bundle(f"b{i}", ["192.0.2.1", "2001:db8::1"] if i % 3 else "192.0.2.2",
                      f"tcp:{1000 + i}", 10 + i // 2) for i in range(12)]  # fmt: skip
    path = tmp_path / "many.toml"
    path.write_text(config.dumps(bundles))
    line = invoke("check", str(path)).output
    assert "(b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, ... 2 more)" in line, line
    assert f"{len(specify(bundles).services)} IPVS service(s)" in line
    assert len(json.loads(invoke("check", str(path), "--json").output)["bundles"]) == 12


def test_check(web: Path, bad: Path) -> None:
    result = invoke("check", str(web))
    assert result.exit_code == 0
    assert (
        result.output == f"{web}: ok: 2 bundle(s) (web, dns), 6 mark rule(s), 3 IPVS service(s)\n"
    )
    data = json.loads(invoke("check", str(web), "--json").output)
    assert data == {
        "ok": True,
        "file": str(web),
        "bundles": ["web", "dns"],
        "mark_rules": 6,
        "ipvs_services": 3,
    }
    line = one_error_line(invoke("check", str(bad)))
    assert line.startswith(f"lvsfw: {bad}:6: bundle[0] (web).weigth: unknown key; known keys: ")
    assert "cannot read" in one_error_line(invoke("check", str(bad) + ".missing"))


@pytest.mark.parametrize(
    ("backend", "needle"),
    [
        ("nftables", "table inet lvsfw"),
        ("iptables-nft", "-A LVSFW-PREROUTING"),
        ("iptables-legacy", '192.0.2.10,tcp:80 comment "web" skbmark 0x50'),
        ("ipvs", "-A -f 80 -s wlc -p 300"),
        ("keepalived", "virtual_server fwmark 53 {"),
    ],
)
def test_render_each_backend(web: Path, backend: str, needle: str) -> None:
    result = invoke("render", str(web), "--backend", backend)
    assert result.exit_code == 0 and needle in result.output
    data = json.loads(invoke("render", str(web), "-b", backend, "--json").output)
    assert data["backend"] == backend and needle in data["text"]


def test_render_defaults_to_the_file_firewall_and_rejects_bad_backends(web: Path) -> None:
    assert "table inet lvsfw" in invoke("render", str(web)).output
    assert "backend: 'pf'" in one_error_line(invoke("render", str(web), "-b", "pf"))
    assert "auto" in one_error_line(invoke("render", str(web), "-b", "auto"))


def test_usage_errors_exit_1_not_2(web: Path) -> None:
    """2 means "changes pending" for plan, so click's usage errors must not use it."""
    one_error_line(invoke("plan"))
    one_error_line(invoke("plan", str(web), "--bogus"))
    one_error_line(invoke("nosuchcommand"))
    one_error_line(invoke("plan", str(web), "--lock-timeout", "soon"))


def test_kernel_commands_reject_bad_files_and_namespaces(
    web: Path, bad: Path, tmp_path: Path
) -> None:
    own = ["--state-file", str(tmp_path / "state.json")]  # a failed apply is recorded there
    for command in ("plan", "apply", "verify", "save"):
        extra = {"apply": ["--yes"], "save": [str(tmp_path / "x")]}.get(command, [])
        assert f"{bad}:6" in one_error_line(invoke(command, str(bad), *extra, *own))
    assert (tmp_path / "state.json.last-apply").exists()  # not the host's /var/lib/lvsfw
    missing = f"lvsfw-t-{secrets.token_hex(4)}"
    for args in (
        ["plan", str(web)],
        ["verify", str(web)],
        ["apply", str(web), "--yes"],
        ["show"],
        ["destroy", "--yes"],
    ):
        assert "does not exist" in one_error_line(invoke(*args, "--netns", missing))
    assert "firewall" in one_error_line(invoke("plan", str(web), "--firewall", "ipvs"))


def test_json_without_yes_is_refused(web: Path) -> None:
    assert "--json needs --yes" in one_error_line(invoke("apply", str(web), "--json"))
    assert "--json needs --yes" in one_error_line(invoke("destroy", "--json"))


def test_import_lvs_cf_with_rules(tmp_path: Path) -> None:
    result = invoke("import", str(DATA / "lvs.cf"), "--rules", str(DATA / "iptables-save.txt"))
    assert result.exit_code == 0, result.output
    assert "lvsfw: warning: " in result.stderr and "mark 77" in result.stderr
    cfg = config.loads(result.stdout)
    assert [(b.name, str(b.ports)) for b in cfg.bundles] == [
        ("ftp", "tcp:21,10000-20000"),
        ("web-http", "tcp:80,443"),
        ("web6", "tcp:80,443"),
    ]
    out = tmp_path / "imported.toml"
    data = json.loads(
        invoke(
            "import",
            str(DATA / "lvs.cf"),
            "--rules",
            str(DATA / "iptables-save.txt"),
            "-o",
            str(out),
            "--json",
        ).output
    )
    assert data["bundles"] == ["ftp", "web-http", "web6"] and data["left_out"] == []
    assert config.load(str(out)).bundles == cfg.bundles
    assert invoke("check", str(out)).exit_code == 0


def test_import_keepalived_names_unmatched_marks_and_exits_1(tmp_path: Path) -> None:
    out = tmp_path / "k.toml"
    result = invoke(
        "import",
        str(DATA / "keepalived.conf"),
        "--rules",
        str(DATA / "nft-ruleset.txt"),
        "-o",
        str(out),
    )
    assert result.exit_code == 1 and result.stdout == ""
    assert "no packet-filter rule sets mark 53; bundle left out" in result.stderr
    assert "Traceback" not in result.output
    assert [b.name for b in config.load(str(out)).bundles] == ["mark21", "mark80"]
    assert '# name = "mark53"' in out.read_text()


def test_import_errors(tmp_path: Path) -> None:
    rules = str(DATA / "iptables-save.txt")
    assert "not both" in one_error_line(
        invoke("import", str(DATA / "lvs.cf"), "--rules", rules, "--live")
    )
    assert "No such file" in one_error_line(invoke("import", str(tmp_path / "lvs.cf")))
    junk = tmp_path / "keepalived.conf"
    junk.write_text("virtual_server fwmark 80 {\n lb_algo rr\n")
    assert "not closed" in one_error_line(invoke("import", str(junk)))
    junk.write_text("global_defs {\n}\n")
    assert "no fwmark virtual server" in one_error_line(invoke("import", str(junk)))


# -- real kernels, click's runner -------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """A throwaway, empty network namespace ``lvsfw-t-<hex>``; always deleted."""
    with empty_netns() as name:
        yield name


FIREWALLS = {
    "nftables": (),
    "iptables-nft": xtables_tools("nft"),
    "iptables-legacy": xtables_tools("legacy"),
}


def _drop_a_mark(netns: str, firewall: str) -> None:
    if firewall == "nftables":
        run(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "nft",
                "delete",
                "element",
                "inet",
                "lvsfw",
                "mark4",
                "{ 192.0.2.53 . udp . 53 }",
            ]
        )
        return
    backend = registry.get(firewall)
    assert issubclass(backend, Iptables)
    name = backend.set_names[Family.IPV4]
    run(["ip", "netns", "exec", netns, "ipset", "del", name, "192.0.2.53,udp:53"])


@pytest.mark.kernel
@pytest.mark.parametrize("firewall", list(FIREWALLS))
def test_lifecycle_in_a_namespace(web: Path, netns: str, tmp_path: Path, firewall: str) -> None:
    ensure_kernel(FIREWALLS[firewall])
    flags = [
        "--netns",
        netns,
        "--firewall",
        firewall,
        "--no-ipvs",
        "--state-file",
        str(tmp_path / "state.json"),
        "--lock-dir",
        str(tmp_path),
    ]
    plan = invoke("plan", str(web), *flags)
    assert plan.exit_code == 2 and "add 192.0.2.10 tcp:80 -> mark 80" in plan.output
    assert json.loads(invoke("plan", str(web), *flags, "--json").output)["changes"] is True
    declined = invoke("apply", str(web), *flags, stdin="n\n")
    assert declined.exit_code == 1 and "aborted" in declined.stderr
    assert invoke("plan", str(web), *flags).exit_code == 2  # nothing was applied
    applied = invoke("apply", str(web), *flags, stdin="y\n")
    assert applied.exit_code == 0 and "applied: " in applied.output
    assert invoke("apply", str(web), *flags, "--yes").output == "no changes\n"
    assert invoke("plan", str(web), *flags).exit_code == 0
    verify = invoke("verify", str(web), *flags)
    assert (verify.exit_code, verify.output) == (0, "ok: no drift\n")
    show = invoke("show", *flags)
    assert show.exit_code == 0 and re.search(r"80\s+192\.0\.2\.10\s+tcp\s+80,443", show.output)
    rules = json.loads(invoke("show", *flags, "--json").output)["rules"]
    assert len(rules) == 6 and {r["mark"] for r in rules} == {53, 80}
    _drop_a_mark(netns, firewall)
    drift = invoke("verify", str(web), *flags)
    assert drift.exit_code == 3 and "dns: missing: 192.0.2.53 udp:53" in drift.output
    report = json.loads(invoke("verify", str(web), *flags, "--json").output)
    assert report["ok"] is False and report["drift"][0]["bundle"] == "dns"
    assert invoke("apply", str(web), *flags, "--yes").exit_code == 0
    assert invoke("verify", str(web), *flags).exit_code == 0
    destroyed = invoke("destroy", *flags, "--yes")
    assert destroyed.exit_code == 0 and "remove 192.0.2.10" in destroyed.output
    assert "lvsfw owns nothing here" in invoke("show", *flags).output
    assert invoke("plan", str(web), *flags).exit_code == 2


@pytest.mark.kernel
def test_flags_override_the_director_table(netns: str, tmp_path: Path) -> None:
    """The file says iptables-legacy, IPVS and a missing namespace; the flags win."""
    ensure_kernel()
    path = tmp_path / "lb.toml"
    state_file = tmp_path / "from-file.json"
    path.write_text(
        WEB.replace(
            'firewall = "nftables"\nipvs = true',
            f'firewall = "iptables-legacy"\nipvs = true\nnetns = "lvsfw-t-absent"\n'
            f'state_file = "{state_file}"',
        )
    )
    assert "does not exist" in one_error_line(invoke("plan", str(path)))
    flags = ["--netns", netns, "--firewall", "nftables", "--no-ipvs", "--lock-dir", str(tmp_path)]
    assert invoke("apply", str(path), *flags, "--yes").exit_code == 0
    assert json.loads(state_file.read_text())["firewall"] == "nftables"
    assert "table inet lvsfw" in run(["ip", "netns", "exec", netns, "nft", "list", "ruleset"])
    show = json.loads(
        invoke("show", "-c", str(path), *flags[:2], "--no-ipvs", "--json", *flags[-2:]).output
    )
    assert show["firewall"] == "nftables"  # recorded in the state file the config names
    assert (
        invoke("destroy", "-c", str(path), *flags[:2], "--no-ipvs", "--yes", *flags[-2:]).exit_code
        == 0
    )


@pytest.mark.kernel
def test_ipvs_through_the_fake_ipvsadm(web: Path, netns: str, tmp_path: Path) -> None:
    ensure_kernel()
    ipvsadm = fake_ipvsadm.install(tmp_path / "ipvs")
    flags = [
        "--netns",
        netns,
        "--ipvsadm",
        str(ipvsadm),
        "--state-file",
        str(tmp_path / "s.json"),
        "--lock-dir",
        str(tmp_path),
    ]
    plan = invoke("plan", str(web), *flags)
    assert plan.exit_code == 2 and "ipvs: add fwmark 80 ipv6" in plan.output
    assert invoke("apply", str(web), *flags, "--yes").exit_code == 0
    assert "-A -f 80 -s wlc -p 300" in fake_ipvsadm.table(ipvsadm)
    assert invoke("verify", str(web), *flags).exit_code == 0
    show = invoke("show", *flags)
    assert re.search(
        r"80\s+ipv4\s+wlc\s+300\s+10\.0\.0\.11 route w1, 10\.0\.0\.12 route w2", show.output
    )
    services = json.loads(invoke("show", *flags, "--json").output)["services"]
    assert sorted((s["mark"], s["family"]) for s in services) == [
        (53, "ipv4"),
        (80, "ipv4"),
        (80, "ipv6"),
    ]
    changed = WEB.replace('"10.0.0.53"]', '"10.0.0.53", "10.0.0.54"]')
    (tmp_path / "changed.toml").write_text(changed)
    drift = invoke("verify", str(tmp_path / "changed.toml"), *flags)
    assert drift.exit_code == 3 and "real server 10.0.0.54 missing" in drift.output
    saved = invoke("save", str(web), str(tmp_path / "boot"), *flags)
    assert saved.exit_code == 0 and "lvsfw.ipvs" in saved.output
    assert invoke("destroy", *flags, "--yes").exit_code == 0
    assert fake_ipvsadm.table(ipvsadm).strip() == ""
    fake_ipvsadm.update(ipvsadm, absent=True)
    assert "ipvs" in one_error_line(invoke("apply", str(web), *flags, "--yes")).lower()


@pytest.mark.kernel
def test_import_live(netns: str, tmp_path: Path) -> None:
    ensure_kernel(xtables_tools("legacy"))
    rules = (DATA / "iptables-save.txt").read_text()
    mangle = rules[rules.index("*mangle") : rules.index("COMMIT", rules.index("*mangle")) + 7]
    run(["ip", "netns", "exec", netns, "iptables-legacy-restore"], stdin=mangle)
    result = invoke("import", str(DATA / "lvs.cf"), "--live", "--netns", netns)
    assert result.exit_code == 0, result.output
    cfg = config.loads(result.stdout)
    assert [(b.name, str(b.ports)) for b in cfg.bundles] == [
        ("ftp", "tcp:21,10000-20000"),
        ("web-http", "tcp:80,443"),
        ("web6", "tcp:443"),
    ]  # web6's v6 rule lives in ip6tables: not loaded here, so lvs.cf's port stands in
    assert "no packet-filter rule sets mark 443" in result.stderr


@pytest.mark.kernel
@pytest.mark.parametrize("flavour", ["legacy", "nft"])
def test_import_live_reads_lvsfws_ipsets(
    web: Path, netns: str, tmp_path: Path, flavour: str
) -> None:
    """Single ports live in lvsfw's ipsets: ``--live`` reads them through ``ipset save``."""
    ensure_kernel((*xtables_tools(flavour), "ipset"))
    bundles = config.load(str(web)).bundles
    backend = registry.get(f"iptables-{flavour}")(netns=netns)
    assert isinstance(backend, Iptables)
    backend.apply(specify(bundles))
    keepalived = tmp_path / "keepalived.conf"
    keepalived.write_text(registry.get("keepalived")().render(bundles))
    result = invoke("import", str(keepalived), "--live", "--netns", netns)
    assert result.exit_code == 0, result.output
    imported = config.loads(result.stdout).bundles
    assert specify(imported) == specify(bundles)
    assert sorted(b.name for b in imported) == sorted(b.name for b in bundles)


def test_import_of_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / "lvs.cf"
    source.write_bytes(b"virtual web {\n address = \"\xff\xfe\"\n}\n")
    result = invoke("import", str(source))
    assert result.exit_code == 1
    assert result.stderr.startswith("lvsfw: ") and result.stderr.count("\n") == 1
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr
