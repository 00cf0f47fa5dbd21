"""keepalived.conf VRRP as lvsfw's ``[cluster]``: the inverse of :mod:`lvsfw.backends.kaconf`.

One node's file (:func:`read_node`) holds that node's name (``global_defs router_id``), its
unicast VRRP address per family (``unicast_src_ip``), its ``priority`` and the settings every
node shares. The peers' names and priorities are only in their own files, so a cluster needs
every node's keepalived.conf: :func:`lvsfw.importers.kacluster.cluster_of` merges them.

Taken, as lvsfw renders it: one ``vrrp_instance`` per address family (``state BACKUP``,
``interface``, ``virtual_router_id``, ``priority``, ``advert_int``, ``nopreempt``,
``unicast_src_ip``, ``unicast_peer``, IPv4 ``authentication`` with ``auth_type PASS``,
``virtual_ipaddress`` / ``virtual_ipaddress_excluded`` of ``VIP[/32|/128] [dev IFACE]``), a
NAT gateway's ``lvsfw_gw`` instance (``virtual_router_id`` + 1), one ``vrrp_sync_group`` over
all instances when there are several, ``global_defs`` ``router_id`` and ``lvs_sync_daemon
IFACE INSTANCE``. Anything else VRRP (``track_script``, ``virtual_routes``, multicast, a
second instance of a family, ``vrrp_*`` globals, ``vrrp_script`` blocks...) is a warning
naming its keyword and line, and no cluster: never a cluster that fails over differently.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Optional

import attrs

from lvsfw.enums import Family, IPAddress
from lvsfw.importers import tree
from lvsfw.importers.source import not_imported
from lvsfw.model import NAME_PATTERN

#: The instance lvsfw floats a NAT cluster's real-server gateway in.
GATEWAY = "lvsfw_gw"
#: Top-level blocks :func:`read_node` takes (besides ``global_defs``).
BLOCKS = {"vrrp_instance", "vrrp_sync_group"}
NO_CLUSTER = "no [cluster] imported"
_VALUES = {"state", "interface", "virtual_router_id", "priority", "advert_int",
           "unicast_src_ip"}  # fmt: skip
_LISTS = {"unicast_peer", "authentication", "virtual_ipaddress", "virtual_ipaddress_excluded"}
_TRACKING = "lvsfw's [cluster] tracks nothing: it fails over on VRRP adverts alone"
REASONS = {
    **dict.fromkeys(
        ("track_script", "track_interface", "track_process", "track_file", "track_bfd",
         "dont_track_primary", "track_src_ip"),
        _TRACKING,
    ),
    **dict.fromkeys(("virtual_routes", "virtual_rules"), "lvsfw's [cluster] floats addresses only"),
    **dict.fromkeys(("notify", "notify_master", "notify_backup", "notify_fault", "notify_stop",
                     "notify_master_rx_lower_pri", "smtp_alert"), "lvsfw runs no notify scripts"),
    **dict.fromkeys(("mcast_src_ip",), "multicast VRRP: lvsfw's [cluster] is unicast"),
    **dict.fromkeys(("use_vmac", "vmac_xmit_base"), "lvsfw's [cluster] uses no VMAC"),
    "preempt_delay": "lvsfw's [cluster] has no preempt delay",
    "native_ipv6": "lvsfw's [cluster] takes the family from the addresses",
    "version": "lvsfw's [cluster] speaks keepalived's default VRRP version",
}  # fmt: skip
_OTHER = "not in lvsfw's [cluster] (it writes only what lvsfw renders)"


def refusal(where: str, keyword: str, reason: str) -> str:
    """The warning for one VRRP keyword that keeps the cluster out."""
    return not_imported(where, keyword, f"{reason}; {NO_CLUSTER}")


@attrs.frozen
class Instance:
    """One ``vrrp_instance`` of lvsfw's shape; ``lines`` keyword -> ``FILE:LINE``."""

    name: str
    where: str
    family: Family
    interface: str
    router: int
    priority: int
    advert_int: int
    preempt: bool
    source: IPAddress
    peers: tuple[IPAddress, ...]
    auth_pass: Optional[str]
    addresses: tuple[IPAddress, ...]
    lines: dict[str, str] = attrs.field(factory=dict, eq=False)

    def at(self, keyword: str) -> str:
        """Where ``keyword`` is (the instance's head when it is left to its default)."""
        return self.lines.get(keyword, self.where)


