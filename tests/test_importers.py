"""Importers (Piranha lvs.cf, keepalived.conf) and the mark-rule scanner that completes them."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import assume, given

from lvsfw import Bundle, Protocol, RealServer, config, registry, specify
from lvsfw.errors import LvsfwError, ParseError
from lvsfw.importers import import_text, parse_keepalived, parse_lvs_cf
from lvsfw.markscan import FULL, FoundRule, Scan, scan, scan_iptables, scan_nft
from tests import strategies

DATA = Path(__file__).resolve().parent / "data"
LVS_CF = (DATA / "lvs.cf").read_text()
KEEPALIVED = (DATA / "keepalived.conf").read_text()
IPTABLES = (DATA / "iptables-save.txt").read_text()
NFT = (DATA / "nft-ruleset.txt").read_text()


def _rules(found: Scan) -> set[tuple[int, int, str, str, int, int]]:
    return {
        (r.mark, r.mask, str(r.vip), str(r.protocol), r.first_port, r.last_port)
        for r in found.rules
    }


# -- the scanner -----------------------------------------------------------------------------


def test_scan_iptables_save_of_both_families() -> None:
    found = scan_iptables(IPTABLES, "ipt")
    assert _rules(found) == {
        (80, 0xFFFFFFFF, "192.0.2.10", "tcp", 80, 80),
        (80, 0xFFFFFFFF, "192.0.2.10", "tcp", 443, 443),
        (21, 0xFFFFFFFF, "192.0.2.21", "tcp", 21, 21),
        (21, 0xFFFFFFFF, "192.0.2.21", "tcp", 10000, 20000),
        (77, 0xFFFFFFFF, "192.0.2.77", "tcp", 7777, 7777),
        (443, 0xFFFFFFFF, "2001:db8::10", "tcp", 80, 80),
        (443, 0xFFFFFFFF, "2001:db8::10", "tcp", 443, 443),
    }
    assert [w.split(": ")[0] for w in found.warnings] == ["ipt:20"]
    assert "-s 203.0.113.0/24" in found.warnings[0]
    ftp = [r for r in found.rules if r.mark == 21]
    assert {r.comment for r in ftp} == {"ftp control + passive"}
    assert {r.where for r in ftp} == {"ipt:19"}


def test_scan_iptables_shell_lines_masks_and_unexpressible_rules() -> None:
    text = """
    iptables -t mangle -A PREROUTING -d 192.0.2.40 -p udp --dport 5000:5010 -j MARK --set-mark 0x28/0xff
    /sbin/ip6tables -t mangle -I PREROUTING 1 -d 2001:db8::40 -p udp --dport domain -j MARK --set-mark 40
    iptables -t mangle -A PREROUTING -d 192.0.2.41,192.0.2.42 -p tcp -m multiport --dports 1,2 -j MARK --or-mark 0x100
    iptables -t mangle -A PREROUTING -d 192.0.2.0/24 -p tcp --dport 80 -j MARK --set-mark 1
    iptables -t mangle -A PREROUTING ! -d 192.0.2.9 -p tcp --dport 80 -j MARK --set-mark 1
    iptables -t mangle -A PREROUTING -d 192.0.2.9 -p icmp -j MARK --set-mark 1
    iptables -t mangle -A PREROUTING -d 192.0.2.9 -p tcp -j MARK --set-mark 1
    iptables -t mangle -A PREROUTING -p tcp --dport 80 -j MARK --set-mark 1
    iptables -t mangle -A PREROUTING -d 192.0.2.9 -p tcp --dport 80 -j CONNMARK --set-mark 1
    """  # noqa: E501
    found = scan_iptables(text, "fw.sh")
    assert _rules(found) == {
        (0x28, 0xFF, "192.0.2.40", "udp", 5000, 5010),
        (40, 0xFFFFFFFF, "2001:db8::40", "udp", 53, 53),
        (0x100, 0x100, "192.0.2.41", "tcp", 1, 1),
        (0x100, 0x100, "192.0.2.41", "tcp", 2, 2),
        (0x100, 0x100, "192.0.2.42", "tcp", 1, 1),
        (0x100, 0x100, "192.0.2.42", "tcp", 2, 2),
    }
    reasons = [w.split(": mark rule not imported: ")[1].split(":")[0] for w in found.warnings]
    assert reasons == [
        "destination 192.0.2.0/24 is a network, not one VIP",
        "negated match '! -d 192.0.2.9'",
        "no destination port match",
        "no destination port match",
        "no destination (-d)",
    ]


def test_scan_nft_ruleset_sets_l4proto_masks_and_skips() -> None:
    found = scan_nft(NFT, "nft")
    assert _rules(found) == {
        (80, 0xFFFFFFFF, "192.0.2.10", "tcp", 80, 80),
        (80, 0xFFFFFFFF, "192.0.2.10", "tcp", 443, 443),
        (21, 0xFFFFFFFF, "192.0.2.21", "tcp", 21, 21),
        (21, 0xFFFFFFFF, "192.0.2.21", "tcp", 10000, 20000),
        (80, 0xFFFFFFFF, "2001:db8::10", "tcp", 80, 80),
        (80, 0xFFFFFFFF, "2001:db8::10", "tcp", 443, 443),
    }
    assert len(found.warnings) == 1 and found.warnings[0].startswith("nft:26: ")
    hand = """table ip lb { chain p { type filter hook prerouting priority -150;
        ip daddr { 192.0.2.53,
                   192.0.2.54 } meta l4proto { tcp, udp } th dport 53 meta mark set meta mark & 0xffff0035 | 0x00000035
        ip daddr 192.0.2.60 udp dport 60-61 meta mark set meta mark | 0x00000100
        ip daddr 192.0.2.61 tcp dport 80 ct mark set 0x5
        ip daddr 192.0.2.62 tcp dport 80 ip saddr 10.0.0.0/8 meta mark set 9
        ip daddr @nosuchset tcp dport 80 meta mark set 9 } }
    """  # noqa: E501
    found = scan_nft(hand, "hand.nft")
    assert _rules(found) == {
        (0x35, 0xFFFF, "192.0.2.53", "tcp", 53, 53),
        (0x35, 0xFFFF, "192.0.2.53", "udp", 53, 53),
        (0x35, 0xFFFF, "192.0.2.54", "tcp", 53, 53),
        (0x35, 0xFFFF, "192.0.2.54", "udp", 53, 53),
        (0x100, 0x100, "192.0.2.60", "udp", 60, 61),
    }
    assert len(found.warnings) == 2
    assert "source match 'ip saddr 10.0.0.0/8'" in found.warnings[0]
    assert "named set @nosuchset" in found.warnings[1]


@pytest.mark.parametrize("backend", ["iptables-legacy", "iptables-nft", "nftables"])
@given(bundles=strategies.bundles(max_size=3))
def test_scan_reads_what_lvsfw_renders(backend: str, bundles: list[Bundle]) -> None:
    text = registry.get(backend)().render(bundles)
    found = scan(text, backend)
    wanted = {
        (r.mark, r.mask, str(r.vip), str(r.protocol), r.first_port, r.last_port)
        for r in specify(bundles).rules
    }
    assert not found.warnings
    assert _normal(_rules(found)) == _normal(wanted)


def _normal(rules: set[tuple[int, int, str, str, int, int]]) -> set[tuple[object, ...]]:
    """Split into single ports is too big; merge touching ranges instead."""
    merged: list[list[object]] = []
    for rule in sorted(rules, key=lambda r: (r[:4], r[4])):
        last = merged[-1] if merged else None
        if last is not None and tuple(last[:4]) == rule[:4] and rule[4] <= int(str(last[5])) + 1:
            last[5] = max(int(str(last[5])), rule[5])
        else:
            merged.append(list(rule))
    return {tuple(m) for m in merged}


def test_a_rule_found_twice_counts_once() -> None:
    found = scan(IPTABLES + "\n" + IPTABLES, "twice")
    assert len(found.rules) == len(scan(IPTABLES, "once").rules)


# -- lvs.cf ----------------------------------------------------------------------------------


def test_lvs_cf_with_iptables_rules() -> None:
    result = import_text(LVS_CF, "lvs.cf", rules=scan(IPTABLES, "ipt"))
    assert result.bundles == (
        Bundle(
            "ftp",
            "192.0.2.21",
            "tcp:21,10000-20000",
            21,
            scheduler="rr",
            persistence=900,
            real_servers=[RealServer("10.0.0.21"), RealServer("10.0.0.22")],
        ),
        Bundle(
            "web-http",
            "192.0.2.10",
            "tcp:80,443",
            80,
            scheduler="wlc",
            persistence=300,
            persistence_netmask=24,
            real_servers=[RealServer("10.0.0.11"), RealServer("10.0.0.12", weight=2)],
        ),
        Bundle(
            "web6",
            "2001:db8::10",
            "tcp:80,443",
            443,
            scheduler="sh",
            persistence=600,
            persistence_prefix=64,
            real_servers=[RealServer("2001:db8:1::11", weight=3)],
        ),
    )
    assert result.unmatched == () and result.stubs == ()
    text = "\n".join(result.warnings)
    for expected in (
        "ipt:20: mark rule not imported",
        "lvs.cf:48: server 'web3' of 'web-http' is inactive",
        "lvs.cf:129: virtual server 'smtp' not imported: server 'mx1' of 'smtp' listens on port",
        "lvs.cf:143: virtual server 'old-dns' is inactive",
        "ipt:21: sets mark 77, which no virtual server uses",
    ):
        assert expected in text


def test_lvs_cf_without_rules_falls_back_to_its_address_and_port_and_names_each_mark() -> None:
    result = import_text(LVS_CF, "lvs.cf")
    assert [str(b.ports) for b in result.bundles] == ["tcp:21", "tcp:80,443", "tcp:443"]
    assert [u.split(": ")[0] for u in result.unmatched] == ["lvs.cf:90", "lvs.cf:21", "lvs.cf:112"]
    assert all("no packet-filter rule sets mark" in u for u in result.unmatched)
    assert result.stubs == ()


def test_lvs_cf_forwarding_defaults_and_errors() -> None:
    sources, warnings = parse_lvs_cf(
        "virtual v {\n fwmark = 5\n server s {\n address = 10.0.0.1\n }\n}\n", "x.cf"
    )
    assert sources[0].service.real_servers[0].forwarding.value == "masq"
    assert "assuming nat" in warnings[0]
    tunnel, _ = parse_lvs_cf("network = tunnel\n" + "virtual v {\n fwmark = 5\n}\n", "x.cf")
    assert tunnel[0].service == tunnel[0].service  # parses
    for text, message in [
        ("network = bridge\n", "x.cf:1"),
        ("virtual v {\n fwmark = 5\n", "x.cf:1"),
        ("}\n", "x.cf:1"),
        ("virtual v {\n fwmark = five\n}\n", "x.cf:2"),
        ("virtual v {\n fwmark = 5\n scheduler = fast\n}\n", "x.cf:1"),
        ("virtual v {\n fwmark = 5\n server s {\n weight = 1\n }\n}\n", "x.cf:3"),
    ]:
        with pytest.raises(ParseError, match=message):
            parse_lvs_cf(text, "x.cf")


def test_lvs_cf_virtuals_sharing_a_mark_must_agree() -> None:
    wlc = "scheduler = wlc\n     protocol = tcp\n     timeout = 6"
    text = LVS_CF.replace(wlc, wlc.replace("wlc", "rr"), 1)
    with pytest.raises(LvsfwError, match=r"lvs\.cf:21 and lvs\.cf:55: both define fwmark 80"):
        import_text(text, "lvs.cf")


# -- keepalived.conf -------------------------------------------------------------------------


def test_keepalived_with_nft_rules() -> None:
    result = import_text(KEEPALIVED, "keepalived.conf", rules=scan(NFT, "nft"))
    assert result.bundles == (
        Bundle(
            "mark21",
            "192.0.2.21",
            "tcp:21,10000-20000",
            21,
            scheduler="rr",
            persistence=900,
            real_servers=[RealServer("10.0.0.21", forwarding="masq"), RealServer("10.0.0.22")],
        ),
        Bundle(
            "mark80",
            ["192.0.2.10", "2001:db8::10"],
            "tcp:80,443",
            80,
            scheduler="wlc",
            persistence=300,
            persistence_netmask=24,
            persistence_prefix=64,
            real_servers=[
                RealServer("10.0.0.11"),
                RealServer("10.0.0.12", 2, upper_threshold=5000, lower_threshold=4000),
                RealServer("2001:db8:1::11"),
            ],
        ),
    )
    assert result.unmatched == (
        "keepalived.conf:104: no packet-filter rule sets mark 53; bundle left out",
    )
    ((_, stub),) = result.stubs
    assert stub["mark"] == 53 and stub["vips"] == [] and stub["scheduler"] == "sh"
    text = result.config_text(["header"])
    assert '# [[bundle]]\n# name = "mark53"' in text
    assert config.loads(text).bundles == result.bundles  # the stub stays a comment
    warnings = "\n".join(result.warnings)
    assert "keepalived.conf:54: real server port 80 dropped" in warnings
    assert "HTTP_GET" not in warnings  # carried over: the real server's health check
    web = next(b for b in result.bundles if b.mark.value == 80)
    web_server = web.service.real_servers[0]
    assert web_server.health is not None and web_server.health.path == "/healthz"
    assert "keepalived.conf:33: 'virtual_server 192.0.2.25 25' not imported" in warnings


def test_keepalived_text_warns_about_includes_and_reads_groups() -> None:
    text = "include /etc/keepalived/conf.d/*.conf\nvirtual_server_group G {\n fwmark 7\n}\n"
    text += "virtual_server group G {\n lb_algo rr\n lb_kind DR\n}\n"
    sources, warnings = parse_keepalived(text, "k.conf")
    assert [(s.mark, s.name) for s in sources] == [(7, "G")]
    assert warnings[0].startswith("k.conf:1: 'include /etc/keepalived/conf.d/*.conf'")
    assert len(warnings) == 1


def test_keepalived_without_fwmark_blocks_is_an_error() -> None:
    with pytest.raises(ParseError, match="no fwmark virtual server"):
        import_text("global_defs {\n router_id x\n}\n", "k.conf", kind="keepalived")
    with pytest.raises(ParseError):
        import_text("virtual_server fwmark 7 {\n lb_algo nope\n}\n", "k.conf")


def test_lvsfw_rule_comments_name_the_bundles() -> None:
    bundles = [Bundle("web", "192.0.2.10", "tcp:80,443", 80, real_servers=["10.0.0.1"])]
    rules = scan(registry.get("iptables-nft")().render(bundles), "ipt")
    keepalived = registry.get("keepalived")().render(bundles)
    assert import_text(keepalived, "k.conf", rules=rules).bundles == tuple(bundles)


SAVED = """\
*mangle
:PREROUTING ACCEPT [0:0]
:LVSFW-PREROUTING - [0:0]

