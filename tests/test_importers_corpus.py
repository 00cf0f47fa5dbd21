"""The importers on the corpus in tests/data (see its README.md), keepalived.conf(5)'s keywords,
includes, IP:port services and the round trip through lvsfw's own renders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from hypothesis import given

from lvsfw import Bundle, config, registry, specify
from lvsfw.enums import Family
from lvsfw.errors import ParseError
from lvsfw.importers import ImportFailed, detect_format, import_file, import_text
from lvsfw.markscan import scan
from tests import strategies
from tests.test_cli import invoke

DATA = Path(__file__).resolve().parent / "data"
LVSFW = Path(sys.executable).parent / "lvsfw"


def _shape(bundles: tuple[Bundle, ...]) -> list[tuple[str, int, list[str], str]]:
    return [(b.name, b.mark.value, [str(v) for v in b.vips], str(b.ports)) for b in bundles]


def _said(warnings: tuple[str, ...], *parts: str) -> bool:
    return any(all(p in w for p in parts) for w in warnings)


def test_ip_port_services_become_bundles_and_a_remapped_port_is_refused() -> None:
    result = import_file(str(DATA / "keepalived-ipport.conf"))
    assert _shape(result.bundles) == [
        ("vs-192.168.200.100-443", 1000, ["192.168.200.100"], "tcp:443"),
        ("vs-10.10.10.2-1358", 1001, ["10.10.10.2"], "tcp:1358"),
    ]
    https, app = result.bundles
    assert https.persistence == 50 and app.persistence is None  # persistence_timeout 0
    assert str(app.service.sorry_server.address) == "192.168.200.200"  # type: ignore[union-attr]
    assert app.service.delay_loop == 6 and len(app.real_servers) == 2
    w = result.warnings
    assert not _said(w, "SSL_GET") and not _said(w, "HTTP_GET")  # carried over
    checks = [s.health for b in result.bundles for s in b.real_servers]
    assert {c.check for c in checks if c is not None} == {"https", "http"}
    assert all(c.port is not None for c in checks if c is not None)  # the service's port
    assert _said(w, ":53:", "'virtual_server 10.10.10.3 1358' not imported", "port 1359")
    text = result.config_text()
    assert "# from " in text and "virtual_server 192.168.200.100 443" in text
    assert config.loads(text).bundles == result.bundles


def test_first_mark_skips_marks_in_use_and_merge_ports_warns_about_persistence() -> None:
    text = "".join(
        f"virtual_server 192.0.2.10 {port} {{\n lb_algo rr\n persistence_timeout 300\n"
        f" real_server 10.0.0.1 {port} {{\n }}\n}}\n"
        for port in (80, 443)
    ) + "virtual_server fwmark 5 {\n real_server 10.0.0.9 {\n }\n}\n"
    rules = scan("-A PREROUTING -d 192.0.2.9 -p tcp --dport 22 -j MARK --set-mark 6\n", "r")
    plain = import_text(text, "k.conf", rules=rules, first_mark=5)
    assert [b.mark.value for b in plain.bundles] == [7, 8]  # 5 (service) and 6 (rule) in use
    merged = import_text(text, "k.conf", merge_ports=True)
    assert _shape(merged.bundles) == [("vs-192.0.2.10", 1000, ["192.0.2.10"], "tcp:80,443")]
    assert _said(merged.warnings, "persistence (300 s) now spans these ports")


def test_groups_with_ranges_and_fwmark_members() -> None:
    result = import_file(str(DATA / "keepalived-group.conf"))
    ((web),) = result.bundles
    assert [str(v) for v in web.vips] == [
        "192.168.201.1", "192.168.201.2", "192.168.201.3", "192.168.201.10",
    ]  # fmt: skip
    assert str(web.ports) == "tcp:80" and web.service.quorum == 1
    ((_, stub),) = result.stubs
    assert stub["mark"] == 7 and stub["real_servers"] == [
        {"address": "10.1.1.2", "weight": 2, "forwarding": "tunnel"}
    ]
    assert _said(result.warnings, "'lb_kind TUN type gre' not imported", "ipip")
    assert _said(result.warnings, ":29:", "'ops' not imported")


def test_includes_globs_relative_and_inside_blocks() -> None:
    result = import_file(str(DATA / "include" / "keepalived.conf"))
    assert _shape(result.bundles) == [
        ("vs-192.0.2.80-80", 1000, ["192.0.2.80"], "tcp:80"),
        ("vs-192.0.2.53-53", 1001, ["192.0.2.53"], "udp:53"),
    ]
    assert [s.weight for s in result.bundles[0].real_servers] == [1, 3]
    assert result.warnings == ()


def test_include_cycles_and_missing_files_are_errors_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("global_defs {\n}\ninclude b.conf\n")
    (tmp_path / "b.conf").write_text("\ninclude a.conf\n")
    with pytest.raises(ParseError, match=r"b\.conf:2.*include cycle"):
        import_file(str(tmp_path / "a.conf"))
    (tmp_path / "c.conf").write_text("virtual_server 192.0.2.1 80 {\n include gone.conf\n}\n")
    with pytest.raises(ParseError, match=r"c\.conf:2.*gone\.conf"):
        import_file(str(tmp_path / "c.conf"))
    (tmp_path / "d.conf").write_text("include none/*.conf\nvirtual_server 192.0.2.1 80 {\n}\n")
    assert _said(import_file(str(tmp_path / "d.conf")).warnings, "d.conf:1", "matches no file")


def test_lvs_cf_without_fwmarks_and_service_names() -> None:
    result = import_file(str(DATA / "lvs-ports.cf"))
    assert _shape(result.bundles) == [
        ("www", 1000, ["192.0.2.30"], "tcp:80"), ("dns", 1001, ["192.0.2.31"], "udp:53"),
    ]  # fmt: skip


def test_lvs_howto_rules_are_read_exactly_or_refused() -> None:
    found = scan((DATA / "lvs-howto-rules.sh").read_text(), "rules.sh")
    assert sorted((r.mark, str(r.vip), r.first_port, r.last_port) for r in found.rules) == [
        (21, "192.0.2.21", 21, 21),
        (21, "192.0.2.21", 1024, 65535),  # --dport 1024: is open-ended
        (90, "192.0.2.90", 1, 1023),  # an -R line, --dport :1023
        (92, "192.0.2.92", 80, 80),  # -s 0.0.0.0/0 matches everything
    ]
    w = tuple(found.warnings)
    assert _said(w, "rules.sh:4:", "'-i eth0' dropped")
    assert _said(w, "rules.sh:6:", "not imported", "'-m mac'")
    assert _said(w, "rules.sh:7:", "negated match '! --syn'")
    assert _said(w, "rules.sh:9:", "'-m mark'") and _said(w, "rules.sh:11:", "'--tcp-flags'")
    assert len(w) == 5


def test_nft_maps_are_read_and_other_matches_refused() -> None:
    text = """table ip lb { chain p { type filter hook prerouting priority mangle;
        meta mark set ip daddr . tcp dport map { 192.0.2.1 . 80 : 0x1, 192.0.2.1 . 443 : 0x1 }
        ip daddr 192.0.2.2 meta mark set udp dport map { 53 : 0x2 }
        ip daddr 192.0.2.3 tcp dport 80 tcp flags syn meta mark set 3
        ip daddr 192.0.2.4 tcp dport 80 meta mark set ip saddr map { 10.0.0.1 : 4 }
        iifname "eth0" ip daddr 192.0.2.5 tcp dport 80 counter meta mark set 5 accept } }
    """
    found = scan(text, "n")
    assert sorted((r.mark, str(r.vip), str(r.protocol), r.first_port) for r in found.rules) == [
        (1, "192.0.2.1", "tcp", 80), (1, "192.0.2.1", "tcp", 443), (2, "192.0.2.2", "udp", 53),
        (5, "192.0.2.5", "tcp", 80),
    ]  # fmt: skip
    w = tuple(found.warnings)
    assert _said(w, "n:4:", "'tcp flags syn' cannot be kept") and _said(w, "n:5:", "not imported")
    assert _said(w, "n:6:", "iifname") and len(w) == 3


#: keepalived.conf(5): virtual_server, real_server and checker keywords.
SERVICE_WORDS = [
    "delay_loop 5", "lvs_sched rr", "lb_algo rr", "lvs_method TUN", "lb_kind NAT", "hashed",
    "flag-1", "flag-2", "flag-3", "sh-port", "sh-fallback", "mh-port", "mh-fallback", "ops",
    "persistence_engine sip", "persistence_timeout 60", "persistence_granularity 255.255.255.0",
    "protocol TCP", "ha_suspend", "virtualhost www.example.org", "sorry_server 10.9.9.9 80",
    "sorry_server_inhibit", "sorry_server_lvs_method DR", "alpha", "omega", "quorum 1",
    "quorum_up /bin/true", "quorum_down /bin/true", "hysteresis 0", "retry 3",
    "delay_before_retry 3", "warmup 5", "connect_timeout 3", "inhibit_on_failure",
    "smtp_alert", "notify_up /bin/true", "notify_down /bin/true", "ip_family inet",
]  # fmt: skip
SERVER_WORDS = [
    "weight 2", "lvs_method TUN", "notify_up /bin/true", "notify_down /bin/true",
    "uthreshold 10", "uthreshold 10\n lthreshold 5", "inhibit_on_failure", "smtp_alert",
    "alpha", "retry 2",
    "delay_before_retry 2", "warmup 2", "delay_loop 2", "virtualhost x", "connect_timeout 2",
]  # fmt: skip
CHECKERS = ["HTTP_GET", "SSL_GET", "TCP_CHECK", "SMTP_CHECK", "DNS_CHECK", "MISC_CHECK",
            "BFD_CHECK", "UDP_CHECK", "PING_CHECK", "FILE_CHECK"]  # fmt: skip
BASE = Bundle("vs-192.0.2.1-80", "192.0.2.1", "tcp:80", 1000, real_servers=["10.0.0.1"])


def _imported(service: str = "", server: str = "") -> tuple[tuple[Bundle, ...], tuple[str, ...]]:
    text = (f"virtual_server 192.0.2.1 80 {{\n{service}\n real_server 10.0.0.1 80 {{\n"
            f"{server}\n }}\n}}\n")  # fmt: skip
    result = import_text(text, "k.conf", "keepalived")
    return result.bundles, result.warnings


@pytest.mark.parametrize("line", SERVICE_WORDS)
def test_every_virtual_server_keyword_is_imported_or_warned(line: str) -> None:
    bundles, warnings = _imported(service=line)
    keyword = line.split(maxsplit=1)[0]
    changed = bundles != (BASE,) or any(
        getattr(bundles[0].service, f) != getattr(BASE.service, f)
        for f in ("delay_loop", "quorum", "hysteresis", "sorry_server", "inhibit_on_failure",
                  "alpha", "omega")
    )
    warned = _said(warnings, "k.conf:2:", f"'{keyword}")
    assert changed or warned or line in {"lb_kind NAT", "protocol TCP", "ip_family inet"}


@pytest.mark.parametrize("line", SERVER_WORDS + [f"{c} {{\n}}" for c in CHECKERS])
def test_every_real_server_and_checker_keyword_is_imported_or_warned(line: str) -> None:
    bundles, warnings = _imported(server=line)
    keyword = line.split(maxsplit=1)[0]
    assert bundles != (BASE,) or _said(warnings, "k.conf:4:", f"'{keyword}'")


def test_format_is_told_by_content_first() -> None:
    keepalived = "virtual_server 192.0.2.1 80 {\n}\n"
    assert detect_format(keepalived, "/etc/sysconfig/ha/lvs.cf") == "keepalived"
    assert detect_format("network = direct\nvirtual web {\n}\n", "keepalived.conf") == "lvs.cf"
    assert detect_format("", "x/lvs.cf") == "lvs.cf"


def test_warnings_before_a_failure_are_printed(tmp_path: Path) -> None:
    source = tmp_path / "k.conf"
    source.write_text("virtual_server 192.0.2.1 80 {\n real_server 10.0.0.1 8080 {\n }\n}\n")
    with pytest.raises(ImportFailed) as caught:
        import_file(str(source))
    assert caught.value.warnings and "no virtual server found" in str(caught.value)
    result = invoke("import", str(source))
    lines = result.stderr.splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert lines[0].startswith("lvsfw: warning: ") and "port 8080" in lines[0]
    assert lines[-1].startswith("lvsfw: ") and "no virtual server found" in lines[-1]


@pytest.mark.parametrize(
    "sample", ["keepalived-ipport.conf", "keepalived-group.conf", "include/keepalived.conf",
               "lvs-ports.cf", "keepalived.conf --rules nft-ruleset.txt",
               "lvs.cf --rules iptables-save.txt"],
)  # fmt: skip
def test_imported_configs_pass_check_and_render_as_fresh_processes(
    sample: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.toml"
    name, *rules = sample.split()
    rules = [str(DATA / r) if r.endswith(".txt") else r for r in rules]
    run = [str(LVSFW), "import", str(DATA / name), *rules, "-o", str(out)]
    imported = subprocess.run(run, capture_output=True, text=True, check=False)
    assert imported.returncode in (0, 1) and "Traceback" not in imported.stderr
    assert config.load(str(out)).bundles
    for command in ("check", "render"):
        done = subprocess.run([str(LVSFW), command, str(out)], capture_output=True, text=True,
                              check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr


def _ip_port_render(bundles: list[Bundle]) -> str:
    """Each bundle's IPVS half as keepalived IP:port services, one per VIP and port."""
    out = []
    for bundle in bundles:
        for vip in bundle.vips:
            servers = [s for s in bundle.real_servers if s.family == Family.of(vip)]
            service = attrs.evolve(bundle.service, real_servers=servers)
            single = Bundle(bundle.name, [vip], bundle.ports, bundle.mark, service=service)
            block = registry.get("keepalived")().render([single]).split("{", 1)[1]
            for r in bundle.ports.ranges:
                for port in range(r.first_port, r.last_port + 1):
                    head = f"virtual_server {vip} {port} {{\n    protocol {r.protocol.value}"
                    out.append(head + block.replace(" 0 {", f" {port} {{"))
    return "\n".join(out)


