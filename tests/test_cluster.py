"""An HA pair by VRRP (issue 11, the model and the render): ``[cluster]`` validated, the whole
keepalived.conf of each node rendered, and every one accepted by the real ``keepalived
--config-test`` with no warning line, inside a throwaway namespace that has the interface."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvsfw import Bundle, Cluster, ValidationError, config, specify
from lvsfw.backends.kaconf import ADVERTISED, HEADER
from lvsfw.backends.keepalived import Keepalived
from tests.netlab import require_kernel
from tests.test_director import Netns, kernel_ready

LVSFW = Path(sys.executable).parent / "lvsfw"
NODES = [
    {"name": "lb1", "address": ["192.168.50.1", "fd00::1"], "priority": 150},
    {"name": "lb2", "address": ["192.168.50.2", "fd00::2"], "priority": 100},
]
PAIR = {"interface": "eth0", "virtual_router_id": 51, "node": NODES}
WEB = Bundle("web", ["192.0.2.10", "2001:db8::10"], "tcp:80,443", 80, health={"check": "tcp"},
             real_servers=["10.0.0.11", "10.0.0.12", "2001:db8:1::11"])  # fmt: skip


def cluster(**fields: Any) -> Cluster:
    return Cluster.parse({**PAIR, **fields})


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"virtual_router_id": 0}, "cluster.virtual_router_id"),
        ({"virtual_router_id": 256}, "cluster.virtual_router_id"),
        ({"interface": "eth 0"}, "cluster.interface"),
        ({"auth_pass": "much-too-long"}, "cluster.auth_pass"),
        ({"auth_pass": "se}cret"}, "cluster.auth_pass"),  # would end authentication { }
        ({"auth_pass": "pa#ss"}, "cluster.auth_pass"),
        ({"auth_pass": 'a"b'}, "cluster.auth_pass"),
        ({"advert_int": 0}, "cluster.advert_int"),
        ({"node": [NODES[0], {**NODES[1], "name": "lb1"}]}, "node.name"),
        ({"node": [NODES[0], {**NODES[1], "priority": 150}]}, "node.priority"),
        ({"node": [NODES[0]]}, "cluster.node"),
        ({"node": [NODES[0], {**NODES[1], "priority": 255}]}, "node.priority"),
        ({"node": [NODES[0], {**NODES[1], "address": ["192.168.50.2", "192.168.50.3"]}]},
         "node.address"),
        ({"gateway": "2001:db8::1", "node": [NODES[0], {**NODES[1], "address": "10.1.1.2"}]},
         "cluster.gateway"),
        ({"colour": "red"}, "cluster"),
    ],
)  # fmt: skip
def test_bad_clusters_name_their_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        cluster(**fields)
    assert raised.value.field == field


def test_a_vip_needs_an_instance_of_its_family() -> None:
    v4_only = cluster(node=[{**n, "address": n["address"][0]} for n in NODES])
    with pytest.raises(ValidationError, match="2001:db8::10"):
        v4_only.check([WEB])
    with pytest.raises(ValidationError, match="one of lb1, lb2"):
        Keepalived(cluster=v4_only, node="lb9")


def test_each_node_gets_its_own_config() -> None:
    pair = cluster(auth_pass="s3cret", preempt=False, sync_interface="eth1")  # noqa: S106
    lb1, lb2 = (Keepalived(cluster=pair, node=n).render([WEB]) for n in ("lb1", "lb2"))
    assert lb1.startswith(HEADER) and "router_id lb1" in lb1 and "router_id lb2" in lb2
    assert "priority 150" in lb1 and "priority 100" in lb2
    assert "unicast_src_ip 192.168.50.1\n    unicast_peer {\n        192.168.50.2\n" in lb1
    assert "unicast_src_ip fd00::2\n    unicast_peer {\n        fd00::1\n" in lb2
    assert lb1.count("nopreempt") == 2 and lb1.count("auth_pass s3cret") == 1  # VRRPv2 only
    assert "vrrp_sync_group lvsfw" in lb1 and "lvs_sync_daemon eth1 lvsfw_4" in lb1
    assert "192.0.2.10/32 dev eth0" in lb1 and "2001:db8::10/128 dev eth0" in lb1
    assert lb1.split("virtual_server", 1)[1] == lb2.split("virtual_server", 1)[1]
    assert Keepalived().render([WEB]) in lb1  # the blocks, as without a cluster


def test_more_vips_than_an_advert_carries_are_excluded_ones() -> None:
    vips = [f"192.0.2.{i}" for i in range(1, ADVERTISED + 6)]
    many = Bundle("many", vips, "tcp:80", 80, real_servers=["10.0.0.1"])
    pair = cluster(node=[{**n, "address": n["address"][0]} for n in NODES])
    text = Keepalived(cluster=pair, node="lb1").render([many])
    excluded = text.split("virtual_ipaddress_excluded {", 1)[1].split("}", 1)[0]
    assert excluded.count("dev eth0") == 5


TOML = """\
[cluster]
interface = "eth0"
virtual_router_id = 51

[[cluster.node]]
name = "lb1"
address = "192.168.50.1"
priority = 150

[[cluster.node]]
name = "lb2"
address = "192.168.50.2"