-A PREROUTING -m comment --comment lvsfw -j LVSFW-PREROUTING
-A LVSFW-PREROUTING -m set --match-set lvsfw4-nft dst,dst -j SET --map-set lvsfw4-nft dst,dst --map-mark
-A LVSFW-PREROUTING -m set --match-set lvsfw4-nft dst,dst -j RETURN
-A LVSFW-PREROUTING -d 192.0.2.10/32 -p tcp -m tcp --dport 1000:2000 -m comment --comment "lvsfw:web" -j MARK --set-xmark 0x50/0xffffffff
-A PREROUTING -m set --match-set theirs dst,dst -m comment --comment x -j SET --map-set theirs dst,dst --map-mark
-A PREROUTING -m set --match-set gone dst,dst -j SET --map-set gone dst,dst --map-mark
-A PREROUTING -m set --match-set src src,dst -j SET --map-set src src,dst --map-mark
COMMIT
"""  # noqa: E501
IPSET_SAVE = """\
create lvsfw4-nft hash:ip,port family inet hashsize 1024 maxelem 65536 comment skbinfo bucketsize 12
add lvsfw4-nft 192.0.2.11,udp:53 comment "dns" skbmark 0x2100/0xff00
add lvsfw4-nft 192.0.2.10,tcp:80 comment "web" skbmark 0x50
create theirs hash:ip,port family inet hashsize 1024 maxelem 65536 counters skbinfo
add theirs 192.0.2.20,8080 packets 0 bytes 0 skbmark 0x7
add theirs 192.0.2.21,icmp:ping skbmark 0x7
create unused hash:ip,port family inet hashsize 1024 maxelem 65536 skbinfo
add unused 192.0.2.30,tcp:1 skbmark 0x9
"""


@pytest.mark.parametrize("ipset_first", [False, True])
def test_scan_reads_sets_a_set_rule_classifies_through(ipset_first: bool) -> None:
    """``iptables-save`` + ``ipset save`` in one file, either order: the members of the sets
    a ``-j SET --map-mark`` rule names are rules; lvsfw's members carry their bundle."""
    text = IPSET_SAVE + SAVED if ipset_first else SAVED + IPSET_SAVE
    found = scan(text, "dump")
    assert _rules(found) == {
        (0x50, FULL, "192.0.2.10", "tcp", 1000, 2000),
        (0x2100, 0xFF00, "192.0.2.11", "udp", 53, 53),
        (0x50, FULL, "192.0.2.10", "tcp", 80, 80),
        (0x7, FULL, "192.0.2.20", "tcp", 8080, 8080),
    }
    assert {r.comment for r in found.rules if r.protocol == Protocol.UDP} == {"lvsfw:dns"}
    assert {r.comment for r in found.rules if r.first_port == 8080} == {""}
    warnings = "\n".join(found.warnings)
    assert len(found.warnings) == 3, warnings
    assert "set gone is not in the dump" in warnings and "icmp" in warnings
    assert "only -m set --match-set SET dst,dst" in warnings and "unused" not in warnings


