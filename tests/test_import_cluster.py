"""The round trip of an HA pair (issue 11, "Round trip"): every node's rendered keepalived.conf
plus lvsfw's own nftables rule listing, imported together, give back the same bundles, health
checks and ``[cluster]``; one node's file alone, or VRRP lvsfw cannot hold, is a warning naming
keyword and line, and no cluster."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lvsfw import Bundle, Cluster, config, registry, specify
from lvsfw.backends.keepalived import Keepalived
from lvsfw.cluster import Node
from lvsfw.enums import Family
from lvsfw.errors import ParseError
from lvsfw.importers import Imported, import_files, import_text
from lvsfw.importers.kavrrp import NO_CLUSTER
from lvsfw.markscan import scan
from tests import strategies
from tests.test_health import checked_bundles

LVSFW = Path(sys.executable).parent / "lvsfw"
WEB = Bundle("web", ["192.0.2.10", "2001:db8::10"], "tcp:80,443", 80, health={"check": "tcp"},
             sorry_server="10.0.0.99", delay_loop=5,
             real_servers=["10.0.0.11", "10.0.0.12", "2001:db8:1::11"])  # fmt: skip
NODES = [
    {"name": "lb1", "address": ["192.168.50.1", "fd00::1"], "priority": 150},
    {"name": "lb2", "address": ["192.168.50.2", "fd00::2"], "priority": 100},
]
PAIR = Cluster.parse({"interface": "eth0", "virtual_router_id": 51, "node": NODES,
                      "auth_pass": "s3cret", "preempt": False, "sync_interface": "eth1",
                      "gateway": "10.0.0.254"})  # fmt: skip


def node_files(cluster: Cluster, bundles: list[Bundle], where: Path) -> list[Path]:
    """Every node's keepalived.conf (``node0.conf``... in the cluster's order) and the
    nftables rules (``rules.nft``)."""
    spec = specify(bundles)
    paths = []
    for index, node in enumerate(cluster.nodes):
        path = where / f"node{index}.conf"
        path.write_text(Keepalived(cluster=cluster, node=node.name).render_spec(spec), "utf-8")
        paths.append(path)
    (where / "rules.nft").write_text(registry.get("nftables")().render(bundles), "utf-8")
    return paths


def imported(paths: list[Path], where: Path) -> Imported:
    rules = scan((where / "rules.nft").read_text("utf-8"), "rules.nft")
    return import_files([str(p) for p in paths], rules=rules)


def checks(bundle: Bundle) -> dict[Family, object]:
    """Per family: each real server's effective check and the service's failure settings."""
    vs = bundle.service
    settings_ = (vs.delay_loop, vs.sorry_server, vs.quorum, vs.hysteresis, vs.inhibit_on_failure)
    return {
        family: ([(s.address, s.health or vs.health) for s in vs.for_family(family).real_servers],
                 settings_)
        for family in bundle.families
    }  # fmt: skip


def assert_same_bundles(got: tuple[Bundle, ...], want: list[Bundle]) -> None:
    assert specify(got) == specify(want)
    assert sorted(b.name for b in got) == sorted(b.name for b in want)  # nft comments carry them
    by_mark = {b.mark.value: b for b in got}
    for bundle in want:
        assert checks(by_mark[bundle.mark.value]) == checks(bundle), bundle.name


def only_families(cluster: Cluster, families: set[Family]) -> Cluster:
    """``cluster`` as its render shows it: a node address of a family no instance carries (no
    VIP and no gateway of it) is in no keepalived.conf, nor is the auth_pass of a cluster
    without an IPv4 instance (VRRPv3 has none), so no import can give them back."""
    nodes = [Node(n.name, [a for a in n.address if Family.of(a) in families], n.priority)
             for n in cluster.nodes]  # fmt: skip
    secret = cluster.auth_pass if Family.IPV4 in families else None
    return Cluster(cluster.interface, cluster.virtual_router_id, nodes, cluster.advert_int,
                   secret, cluster.preempt, cluster.sync_interface, cluster.gateway)


# -- the property --------------------------------------------------------------------------------

PASSWORDS = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F) if chr(c) not in '{}"#!\\'],
                    min_size=1, max_size=8)  # fmt: skip


@st.composite
def clusters(draw: st.DrawFn, bundles: list[Bundle]) -> Cluster:
    """A cluster for ``bundles``: 2..4 nodes with every family of their VIPs (sometimes the
    other family too), random settings and a gateway now and then."""
    needed = {Family.of(v) for b in bundles for v in b.vips}
    families = set(Family) if draw(st.booleans()) else needed
    count = draw(st.integers(2, 4))
    names = draw(st.lists(strategies.names, min_size=count, max_size=count, unique=True))
    priorities = draw(st.lists(st.integers(1, 254), min_size=count, max_size=count, unique=True))
    v4 = draw(st.lists(strategies.ipv4, min_size=count, max_size=count, unique=True))
    v6 = draw(st.lists(strategies.ipv6, min_size=count, max_size=count, unique=True))
    nodes = [{"name": names[i], "priority": priorities[i],
              "address": [str(a) for f, a in ((Family.IPV4, v4[i]), (Family.IPV6, v6[i]))
                          if f in families]} for i in range(count)]  # fmt: skip
    gateway = draw(st.none() | st.sampled_from(
        [g for f, g in ((Family.IPV4, "10.0.0.254"), (Family.IPV6, "fd00:1::fe")) if f in families]
    ))  # fmt: skip
    return Cluster.parse({
        "interface": draw(st.sampled_from(["eth0", "bond0.100", "ens3"])),
        "virtual_router_id": draw(st.integers(1, 255 if gateway is None else 254)),
        "node": nodes, "advert_int": draw(st.integers(1, 255)), "preempt": draw(st.booleans()),
        "auth_pass": draw(st.none() | PASSWORDS), "gateway": gateway,
        "sync_interface": draw(st.none() | st.just("eth1")),
    })  # fmt: skip


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[Bundle], Cluster, list[int]]:
    bundles = draw(st.one_of(checked_bundles(), strategies.bundles(max_size=3)))
    assume(len({b.mark.value for b in bundles}) == len(bundles))
    cluster = draw(clusters(bundles))
    order = draw(st.permutations(range(len(cluster.nodes))))
    return bundles, cluster, list(order)


@settings(deadline=None)
@given(cases())
def test_every_nodes_file_and_the_rules_import_to_the_same_bundles_checks_and_cluster(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[list[Bundle], Cluster, list[int]]
) -> None:
    bundles, cluster, order = case
    where = tmp_path_factory.mktemp("pair")
    paths = node_files(cluster, bundles, where)
    result = imported([paths[i] for i in order], where)
    assert result.unmatched == () and result.stubs == ()
    assert not [w for w in result.warnings if NO_CLUSTER in w], result.warnings
    assert_same_bundles(result.bundles, bundles)
    carried = {Family.of(v) for b in bundles for v in b.vips}
    carried |= {Family.of(cluster.gateway)} if cluster.gateway is not None else set()
    want = only_families(cluster, carried)
    if len(order) == 2:  # two nodes' peer lists cannot tell their order: the files' order
        want = reordered(want, [want.nodes[i] for i in order])
    assert result.cluster == want
    again = config.loads(result.config_text(["round trip"]))  # and through the TOML
    assert again.cluster == want
    assert_same_bundles(again.bundles, bundles)
    spec = specify(again.bundles)
    for node, path in zip(cluster.nodes, paths):  # the same files again, byte for byte
        text = Keepalived(cluster=again.cluster, node=node.name).render_spec(spec)
        assert unscripted(text) == unscripted(path.read_text("utf-8"))


def unscripted(text: str) -> str:
    """``text`` without global_defs' script security lines: kaconf writes them for a service
    ``misc`` check even when every real server has a check of its own (the service's then
    checks nothing and is not in the file, so no import can give it back)."""
    return text.replace("    enable_script_security\n    script_user root\n", "")


def reordered(cluster: Cluster, nodes: list[Node]) -> Cluster:
    return Cluster.parse({**cluster.data(), "node": [n.data() for n in nodes]})


def test_cluster_data_is_the_exact_inverse_of_parse() -> None:
    assert Cluster.parse(PAIR.data()) == PAIR
    one = Cluster.parse({**PAIR.data(), "node": [{**n.data(), "address": str(n.address[0])}
                                                 for n in PAIR.nodes]})  # fmt: skip
    assert one.data()["node"] == [{"name": "lb1", "address": "192.168.50.1", "priority": 150},
                                  {"name": "lb2", "address": "192.168.50.2", "priority": 100}]
    plain = Cluster.parse({"interface": "eth0", "virtual_router_id": 7, "node": NODES})
    assert set(plain.data()) == {"interface", "virtual_router_id", "advert_int", "preempt", "node"}
    text = config.dumps([WEB], cluster=PAIR)
    assert text.index("[cluster]") < text.index("[[cluster.node]]") < text.index("[[bundle]]")
    assert config.loads(text).cluster == PAIR and config.loads(config.dumps([WEB])).cluster is None


def test_three_nodes_come_back_in_their_order_whatever_the_files_order(tmp_path: Path) -> None:
    three = Cluster.parse({**PAIR.data(), "node": [
        *NODES, {"name": "lb3", "address": ["192.168.50.3", "fd00::3"], "priority": 50}]})
    paths = node_files(three, [WEB], tmp_path)
    for order in ([2, 0, 1], [1, 2, 0], [0, 2, 1]):
        assert imported([paths[i] for i in order], tmp_path).cluster == three


# -- the command, as a fresh process ----------------------------------------------------------


def lvsfw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LVSFW), *args], capture_output=True, text=True, timeout=60,
                          check=False, cwd=cwd)  # fmt: skip


def test_lvsfw_import_of_both_nodes_files_and_the_rules(tmp_path: Path) -> None:
    node_files(PAIR, [WEB], tmp_path)
    done = lvsfw("import", "node0.conf", "node1.conf", "--rules", "rules.nft", "-o", "pair.toml",
                 cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and NO_CLUSTER not in done.stderr, done.stderr
    text = (tmp_path / "pair.toml").read_text("utf-8")
    assert text.startswith("# lvsfw config imported from node0.conf, node1.conf\n")
    cfg = config.loads(text)
    assert cfg.cluster == PAIR
    assert_same_bundles(cfg.bundles, [WEB])
    assert lvsfw("check", "pair.toml", cwd=tmp_path).returncode == 0
    for index, node in enumerate(("lb1", "lb2")):  # renders the very files it came from
        rendered = lvsfw("render", "pair.toml", "--backend", "keepalived", "--node", node,
                         cwd=tmp_path)  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr
        assert rendered.stdout.strip() == (tmp_path / f"node{index}.conf").read_text().strip()
    as_json = lvsfw("import", "node0.conf", "node1.conf", "--rules", "rules.nft", "--json",
                    cwd=tmp_path)  # fmt: skip
    assert '"cluster": [\n    "lb1",\n    "lb2"\n  ]' in as_json.stdout


def line_of(text: str, pattern: str) -> int:
    """The number of the first line of ``text`` matching ``pattern``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if re.search(pattern, line))