@attrs.frozen
class NodeFile:
    """What one node's keepalived.conf says of the cluster: its ``name`` (``router_id``,
    at ``name_where``), its ``vips`` instances (lvsfw's order: IPv4, IPv6), its ``gateway``
    instance, ``sync`` (``lvs_sync_daemon``'s interface and where it is)."""

    source: str
    name: str
    name_where: str
    vips: tuple[Instance, ...]
    gateway: Optional[Instance] = None
    sync: Optional[tuple[str, str]] = None

    @property
    def instances(self) -> tuple[Instance, ...]:
        """Every instance, the gateway's last (as lvsfw renders them)."""
        return self.vips + ((self.gateway,) if self.gateway is not None else ())

    def address(self, family: Family) -> Optional[IPAddress]:
        """This node's unicast address of ``family``."""
        return next((i.source for i in self.instances if i.family == family), None)

    @property
    def base(self) -> int:
        """The cluster's ``virtual_router_id`` (the gateway instance's is one more)."""
        return self.vips[0].router if self.vips else self.instances[0].router - 1

    @property
    def auth_pass(self) -> Optional[str]:
        """The IPv4 instances' ``auth_pass`` (None: none)."""
        return next((i.auth_pass for i in self.instances if i.family == Family.IPV4), None)

    def shared(self) -> list[tuple[str, object, str]]:
        """(keyword, value, where) of every setting the nodes of one cluster share."""
        first = self.instances[0]
        four = next((i for i in self.instances if i.family == Family.IPV4), first)
        gateway = self.gateway
        return [
            ("interface", first.interface, first.at("interface")),
            ("virtual_router_id", self.base, first.at("virtual_router_id")),
            ("advert_int", first.advert_int, first.at("advert_int")),
            ("nopreempt", not first.preempt, first.at("nopreempt")),
            ("auth_pass", self.auth_pass, four.at("authentication")),
            ("lvs_sync_daemon", self.sync[0] if self.sync else None,
             self.sync[1] if self.sync else self.name_where),
            ("vrrp_instance", tuple(str(i.family) for i in self.vips), first.where),
            (GATEWAY, gateway.addresses[0] if gateway else None,
             gateway.at("virtual_ipaddress") if gateway else first.where),
        ]  # fmt: skip


@attrs.frozen
class NodeRead:
    """One file's VRRP: ``present`` (it has some), ``node`` (None: not lvsfw's shape, and
    the warnings say why)."""

    source: str
    present: bool
    node: Optional[NodeFile] = None