def test_scan_takes_ipset_save_from_a_second_source() -> None:
    found = scan_iptables(SAVED, "save", ipsets=(IPSET_SAVE, "ipset"))
    where = {r.where for r in found.rules if r.first_port == 80}
    assert where == {"ipset:3"} and len(found.rules) == 4


def test_one_mark_on_vips_with_different_ports_becomes_several_bundles() -> None:
    rules = scan_iptables(
        "-A PREROUTING -d 192.0.2.1/32 -p tcp -m multiport --dports 80,443 -j MARK --set-mark 5\n"
        "-A PREROUTING -d 192.0.2.2/32 -p tcp -m tcp --dport 80 -j MARK --set-mark 5\n",
        "ipt",
    )
    keepalived = "virtual_server fwmark 5 {\n lb_algo rr\n real_server 10.0.0.1 {\n }\n}\n"
    result = import_text(keepalived, "k", rules=rules)
    assert [(b.name, [str(v) for v in b.vips], str(b.ports)) for b in result.bundles] == [
        ("mark5", ["192.0.2.1"], "tcp:80,443"),
        ("mark5-2", ["192.0.2.2"], "tcp:80"),
    ]


# -- the round trip --------------------------------------------------------------------------


@pytest.mark.parametrize("firewall", ["iptables-nft", "nftables"])
@given(bundles=strategies.bundles(max_size=4))
def test_round_trip_keepalived_render_then_import(firewall: str, bundles: list[Bundle]) -> None:
    """bundles -> keepalived.conf (+ the marks' rules) -> import -> the same bundles."""
    assume(len({b.mark.value for b in bundles}) == len(bundles))
    keepalived = registry.get("keepalived")().render(bundles)
    rules = scan(registry.get(firewall)().render(bundles), firewall)
    result = import_text(keepalived, "keepalived.conf", rules=rules)
    assert result.unmatched == ()
    assert specify(result.bundles) == specify(bundles)
    if firewall.startswith("iptables"):  # its rule comments carry the bundle names
        assert sorted(b.name for b in result.bundles) == sorted(b.name for b in bundles)