@given(bundles=strategies.bundles(max_size=3))
def test_round_trip_of_ip_port_services(bundles: list[Bundle]) -> None:
    """bundles -> one keepalived IP:port service per VIP and port -> import --merge-ports:
    every (VIP, protocol, port) reaches the same service (marks renumbered)."""
    bundles = [  # a few single ports each: one service per VIP and port stays small
        Bundle(b.name, b.vips, " ".join(f"{r.protocol.value}:{r.first_port}"
               for r in b.ports.ranges[:3]), b.mark, service=b.service)
        for b in bundles
    ]  # fmt: skip
    result = import_text(_ip_port_render(bundles), "k.conf", "keepalived", merge_ports=True)

    def table(found: tuple[Bundle, ...] | list[Bundle]) -> dict[tuple[str, str, int], object]:
        return {
            (str(vip), r.protocol.value, port): (
                b.service.scheduler, b.service.persistence,
                sorted((str(s.address), s.weight, s.forwarding.value) for s in b.real_servers
                       if s.family.value == ("ipv6" if vip.version == 6 else "ipv4")),
            )
            for b in found for vip in b.vips for r in b.ports.ranges
            for port in range(r.first_port, r.last_port + 1)
        }  # fmt: skip

    assert table(result.bundles) == table(bundles)
    specify(result.bundles)