class _Reader:
    """Reads one file's VRRP statements; every refusal is a warning and spoils the node."""

    def __init__(self, warn: list[str]) -> None:
        self.warn = warn
        self.ok = True

    def refuse(self, where: str, keyword: str, reason: str) -> None:
        self.warn.append(refusal(where, keyword, reason))
        self.ok = False

    def value(self, node: tree.Node) -> Optional[str]:
        if len(node.words) != 2 or node.children is not None:
            self.refuse(node.where, node.keyword, "expected 'keyword value'")
            return None
        return node.words[1]

    def number(self, node: tree.Node, low: int, high: int) -> Optional[int]:
        text = self.value(node)
        if text is None:
            return None
        if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
            self.refuse(node.where, node.keyword, f"lvsfw's [cluster] takes an integer "
                        f"{low}..{high} here, not {text}")  # fmt: skip
            return None
        return int(text)

    def address(self, node: tree.Node, text: str) -> Optional[IPAddress]:
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            self.refuse(node.where, node.keyword, f"{text} is not one IPv4 or IPv6 address")
            return None

    def peers(self, node: tree.Node) -> list[IPAddress]:
        found = []
        for child in node.children or ():
            if len(child.words) != 1 or child.children is not None:
                self.refuse(child.where, " ".join(child.words) or "{",
                            "lvsfw's unicast_peer lists bare addresses")  # fmt: skip
                continue
            address = self.address(child, child.words[0])
            found += [address] if address is not None else []
        return found

    def floating(self, node: tree.Node, interface: Optional[str]) -> list[IPAddress]:
        """``VIP[/32|/128] [dev IFACE]`` lines (IFACE: the instance's interface)."""
        found = []
        for child in node.children or ():
            words = child.words
            if child.children is not None or not words:
                self.refuse(child.where, " ".join(words) or "{", "expected 'ADDRESS [dev IFACE]'")
                continue
            text, _, prefix = words[0].partition("/")
            address = self.address(child, text)
            if address is None:
                continue
            if prefix not in ("", str(address.max_prefixlen)) or words[1:] not in (
                (), ("dev", interface)
            ):
                self.refuse(child.where, " ".join(words), "lvsfw floats whole addresses "
                            "(/32, /128) on the instance's interface only")  # fmt: skip
                continue
            found.append(address)
        return found

    def authentication(self, node: tree.Node) -> Optional[str]:
        items = {c.keyword: c for c in node.children or ()}
        for child in node.children or ():
            if child.keyword not in ("auth_type", "auth_pass") or child.children is not None:
                self.refuse(child.where, child.keyword or "{", "lvsfw's authentication has "
                            "auth_type PASS and auth_pass only")  # fmt: skip
        kind = items.get("auth_type")
        if kind is None or kind.words[1:] != ("PASS",):
            self.refuse((kind or node).where, "auth_type", "lvsfw authenticates with "
                        "auth_type PASS only")  # fmt: skip
        secret = items.get("auth_pass")
        if secret is None:
            self.refuse(node.where, "authentication", "no auth_pass")
            return None
        return self.value(secret)

    def instance(self, node: tree.Node) -> Optional[Instance]:
        """One vrrp_instance block, or None (refused, with warnings)."""
        head = " ".join(node.words)
        if len(node.words) != 2:
            self.refuse(node.where, head, "expected 'vrrp_instance NAME {'")
            return None
        items: dict[str, tree.Node] = {}
        before = len(self.warn)
        for child in node.children or ():
            keyword = child.keyword
            block = child.children is not None
            if keyword in items:
                self.refuse(child.where, keyword, f"given twice (first at {items[keyword].where})")
            elif (keyword in _VALUES and not block) or (keyword in _LISTS and block) or (
                keyword == "nopreempt" and child.words == ("nopreempt",) and not block
            ):
                items[keyword] = child
            else:
                self.refuse(child.where, keyword or "{", REASONS.get(keyword, _OTHER))
        found = self._instance(node, head, items)
        return found if len(self.warn) == before else None

    def _instance(self, node: tree.Node, head: str, items: dict[str, tree.Node]) -> Optional[
        Instance
    ]:
        start = len(self.warn)
        for required in ("interface", "virtual_router_id"):
            if required not in items:
                self.refuse(node.where, head, f"no {required}: lvsfw's [cluster] states it")
        if "unicast_src_ip" not in items or "unicast_peer" not in items:
            self.refuse(node.where, head, "no unicast_src_ip and unicast_peer: multicast VRRP "
                        "(lvsfw's [cluster] is unicast, every node's address stated)")
        if "state" in items and items["state"].words[1:] != ("BACKUP",):
            self.refuse(items["state"].where, "state", "lvsfw starts every node as BACKUP "
                        "(the priority elects the master)")  # fmt: skip
        if len(self.warn) > start:
            return None
        interface = self.value(items["interface"])
        router = self.number(items["virtual_router_id"], 1, 255)
        priority = self.number(items["priority"], 1, 255) if "priority" in items else 100
        advert = self.number(items["advert_int"], 1, 255) if "advert_int" in items else 1
        src = self.value(items["unicast_src_ip"])
        source = self.address(items["unicast_src_ip"], src) if src is not None else None
        peers = self.peers(items["unicast_peer"])
        secret = self.authentication(items["authentication"]) if "authentication" in items \
            else None  # fmt: skip
        addresses = [a for k in ("virtual_ipaddress", "virtual_ipaddress_excluded") if k in items
                     for a in self.floating(items[k], interface)]  # fmt: skip
        if interface is None or router is None or priority is None or advert is None:
            return None
        if source is None or len(self.warn) > start:
            return None
        family = Family.of(source)
        for keyword, values in (("unicast_peer", peers), ("virtual_ipaddress", addresses)):
            other = next((a for a in values if Family.of(a) != family), None)
            if other is not None:
                self.refuse(items.get(keyword, node).where, keyword, f"{other} is not of the "
                            f"family of unicast_src_ip {source}")  # fmt: skip
        if family == Family.IPV6 and "authentication" in items:
            self.refuse(items["authentication"].where, "authentication", "IPv6 VRRP (v3) has "
                        "no authentication, and lvsfw writes none")  # fmt: skip
        if len(self.warn) > start:
            return None
        lines = {k: v.where for k, v in items.items()}
        return Instance(node.words[1], node.where, family, interface, router, priority, advert,
                        "nopreempt" not in items, source, tuple(peers), secret,
                        tuple(dict.fromkeys(addresses)), lines)  # fmt: skip


