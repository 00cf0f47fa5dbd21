"""Piranha's ``lvs.cf``: its virtual servers as :class:`Source` items.

Read by the shared brace-tree reader (:mod:`lvsfw.importers.tree`): ``name = value`` settings,
``virtual NAME { ... }`` and ``server NAME { ... }`` blocks. A virtual with ``fwmark`` is a
fwmark service (its ports come from the packet-filter rules; its own address and port stand in
when no rule sets the mark); one without is an IP:port service of its own (``port`` a number or
a service name such as ``http``). Every setting lvsfw's model cannot hold (the nanny health
checks, pulse's failover settings) is a warning naming it and its line.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

from lvsfw.enums import Family, Protocol, Scheduler
from lvsfw.errors import LvsfwError, ParseError
from lvsfw.importers import tree
from lvsfw.importers.found import Skip, port
from lvsfw.importers.source import Source, not_imported
from lvsfw.model import RealServer, VirtualService, parse_address
from lvsfw.ports import PortRange
from lvsfw.textscan import comment

#: Piranha's ``network =`` values: one forwarding method for every real server.
NETWORKS = {"nat": "masq", "direct": "route", "tunnel": "tunnel"}
_NANNY = "lvsfw has no health checks (Piranha's nanny): a failed real server stays in IPVS"
_PULSE = "lvsfw does not run the director failover (pulse); keep it or move to keepalived VRRP"
VIRTUAL_REASONS = {
    **dict.fromkeys(
        ("send", "expect", "use_regex", "send_program", "timeout", "reentry",
         "quiesce_server", "load_monitor"),
        _NANNY,
    ),
    "vip_nmask": "the VIP's netmask is interface setup (pulse brings the VIP up), not lvsfw's",
    "sorry_server": "lvsfw has no sorry server",
}  # fmt: skip
GLOBAL_REASONS = {
    **dict.fromkeys(("tcp_timeout", "tcpfin_timeout", "udp_timeout"),
                    "IPVS connection timeouts are not in lvsfw's model"),
    "syncdaemon": "lvsfw does not run the IPVS connection sync daemon",
}  # fmt: skip
#: settings that change nothing lvsfw would do
_SILENT = {"serial_no", "network", "debug_level"}
_VIRTUAL_KEYS = {"active", "address", "fwmark", "port", "persistent", "pmask", "scheduler",
                 "protocol"}  # fmt: skip
_SERVER_KEYS = {"address", "active", "weight", "port"}


def _fail(node: tree.Node, reason: str) -> ParseError:
    return ParseError("lvs.cf", node.where, reason)


def _settings(node: tree.Node) -> dict[str, tree.Node]:
    return {n.keyword: n for n in node.children or () if n.children is None and n.words}


def _lvs_int(node: tree.Node, low: int = 0) -> int:
    text = (node.value().split() or [""])[0]
    if not (text.isascii() and text.isdigit()) or int(text) < low:
        raise _fail(node, f"{node.keyword}: expected a number")
    return int(text)


def _lvs_port(node: tree.Node) -> int:
    try:
        return port((node.value().split() or [""])[0])
    except Skip as exc:
        raise _fail(node, f"{node.keyword}: {exc}") from None


def _unknown(node: tree.Node, known: set[str], reasons: dict[str, str], warn: list[str]) -> None:
    for child in node.children or ():
        if child.keyword and child.keyword not in known and child.keyword != "server":
            reason = reasons.get(child.keyword, "not in lvsfw's model")
            warn.append(not_imported(child.where, child.keyword, reason))


def _lvs_server(
    node: tree.Node, forwarding: str, warn: list[str]
) -> tuple[Optional[RealServer], Optional[int]]:
    items = _settings(node)
    if "address" not in items:
        raise _fail(node, "a server without 'address'")
    _unknown(node, _SERVER_KEYS, {}, warn)
    if "active" in items and _lvs_int(items["active"]) == 0:
        return None, None
    weight = _lvs_int(items["weight"]) if "weight" in items else 1
    server_port = _lvs_port(items["port"]) if "port" in items else None
    address = (items["address"].value().split() or [""])[0]
    return RealServer(address, weight, forwarding), server_port


def _lvs_virtual(node: tree.Node, forwarding: str, warn: list[str]) -> Optional[Source]:
    items, where = _settings(node), node.where
    name = node.words[1] if len(node.words) > 1 else "virtual"
    if "active" in items and _lvs_int(items["active"]) == 0:
        warn.append(f"{where}: virtual server {name!r} is inactive (active = 0); not imported")
        return None
    _unknown(node, _VIRTUAL_KEYS, VIRTUAL_REASONS, warn)
    vips = (
        (parse_address("address", (items["address"].value().split() or [""])[0]),)
        if "address" in items
        else ()
    )
    family = Family.of(vips[0]) if vips else Family.IPV4
    ports: tuple[PortRange, ...] = ()
    if "port" in items:
        protocol = items["protocol"].value() if "protocol" in items else "tcp"
        number = _lvs_port(items["port"])
        ports = (PortRange(Protocol.parse(protocol.lower(), "protocol"), number, number),)
    persistence = _lvs_int(items["persistent"]) if "persistent" in items else 0
    netmask, prefix = 32, 128
    if "pmask" in items and persistence:
        pmask = items["pmask"].value()
        if family == Family.IPV6:
            prefix = int(pmask.lstrip("/"))
        else:
            netmask = ipaddress.IPv4Network(f"0.0.0.0/{pmask}").prefixlen
    scheduler = items["scheduler"].value() if "scheduler" in items else "wlc"
    servers = []
    fwmark = "fwmark" in items
    for child in node.children or ():
        if child.children is None or child.keyword != "server":
            continue
        server, server_port = _lvs_server(child, forwarding, warn)
        label = f"server {' '.join(child.words[1:])!r} of {name!r}"
        if server is None:
            warn.append(f"{child.where}: {label} is inactive (active = 0); not imported")
            continue
        if server_port is not None and fwmark:
            warn.append(f"{child.where}: real server port {server_port} of {label} dropped: "
                        "real servers of a fwmark service carry no port in lvsfw")  # fmt: skip
        elif server_port is not None and ports and server_port != ports[0].first_port:
            warn.append(f"{where}: virtual server {name!r} not imported: {label} listens on "
                        f"port {server_port}, and a fwmark service keeps the packet's port "
                        f"{ports[0].first_port}")  # fmt: skip
            return None
        servers.append(server)
    service = VirtualService(
        Scheduler.parse(scheduler, "scheduler"), persistence or None, netmask, prefix, servers
    )
    origin = f"virtual {name}"
    if fwmark:
        mark = _lvs_int(items["fwmark"], 1)
        return Source(mark, family, service, where, name, vips, ports, origin)
    if not vips or not ports:
        warn.append(f"{where}: virtual server {name!r} has neither fwmark nor address and "
                    "port; not imported")  # fmt: skip
        return None
    return Source(None, family, service, where, name, vips, ports, origin)


def _lvs_tree(text: str, source: str) -> tuple[tree.Node, ...]:
    """The statement tree of an lvs.cf text (the shared reader, lvs.cf's tokens)."""
    return tree.read(text, source, tree.LVS_CF)


def _network(nodes: tuple[tree.Node, ...], source: str, warn: list[str]) -> str:
    globals_ = {n.keyword: n for n in nodes if n.children is None and n.words}
    for node in globals_.values():
        if node.keyword not in _SILENT:
            reason = GLOBAL_REASONS.get(node.keyword, _PULSE)
            warn.append(not_imported(node.where, node.keyword, reason))
    network = globals_["network"].value() if "network" in globals_ else ""
    if network not in NETWORKS:
        if network:
            raise _fail(globals_["network"], f"network = {network!r}: expected nat, direct or "
                        "tunnel")  # fmt: skip
        warn.append(f"{source}: no 'network =' line; assuming nat (Piranha's default)")
        network = "nat"
    return NETWORKS[network]


def parse_lvs_cf(text: str, source: str = "lvs.cf") -> tuple[list[Source], list[str]]:
    """The virtual servers of a Piranha ``lvs.cf`` text, and warnings."""
    source = comment(source)  # it starts every warning and ``where``: one line each
    warn: list[str] = []
    nodes = _lvs_tree(text, source)
    forwarding = _network(nodes, source, warn)
    found = []
    for node in nodes:
        if node.children is None or node.keyword != "virtual":
            if node.children is not None:
                warn.append(not_imported(node.where, " ".join(node.words), "not in lvsfw's model"))
            continue
        try:
            item = _lvs_virtual(node, forwarding, warn)
        except ParseError:
            raise
        except (LvsfwError, ValueError) as exc:
            raise _fail(node, str(exc)) from None
        if item is not None:
            found.append(item)
    return found, warn
