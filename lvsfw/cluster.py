"""An HA pair (or more) of directors: which one holds the VIPs, decided by VRRP.

Plain data, like :mod:`lvsfw.model`. A :class:`Cluster` names the VRRP interface and router id
and its :class:`Node` rows (each director's name, unicast VRRP address per family and
priority). The bundles' VIPs become the ``virtual_ipaddress`` entries of one VRRP instance per
address family (:mod:`lvsfw.backends.kaconf` renders them); a NAT cluster may also float the
real servers' ``gateway``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import attrs

from lvsfw.enums import Family, IPAddress, address_key
from lvsfw.errors import ValidationError
from lvsfw.model import NAME_PATTERN, Bundle

_INTERFACE = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
#: keepalived.conf has no quoting for it: no blank, brace, quote, comment or escape character.
_PASS = re.compile(r"(?:(?![{}\"#!\\])[\x21-\x7e]){1,8}")


def _address(field: str, value: object) -> IPAddress:
    try:
        return ipaddress.ip_address(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValidationError(field, value, "an IPv4 or IPv6 address") from None


def _addresses(value: object) -> tuple[IPAddress, ...]:
    items = [value] if isinstance(value, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)) \
        else value  # fmt: skip
    if not isinstance(items, (list, tuple)) or not items:
        raise ValidationError("node.address", value, "an address, or one per address family")
    found = tuple(sorted((_address("node.address", v) for v in items), key=address_key))
    if len({Family.of(a) for a in found}) != len(found):
        raise ValidationError("node.address", [str(a) for a in found], "one address per family")
    return found


def _interface(field: str, value: object) -> str:
    if not isinstance(value, str) or not _INTERFACE.fullmatch(value):
        raise ValidationError(field, value, "an interface name (1..15 of [A-Za-z0-9_.:-])")
    return value


def _integer(field: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValidationError(field, value, f"an integer {low}..{high}")
    return value


@attrs.frozen
class Node:
    """One director of the cluster: ``name`` (its keepalived ``router_id``, chosen with
    ``--node``), ``address`` (its unicast VRRP source: one address per family), ``priority``
    (1..254: the highest one alive holds the VIPs)."""

    name: str = attrs.field()
    address: tuple[IPAddress, ...] = attrs.field(converter=_addresses)
    priority: int = attrs.field(default=100)

    @name.validator
    def _name(self, attribute: attrs.Attribute[str], value: object) -> None:
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            raise ValidationError("node.name", value, "1..28 characters from [A-Za-z0-9_.-]")

    @priority.validator
    def _priority(self, attribute: attrs.Attribute[int], value: object) -> None:
        _integer("node.priority", value, 1, 254)

    def address_of(self, family: Family) -> Optional[IPAddress]:
        """This node's VRRP address of ``family`` (None: it has none)."""
        return next((a for a in self.address if Family.of(a) == family), None)

    def data(self) -> dict[str, object]:
        """The ``[[cluster.node]]`` table :meth:`parse` reads back as this node (one address:
        a string, two: a list)."""
        address = [str(a) for a in self.address]
        return {"name": self.name, "address": address[0] if len(address) == 1 else address,
                "priority": self.priority}  # fmt: skip

    @classmethod
    def parse(cls, value: object) -> Node:
        """From a Node or a ``[[cluster.node]]`` table."""
        if isinstance(value, Node):
            return value
        if not isinstance(value, Mapping) or not {"name", "address"} <= set(value) or set(
            value
        ) - {"name", "address", "priority"}:
            raise ValidationError("node", value, "a table with name, address and priority")
        return cls(**value)


def _nodes(value: object) -> tuple[Node, ...]:
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise ValidationError("cluster.node", value, "two or more nodes")
    nodes = tuple(Node.parse(v) for v in value)
    for field in ("name", "priority"):
        seen = [getattr(n, field) for n in nodes]
        twice = sorted({v for v in seen if seen.count(v) > 1})
        if twice:
            raise ValidationError(f"node.{field}", twice[0], f"a {field} of its own per node")
    return nodes