def _globals(reader: _Reader, nodes: Iterable[tree.Node]) -> tuple[Optional[tree.Node],
                                                                  Optional[tree.Node]]:
    """``global_defs``' router_id and lvs_sync_daemon lines; its vrrp_* settings refused."""
    router_id = sync = None
    for node in nodes:
        for child in node.children or ():
            if child.keyword == "router_id":
                router_id = child
            elif child.keyword == "lvs_sync_daemon":
                sync = child
            elif child.keyword.startswith("vrrp_"):
                reader.refuse(child.where, child.keyword, "a VRRP setting " + _OTHER)
    return router_id, sync


def _roles(reader: _Reader, instances: list[Instance]) -> tuple[list[Instance],
                                                                Optional[Instance]]:
    vips: dict[Family, Instance] = {}
    gateway = None
    for item in instances:
        if item.name == GATEWAY:
            if len(item.addresses) != 1:
                reader.refuse(item.at("virtual_ipaddress"), "virtual_ipaddress",
                              f"{GATEWAY} floats the one gateway address")  # fmt: skip
            gateway = item
        elif item.family in vips:
            reader.refuse(item.where, f"vrrp_instance {item.name}", f"a second instance of "
                          f"{item.family} ({vips[item.family].name} at {vips[item.family].where}"
                          "): lvsfw's [cluster] has one per address family, and "
                          f"{GATEWAY} for a NAT gateway")  # fmt: skip
        else:
            vips[item.family] = item
    return [vips[f] for f in Family if f in vips], gateway


def _consistent(reader: _Reader, vips: list[Instance], gateway: Optional[Instance]) -> None:
    """What lvsfw writes alike in every instance of one node."""
    every = [*vips, *([gateway] if gateway else [])]
    first = every[0]
    fields = (("interface", "interface"), ("priority", "priority"),
              ("advert_int", "advert_int"), ("nopreempt", "preempt"))  # fmt: skip
    for item in every[1:]:
        for keyword, field in fields:
            if getattr(item, field) != getattr(first, field):
                reader.refuse(item.at(keyword), keyword, f"differs from {first.name}'s "
                              f"({first.at(keyword)}): lvsfw writes one per node")  # fmt: skip
        same = next(i for i in every if i.family == item.family)
        for keyword, mine, theirs in (("unicast_src_ip", item.source, same.source),
                                      ("unicast_peer", set(item.peers), set(same.peers))):
            if mine != theirs:
                reader.refuse(item.at(keyword), keyword, f"differs from {same.name}'s "
                              f"({same.at(keyword)}): lvsfw's node has one address per family")
    base = vips[0].router if vips else first.router - 1
    for item in vips[1:]:
        if item.router != base:
            reader.refuse(item.at("virtual_router_id"), "virtual_router_id", f"differs from "
                          f"{first.name}'s {base}: lvsfw's instances share it")  # fmt: skip
    if gateway is not None and (gateway.router != base + 1 or base < 1):
        reader.refuse(gateway.at("virtual_router_id"), "virtual_router_id", f"{GATEWAY}'s is "
                      "the cluster's virtual_router_id + 1 in lvsfw")  # fmt: skip
    four = [i for i in every if i.family == Family.IPV4]
    if len({i.auth_pass for i in four}) > 1:
        reader.refuse(four[-1].at("authentication"), "authentication", "lvsfw's IPv4 "
                      "instances share one auth_pass")  # fmt: skip