def test_lvsfw_import_of_one_nodes_file_warns_and_writes_no_cluster(tmp_path: Path) -> None:
    (lb1, _) = node_files(PAIR, [WEB], tmp_path)
    done = lvsfw("import", "node0.conf", "--rules", "rules.nft", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = line_of(lb1.read_text(), r"^\s*unicast_peer \{")
    warnings = [w for w in done.stderr.splitlines() if NO_CLUSTER in w]
    assert warnings == [f"lvsfw: warning: node0.conf:{line}: 'unicast_peer' not imported: the "
                        "peers' names and priorities are only in their own keepalived.conf: "
                        "import every node's file together (lvsfw import lb1.conf lb2.conf ...)"
                        f"; {NO_CLUSTER}"]  # fmt: skip
    assert "[cluster]" not in done.stdout
    assert_same_bundles(config.loads(done.stdout).bundles, [WEB])


# -- what lvsfw's [cluster] cannot hold: a warning naming keyword and line, no cluster ---------

#: (what the lvsfw_4 instance's "advert_int 1" line of node0.conf becomes, the keyword named)
EDITS = [
    ("    advert_int 1\n    track_script {\n        chk_haproxy\n    }", "track_script"),
    ("    advert_int 1\n    track_interface {\n        eth1\n    }", "track_interface"),
    ("    advert_int 1\n    virtual_routes {\n        0.0.0.0/0 via 10.0.0.1\n    }",
     "virtual_routes"),
    ("    advert_int 1\n    notify_master /bin/true", "notify_master"),
    ("    advert_int 1\n    mcast_src_ip 192.168.50.1", "mcast_src_ip"),
    ("    advert_int 1\n    preempt_delay 10", "preempt_delay"),
    ("    advert_int 1\n    garp_master_delay 5", "garp_master_delay"),
    ("    advert_int 2", "advert_int"),  # lvsfw_6 and lvsfw_gw still say 1
    ("    advert_int 0.5", "advert_int"),
]  # fmt: skip


def edited(tmp_path: Path, old: str, new: str, count: int = 1) -> tuple[list[Path], str]:
    paths = node_files(PAIR, [WEB], tmp_path)
    text = paths[0].read_text()
    assert old in text
    paths[0].write_text(text.replace(old, new, count))
    return paths, paths[0].read_text()


def refused(paths: list[Path], tmp_path: Path, keyword: str, line: int) -> list[str]:
    """The import of ``paths``: no cluster, a warning naming ``keyword`` and ``line`` (where it
    is, or, for an instance that differs from another, where the other says otherwise)."""
    result = imported(paths, tmp_path)
    assert result.cluster is None
    assert "[cluster]" not in result.config_text()
    named = [w for w in result.warnings if f"'{keyword}' not imported" in w
             and re.search(rf"{re.escape(str(paths[0]))}:{line}\b", w)]  # fmt: skip
    assert named and all(NO_CLUSTER in w for w in named), result.warnings
    assert_same_bundles(result.bundles, [WEB])  # the bundles are imported all the same
    return list(result.warnings)


@pytest.mark.parametrize(("new", "keyword"), EDITS)
def test_vrrp_instance_settings_lvsfw_cannot_hold(tmp_path: Path, new: str, keyword: str) -> None:
    paths, text = edited(tmp_path, "    advert_int 1", new)
    line = line_of(text, rf"^\s*{keyword}\b")
    refused(paths, tmp_path, keyword, line)


@pytest.mark.parametrize(
    ("old", "new", "keyword", "pattern"),
    [
        ("    state BACKUP", "    state MASTER", "state", "state MASTER"),
        ("    router_id lb1", "    router_id lb1\n    vrrp_strict", "vrrp_strict", "vrrp_strict"),
        ("    router_id lb1\n", "", "router_id", "vrrp_instance lvsfw_4"),
        ("192.0.2.10/32 dev eth0", "192.0.2.10/24 dev eth0", "192.0.2.10/24 dev eth0", "/24"),
        ("192.0.2.10/32 dev eth0", "192.0.2.10/32 dev eth0 label eth0:1",
         "192.0.2.10/32 dev eth0 label eth0:1", "label"),
        ("192.0.2.10/32 dev eth0", "192.0.2.10/32 dev eth0\n        192.0.2.99/32",
         "virtual_ipaddress", r"^\s*virtual_ipaddress \{"),
        ("        auth_type PASS", "        auth_type AH", "auth_type", "auth_type"),
        ("        lvsfw_gw\n", "", "group", "vrrp_sync_group"),
        ("    lvs_sync_daemon eth1 lvsfw_4", "    lvs_sync_daemon eth1 lvsfw_4 id 5",
         "lvs_sync_daemon", "lvs_sync_daemon"),
        ("vrrp_instance lvsfw_6 {", "vrrp_script chk {\n    script /bin/true\n}\n"
         "vrrp_instance lvsfw_6 {", "vrrp_script chk", "vrrp_script"),
        ("vrrp_instance lvsfw_6 {", "vrrp_instance lvsfw_6b {\n    interface eth0\n"
         "    virtual_router_id 51\n    unicast_src_ip fd00::1\n    unicast_peer {\n"
         "        fd00::2\n    }\n}\nvrrp_instance lvsfw_6 {", "vrrp_instance lvsfw_6",
         "vrrp_instance lvsfw_6 "),
        ("    unicast_src_ip 192.168.50.1\n    unicast_peer {\n        192.168.50.2\n    }\n",
         "", "vrrp_instance lvsfw_4", "vrrp_instance lvsfw_4"),  # multicast
        ("        192.168.50.2\n", "        192.168.50.9\n", "unicast_peer",
         r"^\s*unicast_peer \{"),  # lvsfw_4's peer, not lvsfw_gw's
    ],
)  # fmt: skip
def test_vrrp_lvsfw_cannot_hold_is_named_with_its_line(
    tmp_path: Path, old: str, new: str, keyword: str, pattern: str
) -> None:
    paths, text = edited(tmp_path, old, new)
    refused(paths, tmp_path, keyword, line_of(text, pattern))


def test_a_peer_whose_file_is_not_imported_is_named(tmp_path: Path) -> None:
    three = Cluster.parse({**PAIR.data(), "node": [
        *NODES, {"name": "lb3", "address": ["192.168.50.3", "fd00::3"], "priority": 50}]})
    paths = node_files(three, [WEB], tmp_path)
    result = imported(paths[:2], tmp_path)
    line = line_of(paths[0].read_text(), r"^\s*unicast_peer \{")
    assert result.cluster is None
    assert f"{paths[0]}:{line}: 'unicast_peer' not imported: peer 192.168.50.3 is no imported " \
        "file's unicast_src_ip" in "\n".join(result.warnings)  # fmt: skip


def test_files_that_disagree_name_the_setting(tmp_path: Path) -> None:
    paths = node_files(PAIR, [WEB], tmp_path)
    text = paths[1].read_text()
    paths[1].write_text(text.replace("virtual_router_id 51", "virtual_router_id 61")
                        .replace("virtual_router_id 52", "virtual_router_id 62"))  # fmt: skip
    result = imported(paths, tmp_path)
    assert result.cluster is None
    line = line_of(text, "virtual_router_id 51")
    assert any(w.startswith(f"{paths[1]}:{line}: 'virtual_router_id' not imported: 61 here")
               for w in result.warnings), result.warnings  # fmt: skip


def test_a_node_file_without_vrrp_or_with_other_bundles(tmp_path: Path) -> None:
    paths = node_files(PAIR, [WEB], tmp_path)
    plain = tmp_path / "plain.conf"
    plain.write_text(Keepalived().render([WEB]))
    result = imported([paths[0], plain], tmp_path)
    assert result.cluster is None
    assert any(w.startswith(f"{plain}: no vrrp_instance") for w in result.warnings)
    other = tmp_path / "other.conf"
    other.write_text(paths[1].read_text().replace("lb_algo wlc", "lb_algo rr"))
    result = imported([paths[0], other], tmp_path)
    assert any(w.startswith(f"{other}: its virtual servers give other bundles")
               and "bundle web" in w for w in result.warnings)  # fmt: skip
    assert result.cluster == PAIR  # the VRRP agrees; the bundles are node0's
    assert_same_bundles(result.bundles, [WEB])


def test_an_lvs_cf_is_imported_alone(tmp_path: Path) -> None:
    data = Path(__file__).resolve().parent / "data" / "lvs.cf"
    paths = node_files(PAIR, [WEB], tmp_path)
    with pytest.raises(ParseError, match=r"import an lvs\.cf alone"):
        import_files([str(data), str(paths[0])])


def test_import_text_of_one_node_keeps_its_old_answer_for_the_bundles() -> None:
    text = Keepalived(cluster=PAIR, node="lb2").render([WEB])
    rules = scan(registry.get("nftables")().render([WEB]), "rules")
    result = import_text(text, "lb2.conf", rules=rules)
    assert result.cluster is None and result.bundles == import_text(
        Keepalived().render([WEB]), "k.conf", rules=rules).bundles  # fmt: skip
    assert [w for w in result.warnings if "lb2.conf" in w] == [
        w for w in result.warnings if "'unicast_peer'" in w
    ]
