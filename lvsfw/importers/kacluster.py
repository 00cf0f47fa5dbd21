"""Every node's keepalived.conf of one VRRP cluster, merged into lvsfw's ``[cluster]``.

:func:`cluster_of` takes what :func:`lvsfw.importers.kavrrp.read_node` read from each file:
the cluster needs them all (one node's file names its peers' addresses, not their names or
priorities), their shared settings alike, each file's ``unicast_peer`` list exactly the other
files' addresses and every instance floating exactly the imported bundles' VIPs. The node
order is the one that gives each file its own peer list, as lvsfw renders it. Anything else
is a warning naming keyword and line, and no cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from lvsfw.cluster import Cluster, Node
from lvsfw.enums import Family, IPAddress, address_key
from lvsfw.errors import LvsfwError
from lvsfw.importers.kavrrp import NO_CLUSTER, NodeFile, NodeRead, refusal
from lvsfw.model import Bundle


def _agree(nodes: list[NodeFile], warn: list[str]) -> bool:
    ok = True
    first = nodes[0]
    names: dict[str, NodeFile] = {}
    for node in nodes:
        if node.name in names:
            warn.append(refusal(node.name_where, "router_id", f"{node.name} names "
                                 f"{names[node.name].source}'s node too"))  # fmt: skip
            ok = False
        names[node.name] = node
        for (keyword, mine, where), (_, theirs, there) in zip(node.shared(), first.shared()):
            if mine != theirs:
                shown = "another value" if keyword == "auth_pass" else repr(mine)
                warn.append(refusal(where, keyword, f"{shown} here, and {there} says otherwise:"
                                     " the nodes of one [cluster] share it"))  # fmt: skip
                ok = False
    return ok


def _peers(nodes: list[NodeFile], warn: list[str]) -> bool:
    ok = True
    for node in nodes:
        for item in node.instances:
            others = {n.address(item.family): n for n in nodes if n is not node}
            extra = [p for p in item.peers if p not in others]
            missing = [n for a, n in others.items() if a not in item.peers]
            if extra:
                warn.append(refusal(item.at("unicast_peer"), "unicast_peer", f"peer {extra[0]} "
                                     "is no imported file's unicast_src_ip: import every node's "
                                     "keepalived.conf together"))  # fmt: skip
            elif missing:
                warn.append(refusal(item.at("unicast_peer"), "unicast_peer", f"node "
                                     f"{missing[0].name} ({missing[0].source}) is not a peer"))
            ok = ok and not extra and not missing
    return ok


def _floating(nodes: list[NodeFile], bundles: Sequence[Bundle], warn: list[str]) -> bool:
    """Every VIP instance floats exactly the bundles' VIPs of its family."""
    wanted: dict[Family, dict[IPAddress, str]] = {f: {} for f in Family}
    for bundle in bundles:
        for vip in bundle.vips:
            wanted[Family.of(vip)].setdefault(vip, bundle.name)
    ok = True
    for node in nodes:
        have = {i.family: i for i in node.vips}
        for family, vips in wanted.items():
            item = have.get(family)
            if item is None and vips:
                vip, name = min(vips.items(), key=lambda kv: address_key(kv[0]))
                warn.append(refusal(node.instances[0].where, "vrrp_instance", f"none of "
                                     f"{family} floats bundle {name}'s VIP {vip}"))
                ok = False
            elif item is not None and set(item.addresses) != set(vips):
                extra = [a for a in item.addresses if a not in vips]
                missing = [v for v in vips if v not in item.addresses]
                reason = f"{extra[0]} is no imported bundle's VIP (lvsfw floats exactly the " \
                    "bundles' VIPs)" if extra else f"bundle {vips[missing[0]]}'s VIP " \
                    f"{missing[0]} is not in it (lvsfw would float it)"  # fmt: skip
                warn.append(refusal(item.at("virtual_ipaddress"), "virtual_ipaddress", reason))
                ok = False
    return ok


def _order(nodes: list[NodeFile]) -> list[NodeFile]:
    """The cluster's node order: lvsfw lists every node's peers in it, so it is the one order
    that gives each file its own unicast_peer list (two nodes: the files' order)."""

    def fits(order: list[NodeFile]) -> bool:
        return all(list(i.peers) == [n.address(i.family) for n in order if n is not node]
                   for node in order for i in node.instances)  # fmt: skip

    first = nodes[0]
    lead = first.instances[0]
    by_address = {n.address(lead.family): n for n in nodes[1:]}
    others = [by_address[p] for p in lead.peers]
    for index in range(len(others) + 1):
        order = [*others[:index], first, *others[index:]]
        if fits(order):
            return order
    return nodes  # peer order means nothing to keepalived: the files' order


def cluster_of(reads: Sequence[NodeRead], bundles: Sequence[Bundle], warn: list[str]) -> Optional[
    Cluster
]:
    """The cluster every node's keepalived.conf (``reads``, one per file) describes, or None
    with warnings naming keyword and line (one file only: the peers are not known)."""
    present = [r for r in reads if r.present]
    nodes = [r.node for r in present if r.node is not None]
    if not present or len(nodes) != len(present):
        return None  # no VRRP, or the warnings say why
    lead = nodes[0].instances[0]
    for read in reads:
        if not read.present:
            warn.append(f"{read.source}: no vrrp_instance, so it is no node of the cluster "
                        f"{lead.where} belongs to; {NO_CLUSTER}")  # fmt: skip
    if len(reads) == 1:
        warn.append(refusal(lead.at("unicast_peer"), "unicast_peer", "the peers' names and "
                            "priorities are only in their own keepalived.conf: import every "
                            "node's file together (lvsfw import lb1.conf lb2.conf ...)"))
        return None
    if len(present) != len(reads) or not (
        _agree(nodes, warn) and _peers(nodes, warn) and _floating(nodes, bundles, warn)
    ):
        return None
    first = nodes[0]
    gateway = first.gateway.addresses[0] if first.gateway is not None else None
    try:
        members = [Node(n.name, [a for f in Family if (a := n.address(f)) is not None],
                        n.instances[0].priority) for n in _order(nodes)]  # fmt: skip
        cluster = Cluster(lead.interface, first.base, members, lead.advert_int, first.auth_pass,
                          lead.preempt, first.sync[0] if first.sync else None, gateway)
        cluster.check(bundles)
    except LvsfwError as exc:
        warn.append(f"{first.name_where}: {NO_CLUSTER}: {exc}")
        return None
    return cluster