def _group(reader: _Reader, groups: list[tree.Node], instances: list[Instance]) -> None:
    """One vrrp_sync_group over every instance when there are several, none otherwise."""
    names = [i.name for i in instances]
    if len(names) < 2:
        for node in groups:
            reader.refuse(node.where, " ".join(node.words), "lvsfw syncs several instances "
                          "only (this file has one)")  # fmt: skip
        return
    if len(groups) != 1:
        where = groups[1].where if groups else instances[1].where
        reader.refuse(where, "vrrp_sync_group", f"{len(groups)} here: lvsfw puts every "
                      f"instance ({', '.join(names)}) in one vrrp_sync_group")  # fmt: skip
        return
    members: list[str] = []
    for child in groups[0].children or ():
        if child.keyword == "group" and child.children is not None and len(child.words) == 1:
            members += [w for c in child.children for w in c.words]
        else:
            reader.refuse(child.where, child.keyword or "{", REASONS.get(child.keyword, _OTHER))
    if sorted(members) != sorted(names):
        reader.refuse(groups[0].where, "group", f"holds {', '.join(members) or 'nothing'}: "
                      f"lvsfw syncs every instance ({', '.join(names)})")  # fmt: skip


def read_node(nodes: Sequence[tree.Node], source: str, warn: list[str]) -> NodeRead:
    """The VRRP of one keepalived.conf: ``nodes`` its ``global_defs``, ``vrrp_*`` and other
    VRRP blocks (:func:`lvsfw.importers.keepalived.parse_keepalived` hands them over)."""
    reader = _Reader(warn)
    instances: list[Instance] = []
    groups = []
    for node in nodes:
        if node.keyword == "vrrp_instance" and node.children is not None:
            found = reader.instance(node)
            instances += [found] if found is not None else []
        elif node.keyword == "vrrp_sync_group" and node.children is not None:
            groups.append(node)
        elif node.keyword != "global_defs":
            reader.refuse(node.where, " ".join(node.words), _OTHER)
    router_id, sync = _globals(reader, [n for n in nodes if n.keyword == "global_defs"])
    if reader.ok and not instances and not groups and sync is None:
        return NodeRead(source, False)  # no VRRP here (global_defs alone)
    if not instances:
        if reader.ok:
            first = sync or groups[0]
            reader.refuse(first.where, first.keyword, "this file has no vrrp_instance")
        return NodeRead(source, True)
    vips, gateway = _roles(reader, instances)
    if reader.ok:
        _consistent(reader, vips, gateway)
        _group(reader, groups, instances)
    name = _name(reader, router_id, instances[0])
    synced = _sync(reader, sync, instances)
    if not reader.ok or name is None or router_id is None:
        return NodeRead(source, True)
    return NodeRead(source, True, NodeFile(source, name, router_id.where, tuple(vips), gateway,
                                           synced))  # fmt: skip


def _name(reader: _Reader, router_id: Optional[tree.Node], first: Instance) -> Optional[str]:
    """The node's name: global_defs' router_id."""
    if router_id is None:
        reader.refuse(first.where, "router_id", "global_defs names no router_id (the node's "
                      "name in [cluster])")  # fmt: skip
        return None
    name = reader.value(router_id)
    if name is not None and not NAME_PATTERN.fullmatch(name):
        reader.refuse(router_id.where, "router_id", f"{name} is no lvsfw node name "
                      "(1..28 of [A-Za-z0-9_.-])")  # fmt: skip
    return name


def _sync(
    reader: _Reader, sync: Optional[tree.Node], instances: list[Instance]
) -> Optional[tuple[str, str]]:
    """``lvs_sync_daemon IFACE INSTANCE``: (IFACE, where). Every instance is in the one sync
    group, so any of them is the one lvsfw names (its first)."""
    if sync is None:
        return None
    if len(sync.words) != 3 or sync.words[2] not in {i.name for i in instances}:
        reader.refuse(sync.where, "lvs_sync_daemon", "lvsfw's is 'lvs_sync_daemon IFACE "
                      "INSTANCE' of one of this file's instances")  # fmt: skip
        return None
    return sync.words[1], sync.where