@attrs.frozen
class Cluster:
    """The VRRP settings every director of the cluster shares.

    ``interface`` carries VRRP and the VIPs (``dev``), ``virtual_router_id`` 1..255 (one per
    instance: the IPv4 one uses it, the IPv6 one the same id, the gateway one id + 1),
    ``advert_int`` seconds between adverts, ``auth_pass`` (IPv4 VRRPv2 only, 1..8 characters),
    ``preempt`` (a higher priority node coming back takes the VIPs back), ``sync_interface``
    (IPVS connection sync, ``lvs_sync_daemon``), ``gateway`` (a NAT cluster's floating
    real-server gateway address), ``nodes``.
    """

    interface: str = attrs.field()
    virtual_router_id: int = attrs.field()
    nodes: tuple[Node, ...] = attrs.field(converter=_nodes)
    advert_int: int = attrs.field(default=1)
    auth_pass: Optional[str] = attrs.field(default=None)
    preempt: bool = attrs.field(default=True)
    sync_interface: Optional[str] = attrs.field(default=None)
    gateway: Optional[IPAddress] = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        _interface("cluster.interface", self.interface)
        _integer("cluster.virtual_router_id", self.virtual_router_id, 1,
                 254 if self.gateway is not None else 255)  # fmt: skip
        _integer("cluster.advert_int", self.advert_int, 1, 255)
        if self.auth_pass is not None and not (
            isinstance(self.auth_pass, str) and _PASS.fullmatch(self.auth_pass)
        ):
            raise ValidationError(
                "cluster.auth_pass", "***", "1..8 printable characters, none of { } \" # ! \\"
            )
        if not isinstance(self.preempt, bool):
            raise ValidationError("cluster.preempt", self.preempt, "true or false")
        if self.sync_interface is not None:
            _interface("cluster.sync_interface", self.sync_interface)
        if self.gateway is not None:
            object.__setattr__(self, "gateway", _address("cluster.gateway", self.gateway))
            self.instance_family(Family.of(self.gateway), "cluster.gateway")

    def families(self) -> tuple[Family, ...]:
        """The families every node has a VRRP address of (one instance each)."""
        return tuple(f for f in Family if all(n.address_of(f) for n in self.nodes))

    def instance_family(self, family: Family, field: str) -> None:
        """Refuse an address of ``family`` when no VRRP instance of that family can exist."""
        if family not in self.families():
            have = ", ".join(map(str, self.families())) or "none"
            raise ValidationError(
                field, str(family), f"a family every node has a VRRP address of ({have})"
            )

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise ValidationError("node", name, f"one of {', '.join(n.name for n in self.nodes)}")

    def check(self, bundles: Iterable[Bundle]) -> None:
        """Every VIP of ``bundles`` must have a VRRP instance of its family."""
        for bundle in bundles:
            for vip in bundle.vips:
                self.instance_family(Family.of(vip), f"vips ({bundle.name}: {vip})")

    def data(self) -> dict[str, object]:
        """The TOML-ready ``[cluster]`` table :meth:`parse` reads back as this cluster (unset
        optional settings left out, the nodes under ``node``)."""
        data: dict[str, object] = {
            "interface": self.interface,
            "virtual_router_id": self.virtual_router_id,
            "advert_int": self.advert_int,
            "preempt": self.preempt,
        }
        for key in ("auth_pass", "sync_interface", "gateway"):
            value = getattr(self, key)
            if value is not None:
                data[key] = str(value)
        data["node"] = [n.data() for n in self.nodes]
        return data

    @classmethod
    def parse(cls, value: object) -> Cluster:
        """From a Cluster or the ``[cluster]`` table (nodes under ``node``)."""
        if isinstance(value, Cluster):
            return value
        if not isinstance(value, Mapping):
            raise ValidationError("cluster", value, "a [cluster] table")
        fields: dict[str, Any] = dict(value)
        known = {a.name for a in attrs.fields(cls)} - {"nodes"} | {"node"}
        unknown = sorted(str(k) for k in fields if k not in known)
        if unknown:
            raise ValidationError("cluster", unknown[0], f"one of {sorted(known)}")
        for required in ("interface", "virtual_router_id", "node"):
            if required not in fields:
                raise ValidationError(f"cluster.{required}", None, "a value")
        fields["nodes"] = fields.pop("node")
        return cls(**fields)