[[bundle]]
name = "web"
vips = ["192.0.2.10"]
ports = "tcp:80,443"
mark = 80
real_servers = ["10.0.0.11"]
"""


def test_toml_cluster_and_render_node(tmp_path: Path) -> None:
    cfg = config.loads(TOML)
    assert cfg.cluster is not None and [n.name for n in cfg.cluster.nodes] == ["lb1", "lb2"]
    path = tmp_path / "pair.toml"
    path.write_text(TOML, encoding="utf-8")
    run = [str(LVSFW), "render", str(path), "--backend", "keepalived", "--node"]
    done = subprocess.run([*run, "lb2"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "router_id lb2" in done.stdout, done.stderr
    bad = subprocess.run([*run, "lb3"], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("lvsfw: node: 'lb3'"), bad.stderr
    path.write_text(TOML.replace('"192.0.2.10"', '"192.0.2.10", "2001:db8::10"'), "utf-8")
    with pytest.raises(config.ConfigError, match=r"pair.toml:1: cluster: .*2001:db8::10"):
        config.load(str(path))


# -- the real keepalived -------------------------------------------------------------------


def need_keepalived() -> None:
    """Fail (under LVSFW_REQUIRE_KERNEL) or skip when keepalived is not installed."""
    if shutil.which("keepalived", path="/usr/sbin:/sbin:/usr/bin") is None:
        require_kernel("keepalived is not installed (./scripts/bootstrap installs it)")
        pytest.skip("keepalived is not installed")


@contextlib.contextmanager
def vrrp_netns() -> Iterator[Netns]:
    """A throwaway namespace with the VRRP interface ``eth0`` (keepalived checks that it
    exists), removed on exit."""
    kernel_ready()
    need_keepalived()
    ns = Netns()
    try:
        ns.exec("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        ns.exec("ip", "link", "set", "eth0", "up")
        yield ns
    finally:
        ns.close()


@pytest.fixture(scope="module")
def vrrp_ns() -> Iterator[Netns]:
    """:func:`vrrp_netns`, one for the module."""
    with vrrp_netns() as ns:
        yield ns


def config_test(ns: Netns, path: Path, text: str) -> subprocess.CompletedProcess[str]:
    need_keepalived()
    path.write_text(text, encoding="utf-8")
    argv = ["ip", "netns", "exec", ns.name, "keepalived", "--config-test", "-f", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_the_interface_is_checked(vrrp_ns: Netns, tmp_path: Path) -> None:
    """Could fail: a config naming a missing interface is refused with a warning."""
    text = Keepalived(cluster=cluster(interface="eth7"), node="lb1").render([WEB])
    done = config_test(vrrp_ns, tmp_path / "k.conf", text)
    assert done.returncode != 0 and "eth7" in done.stdout + done.stderr


Pair = tuple[Cluster, list[Bundle], str]


@st.composite
def pairs(draw: st.DrawFn) -> Pair:
    dual = draw(st.booleans())
    nodes = []
    for i in range(draw(st.integers(2, 3))):
        address = [f"192.168.50.{i + 1}"] + ([f"fd00::{i + 1}"] if dual else [])
        nodes.append({"name": f"lb{i + 1}", "address": address, "priority": 200 - 10 * i})
    fields = {"interface": "eth0", "virtual_router_id": draw(st.integers(1, 254)), "node": nodes,
              "advert_int": draw(st.integers(1, 5)), "preempt": draw(st.booleans()),
              "auth_pass": draw(st.none() | st.just("pw1")),
              "sync_interface": draw(st.none() | st.just("eth0")),
              "gateway": draw(st.none() | st.just("10.0.0.254"))}  # fmt: skip
    bundles = []
    for i in range(draw(st.integers(1, 3))):
        vips = [f"192.0.2.{i + 1}"] + ([f"2001:db8::{i + 1}"] if dual and draw(st.booleans())
                                        else [])  # fmt: skip
        servers = [f"10.0.{i}.1", f"10.0.{i}.2"] + ([f"2001:db8:{i}::1"] if len(vips) > 1 else [])
        health = draw(st.sampled_from([None, {"check": "tcp"}, {"check": "http"},
                                       {"check": "misc", "script": "/bin/true"}]))  # fmt: skip
        bundles.append(Bundle(f"b{i}", vips, f"tcp:{80 + i}", 10 + i, real_servers=servers,
                              health=health))  # fmt: skip
    return Cluster.parse(fields), bundles, draw(st.sampled_from([n["name"] for n in nodes]))


@settings(max_examples=25, deadline=None)
@given(pairs())
def test_every_node_config_passes_keepalived_config_test_without_a_warning(
    vrrp_ns: Netns, tmp_path_factory: pytest.TempPathFactory, pair: Pair
) -> None:
    cluster_, bundles, node = pair
    text = Keepalived(cluster=cluster_, node=node).render_spec(specify(bundles))
    done = config_test(vrrp_ns, tmp_path_factory.mktemp("ka") / "keepalived.conf", text)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
        text + done.stdout + done.stderr
    )


README_PAIR = re.compile(r"## Health checks and an HA pair.*?```toml\n(.*?)```", re.S)


def test_the_readme_pair_renders_configs_keepalived_accepts(vrrp_ns: Netns, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    found = README_PAIR.search(readme)
    assert found is not None, "README lost its HA pair example"
    cfg = config.loads(found[1], "README.md")
    assert cfg.cluster is not None
    for node in ("lb1", "lb2"):
        text = Keepalived(cluster=cfg.cluster, node=node).render(cfg.bundles)
        done = config_test(vrrp_ns, tmp_path / f"{node}.conf", text)
        assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout
