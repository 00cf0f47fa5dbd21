"""The whole keepalived.conf of one director of a :class:`lvsfw.cluster.Cluster`.

``global_defs`` (``router_id`` = the node's name; script security when a bundle has a
``misc`` check; ``lvs_sync_daemon`` for connection sync), one ``vrrp_instance`` per address
family carrying that family's VIPs (unicast: the node's own address as source, the other
nodes' as peers; all ``state BACKUP``, the priority decides), a gateway instance for a NAT
cluster, one ``vrrp_sync_group`` when there is more than one instance (they fail over
together), then every ``virtual_server fwmark`` block
(:func:`lvsfw.backends.keepalived.render_block`). The first line marks the file as lvsfw's.
"""

from __future__ import annotations

from collections.abc import Iterable

from lvsfw.cluster import Cluster, Node
from lvsfw.enums import Family, IPAddress, address_key
from lvsfw.rules import Specification

#: The first line of every keepalived.conf lvsfw writes: a file without it is not lvsfw's.
HEADER = "# keepalived.conf written by lvsfw"
#: keepalived carries at most this many addresses in a VRRP advert; more are excluded ones.
ADVERTISED = 20
_NAMES = {Family.IPV4: "lvsfw_4", Family.IPV6: "lvsfw_6"}


def runs_scripts(spec: Specification) -> bool:
    """Whether a real server of ``spec`` is checked by a ``misc`` script (its own check, else
    its service's): keepalived then needs script security in ``global_defs``."""
    checks = (s.health or fs.service.health for fs in spec.services
              for s in fs.service.real_servers)  # fmt: skip
    return any(check is not None and check.check == "misc" for check in checks)


def _global(cluster: Cluster, node: Node, scripts: bool, first: str) -> list[str]:
    lines = ["global_defs {", f"    router_id {node.name}"]
    if scripts:
        lines += ["    enable_script_security", "    script_user root"]
    if cluster.sync_interface is not None:
        lines.append(f"    lvs_sync_daemon {cluster.sync_interface} {first}")
    return [*lines, "}"]


def _addresses(title: str, addresses: list[str]) -> list[str]:
    return [f"    {title} {{", *(f"        {a}" for a in addresses), "    }"]


def _instance(
    cluster: Cluster, node: Node, name: str, family: Family, vips: list[IPAddress]
) -> list[str]:
    own = node.address_of(family)
    peers = [str(n.address_of(family)) for n in cluster.nodes if n is not node]
    router = cluster.virtual_router_id + (1 if name == "lvsfw_gw" else 0)
    lines = [
        f"vrrp_instance {name} {{",
        "    state BACKUP",
        f"    interface {cluster.interface}",
        f"    virtual_router_id {router}",
        f"    priority {node.priority}",
        f"    advert_int {cluster.advert_int}",
    ]
    lines += [] if cluster.preempt else ["    nopreempt"]
    lines += [f"    unicast_src_ip {own}", *_addresses("unicast_peer", peers)]
    if cluster.auth_pass is not None and family == Family.IPV4:
        lines += ["    authentication {", "        auth_type PASS",
                  f"        auth_pass {cluster.auth_pass}", "    }"]  # fmt: skip
    prefix = 32 if family == Family.IPV4 else 128
    texts = [f"{v}/{prefix} dev {cluster.interface}" for v in vips]
    lines += _addresses("virtual_ipaddress", texts[:ADVERTISED])
    if texts[ADVERTISED:]:
        lines += _addresses("virtual_ipaddress_excluded", texts[ADVERTISED:])
    return [*lines, "}"]


def render_cluster(
    cluster: Cluster, node_name: str, spec: Specification, blocks: Iterable[str]
) -> str:
    """The keepalived.conf of node ``node_name`` for ``spec`` (``blocks``: its rendered
    ``virtual_server`` blocks). A VIP of a family no VRRP instance can carry (some node has
    no address of it) is a :class:`ValidationError`."""
    node = cluster.node(node_name)
    vips: dict[Family, set[IPAddress]] = {f: set() for f in Family}
    for rule in spec.rules:
        vips[rule.family].add(rule.vip)
    for family, found in vips.items():
        if found:
            cluster.instance_family(family, f"vips ({min(found, key=address_key)})")
    instances = [
        (_NAMES[f], f, sorted(vips[f], key=address_key)) for f in cluster.families() if vips[f]
    ]
    if cluster.gateway is not None:
        instances.append(("lvsfw_gw", Family.of(cluster.gateway), [cluster.gateway]))
    scripts = runs_scripts(spec)
    first = instances[0][0] if instances else _NAMES[Family.IPV4]
    sections = [[f"{HEADER} for node {node.name}; lvsfw rewrites it"],
                _global(cluster, node, scripts, first)]  # fmt: skip
    if len(instances) > 1:
        group = _addresses("group", [name for name, _, _ in instances])
        sections.append(["vrrp_sync_group lvsfw {", *group, "}"])
    for name, family, addresses in instances:
        sections.append(_instance(cluster, node, name, family, addresses))
    text = "\n".join("".join(f"{line}\n" for line in section) for section in sections)
    rendered = [b for b in blocks if b]
    return text + ("\n" + "\n".join(rendered) if rendered else "")