def test_found_rule_family() -> None:
    rule = FoundRule(1, 1, ipaddress.ip_address("2001:db8::1"), Protocol.TCP, 1, 1, "x")
    assert str(rule.family) == "ipv6"


@pytest.mark.parametrize(
    "text",
    [
        'virtual web {\n address = ""\n fwmark = 80\n server a {\n address = ""\n }\n}\n',
        'virtual web {\n address = "192.0.2.10"\n port = " "\n fwmark = 80\n}\n',
        'virtual web {\n address = "192.0.2.10 eth0:1"\n fwmark = ²\n}\n',
        "virtual_server fwmark ² {\n lb_algo rr\n}\n",
        "virtual_server fwmark 80 {\n real_server 10.0.0.1 ² {\n weight 1\n }\n}\n",
    ],
)
def test_odd_values_in_imported_files_raise_only_lvsfw_errors(text: str) -> None:
    """Empty quoted values, non-ASCII digits: a clear error (or a warning), never a crash."""
    try:
        import_text(text, "odd.conf")
    except LvsfwError as exc:
        assert str(exc)


@pytest.mark.parametrize("port", ["\x00", "²", "ünïcode", "http\x00"])
def test_odd_ports_in_rules_are_skipped_with_a_warning(port: str) -> None:
    found = scan(f"-A PREROUTING -d 192.0.2.10/32 -p tcp --dport {port} -j MARK --set-mark 80\n",
                 "rules")  # fmt: skip
    assert not found.rules
    assert found.warnings