def test_marks_outside_mangle_prerouting_are_refused_never_widened() -> None:
    """A mark rule in another chain marks only what reaches that chain (a conditional jump,
    locally generated traffic): imported as a PREROUTING mark it would mark more."""
    from lvsfw.importers.iptables import scan_iptables

    dump = "\n".join([
        "*mangle",
        "-A PREROUTING -s 10.0.0.0/8 -j ONLYLAN",
        "-A ONLYLAN -d 192.0.2.10/32 -p tcp -m tcp --dport 443 -j MARK --set-mark 80",
        "-A OUTPUT -d 192.0.2.10/32 -p tcp -m tcp --dport 8080 -j MARK --set-mark 81",
        "-A PREROUTING -d 192.0.2.10/32 -p tcp -m tcp --dport 80 -m multiport --dports 443"
        " -j MARK --set-mark 82",
        "-A PREROUTING -d 192.0.2.10/32 -p tcp -m tcp --dport 22 -j MARK --set-mark 83",
        "COMMIT",
        "*filter",
        "-A FORWARD -d 192.0.2.10/32 -p tcp -m tcp --dport 25 -j MARK --set-mark 84",
        "COMMIT",
    ])  # fmt: skip
    found = scan_iptables(dump, "r")
    assert {r.mark for r in found.rules} == {83}
    w = tuple(found.warnings)
    assert _said(w, "r:3:", "in chain ONLYLAN") and _said(w, "r:4:", "in chain OUTPUT")
    assert _said(w, "r:5:", "both --dport and --dports") and _said(w, "r:9:", "in table filter")


def test_nft_marks_outside_a_prerouting_base_chain_are_refused() -> None:
    from lvsfw.importers.nft import scan_nft

    ruleset = """table ip t {
    chain pre {
        type filter hook prerouting priority -150; policy accept;
        ip daddr 192.0.2.10 tcp dport 80 meta mark set 0x50
        ip saddr 10.0.0.0/8 jump lan
    }
    chain lan {
        ip daddr 192.0.2.10 tcp dport 443 meta mark set 0x51
    }
    chain out {
        type route hook output priority -150; policy accept;
        ip daddr 192.0.2.10 tcp dport 8080 meta mark set 0x52
    }
}
"""
    found = scan_nft(ruleset, "n")
    assert {r.mark for r in found.rules} == {0x50}
    w = tuple(found.warnings)
    assert _said(w, "n:8:", "in chain lan, not a prerouting base chain")
    assert _said(w, "n:12:", "in chain out, not a prerouting base chain")
