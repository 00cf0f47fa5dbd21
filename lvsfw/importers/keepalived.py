"""keepalived.conf: its virtual servers as :class:`Source` items.

Read by the shared brace-tree reader (:mod:`lvsfw.importers.tree`). Taken:

- ``virtual_server fwmark N`` (the mark's VIPs and ports come from the packet-filter rules);
- ``virtual_server VIP PORT``: an IP:port service, which becomes a bundle of its own mark;
- ``virtual_server group NAME`` with its ``virtual_server_group NAME { ... }``: members
  ``VIP PORT``, address ranges ``10.0.0.1-10 PORT`` (the last byte, or the last group of an
  IPv6 address, in hex) and ``fwmark N``;
- ``include PATTERN`` (globs, relative to the including file, at any level) when the file is
  read from disk (:func:`parse_keepalived` with ``path``); a cycle or a missing file is an
  error naming the line.

Every keyword lvsfw's model cannot hold (health checkers, ``sorry_server``, ``quorum``,
``delay_loop``, ``ops``...) is a warning naming it and its line; nothing is dropped silently.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from typing import Any, Optional

import attrs

from lvsfw.enums import Family, Forwarding, IPAddress, Protocol, Scheduler
from lvsfw.errors import LvsfwError, ParseError
from lvsfw.importers import checks, tree
from lvsfw.importers.source import Source, not_imported
from lvsfw.model import MAX_MARK, RealServer, VirtualService, parse_address
from lvsfw.ports import PortRange
from lvsfw.textscan import comment

#: keepalived's persistence_timeout without a value (IPVS_SVC_PERSISTENT_TIMEOUT).
DEFAULT_TIMEOUT = 360
MAX_INCLUDES = 1000
METHODS = {"NAT": Forwarding.MASQ, "DR": Forwarding.ROUTE, "TUN": Forwarding.TUNNEL}
#: virtual_server and real_server keywords lvsfw reads.
SERVICE_KEYWORDS = {
    "ip_family", "lb_algo", "lvs_sched", "lb_kind", "lvs_method", "persistence_timeout",
    "persistence_granularity", "protocol", "real_server", "delay_loop", "quorum", "hysteresis",
    "inhibit_on_failure", "sorry_server", "alpha", "omega",
}  # fmt: skip
SERVER_KEYWORDS = {"weight", "lvs_method", "lb_kind", "uthreshold", "lthreshold"}
CHECKERS = {
    "HTTP_GET", "SSL_GET", "TCP_CHECK", "SMTP_CHECK", "DNS_CHECK", "MISC_CHECK", "BFD_CHECK",
    "UDP_CHECK", "PING_CHECK", "FILE_CHECK",
}  # fmt: skip
_CHECKING = (
    "lvsfw holds TCP_CHECK, HTTP_GET, SSL_GET and MISC_CHECK, one per real server (a real"
    " server it does not check stays in the service)"
)
REASONS = {
    **dict.fromkeys(CHECKERS, _CHECKING),
    **dict.fromkeys(
        ("delay_loop", "retry", "delay_before_retry", "warmup", "connect_timeout",
         "virtualhost", "inhibit_on_failure", "nb_get_retry"),
        "a health-check setting; " + _CHECKING,
    ),
    **dict.fromkeys(
        ("sorry_server", "sorry_server_inhibit", "sorry_server_lvs_method"),
        "lvsfw has no sorry server",
    ),
    **dict.fromkeys(("quorum", "quorum_up", "quorum_down", "hysteresis"), "lvsfw has no quorum"),
    **dict.fromkeys(("notify_up", "notify_down", "smtp_alert"), "lvsfw runs no notifications"),
    **dict.fromkeys(
        ("hashed", "flag-1", "flag-2", "flag-3", "sh-port", "sh-fallback", "mh-port",
         "mh-fallback"),
        "lvsfw's model has no scheduler flags",
    ),
    "ops": "lvsfw's model has no one-packet scheduling",
    "ha_suspend": "lvsfw has no VRRP state to suspend on",
    "persistence_engine": "lvsfw's model has no persistence engine",
}  # fmt: skip
VRRP_BLOCKS = {
    "vrrp_instance", "vrrp_sync_group", "vrrp_script", "vrrp_track_process", "static_ipaddress",
    "static_routes", "static_rules", "linkbeat_interfaces", "bfd_instance", "garp_group",
    "track_file", "net_namespace",
}  # fmt: skip
_OTHER = "not in lvsfw's model"


def _fail(node: tree.Node, reason: str) -> ParseError:
    return ParseError("keepalived", f"{node.where}: {' '.join(node.words)}", reason)


def _one(node: tree.Node) -> str:
    if len(node.words) != 2 or node.children is not None:
        raise _fail(node, "expected 'keyword value'")
    return node.words[1]


def _int(node: tree.Node, text: Optional[str] = None) -> int:
    text = _one(node) if text is None else text
    if not (text.isascii() and text.isdigit()):
        raise _fail(node, "expected an integer")
    return int(text)


def _method(node: tree.Node, warn: list[str]) -> Forwarding:
    """``NAT``, ``DR``, ``TUN`` or ``TUN type ipip|gre|gue [port N] [csum...]``."""
    words = [w.upper() for w in node.words[1:]]
    if not words or words[0] not in METHODS or (words[1:] and words[0] != "TUN"):
        raise _fail(node, "expected NAT, DR, TUN or TUN type ipip|gre|gue")
    rest = words[1:]
    if rest[:1] == ["TYPE"] and rest[1:2] in (["GRE"], ["GUE"]):
        warn.append(not_imported(node.where, " ".join(node.words),
                                 f"lvsfw's model has no tunnel type: imported as ipip "
                                 f"tunnelling, so the real servers must decapsulate ipip, "
                                 f"not {rest[1].lower()}"))  # fmt: skip
    elif rest not in ([], ["TYPE", "IPIP"]):
        raise _fail(node, "expected NAT, DR, TUN or TUN type ipip|gre|gue")
    return METHODS[words[0]]


@attrs.define
class _Server:
    server: RealServer
    port: Optional[int]
    node: tree.Node
    inhibit: bool = False  # its own inhibit_on_failure (lvsfw holds the service's)


def _real_server(node: tree.Node, default: Forwarding, warn: list[str]) -> _Server:
    if len(node.words) not in (2, 3):
        raise _fail(node, "expected 'real_server ADDRESS [PORT]'")
    port = _int(node, node.words[2]) if len(node.words) == 3 else None
    fields: dict[str, object] = {"address": node.words[1], "forwarding": default}
    inhibit = False
    for child in node.children or ():
        keyword = child.keyword
        if child.children is None and keyword == "weight":
            fields["weight"] = _int(child)
        elif child.children is None and keyword in {"lvs_method", "lb_kind"}:
            fields["forwarding"] = _method(child, warn)
        elif child.children is None and keyword in {"uthreshold", "lthreshold"}:
            fields[f"{'upper' if keyword[0] == 'u' else 'lower'}_threshold"] = _int(child)
        elif child.children is not None and keyword in checks.HELD and "health" not in fields:
            fields["health"] = checks.checker(child, port, warn)
        elif child.children is None and child.words == ("inhibit_on_failure",):
            inhibit = True
        elif keyword:
            warn.append(not_imported(child.where, keyword, REASONS.get(keyword, _OTHER)))
    try:
        return _Server(RealServer.parse(fields), port, node, inhibit)
    except (LvsfwError, ValueError) as exc:
        raise _fail(node, str(exc)) from None


@attrs.frozen
class _Service:
    service: VirtualService
    family: Optional[Family]  # None: not stated (fwmark service without servers)
    protocol: Protocol
    servers: tuple[_Server, ...]


def _persistence(items: dict[str, tree.Node]) -> Optional[int]:
    if "persistence_timeout" not in items:
        return None
    node = items["persistence_timeout"]
    timeout = _int(node) if len(node.words) > 1 else DEFAULT_TIMEOUT
    return timeout or None  # 0: keepalived's "no persistence"


def _granularity(items: dict[str, tree.Node], family: Family) -> tuple[int, int]:
    if "persistence_granularity" not in items:
        return 32, 128
    node = items["persistence_granularity"]
    text = _one(node)
    try:
        if family == Family.IPV6:
            return 32, _int(node, text)
        return ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen, 128
    except ValueError:
        raise _fail(node, "expected a netmask (IPv4) or a prefix length (IPv6)") from None


def _keepalived_fields(items: dict[str, tree.Node], warn: list[str]) -> dict[str, Any]:
    """The model's keepalived-only fields: delay_loop, quorum, hysteresis, the flags
    inhibit_on_failure, alpha and omega, and sorry_server (``ADDRESS [PORT]``)."""
    fields: dict[str, Any] = {
        key: _int(items[key]) for key in ("delay_loop", "quorum", "hysteresis") if key in items
    }
    for flag in ("inhibit_on_failure", "alpha", "omega"):
        if flag in items:
            words = items[flag].words[1:]
            fields[flag] = not words or words[0].lower() in {"true", "on", "yes"}
    if "sorry_server" in items:
        node = items["sorry_server"]
        if len(node.words) not in (2, 3):
            raise _fail(node, "expected 'sorry_server ADDRESS [PORT]'")
        port = _int(node, node.words[2]) if len(node.words) == 3 else 0
        if port:
            warn.append(f"{node.where}: sorry_server port {port} dropped: lvsfw's sorry server "
                        "carries no port (the packet's port is kept)")  # fmt: skip
        fields["sorry_server"] = str(parse_address("sorry_server", node.words[1]))
    return fields


def _service(node: tree.Node, vip_family: Optional[Family], warn: list[str]) -> _Service:
    """The service settings and real servers of one virtual_server block."""
    items: dict[str, tree.Node] = {}
    server_nodes = []
    for child in node.children or ():
        if child.keyword == "real_server":
            server_nodes.append(child)
        elif child.keyword in SERVICE_KEYWORDS and child.children is None:
            items[child.keyword] = child
        elif child.keyword:
            reason = REASONS.get(child.keyword, _OTHER)
            warn.append(not_imported(child.where, child.keyword, reason))
    kind = Forwarding.MASQ  # keepalived's default lb_kind
    for keyword in ("lb_kind", "lvs_method"):
        kind = _method(items[keyword], warn) if keyword in items else kind
    servers = tuple(_real_server(n, kind, warn) for n in server_nodes)
    family = vip_family
    if "ip_family" in items:
        stated = {"inet": Family.IPV4, "inet6": Family.IPV6}.get(_one(items["ip_family"]))
        if stated is None:
            raise _fail(items["ip_family"], "expected inet or inet6")
        family = stated
    elif family is None and servers:
        family = servers[0].server.family
    scheduler = next((_one(items[k]) for k in ("lb_algo", "lvs_sched") if k in items), "wlc")
    proto = _one(items["protocol"]) if "protocol" in items else "TCP"
    try:
        netmask, prefix = _granularity(items, family or Family.IPV4)
        extra = _keepalived_fields(items, warn)
        if servers and all(s.inhibit for s in servers):
            extra["inhibit_on_failure"] = True  # on every server: the service's setting
        else:
            warn += [not_imported(s.node.where, "inhibit_on_failure", "lvsfw holds it for the"
                                  " whole service (every real server), not one")
                     for s in servers if s.inhibit]  # fmt: skip
        service = VirtualService(
            Scheduler.parse(scheduler, "lb_algo"), _persistence(items), netmask, prefix,
            [s.server for s in servers], **extra,
        )  # fmt: skip
        protocol = Protocol.parse(proto.lower(), "protocol")
    except (LvsfwError, ValueError) as exc:
        raise _fail(node, str(exc)) from None
    return _Service(service, family, protocol, servers)


def _fwmark(node: tree.Node, mark_text: str, group: str, warn: list[str]) -> Source:
    if not (mark_text.isascii() and mark_text.isdigit()) or not 1 <= int(mark_text) <= MAX_MARK:
        raise _fail(node, "expected 'virtual_server fwmark 1..2**32-1 {'")
    found = _service(node, None, warn)
    for item in found.servers:
        if item.port:
            warn.append(
                f"{item.node.where}: real server port {item.port} dropped: real servers of a "
                "fwmark service carry no port in lvsfw (the packet's port is kept)"
            )
    family = found.family or Family.IPV4
    origin = f"virtual_server {group or 'fwmark ' + mark_text}"
    return Source(int(mark_text), family, found.service, node.where, group or None, origin=origin)


def _refused(found: _Service, port: int) -> Optional[str]:
    """Why an IP:port service cannot be a fwmark bundle (a real server on another port)."""
    for item in found.servers:
        if item.port not in (None, 0, port):
            return (
                f"real server {item.server.address} listens on port {item.port}, and a fwmark "
                f"service keeps the packet's port {port} (move the real server to port {port}, "
                "then import again)"
            )
    return None


def _ip_port(
    node: tree.Node, pairs: list[tuple[IPAddress, int]], group: str, warn: list[str]
) -> list[Source]:
    """One Source per VIP set with equal ports (a single pair for ``virtual_server VIP PORT``)."""
    head = " ".join(node.words)
    found = _service(node, Family.of(pairs[0][0]), warn)
    for port in dict.fromkeys(p for _, p in pairs):
        reason = _refused(found, port)
        if reason:
            warn.append(f"{node.where}: '{head}' not imported: {reason}")
            return []
    by_vip: dict[IPAddress, list[int]] = {}
    for vip, port in pairs:
        by_vip.setdefault(vip, []).append(port)
    by_ports: dict[tuple[int, ...], list[IPAddress]] = {}
    for vip, vip_ports in by_vip.items():
        by_ports.setdefault(tuple(sorted(set(vip_ports))), []).append(vip)
    if group and found.service.persistence and len(pairs) > 1:
        warn.append(f"{node.where}: group {group}: persistence now spans the group's addresses "
                    "and ports (one fwmark service), not each member alone")  # fmt: skip
    sources = []
    for group_ports, vips in by_ports.items():
        ranges = tuple(PortRange(found.protocol, p, p) for p in group_ports)
        name = group or f"vs-{vips[0]}-{group_ports[0]}"
        sources.append(Source(None, Family.of(vips[0]), found.service, node.where, name,
                              tuple(vips), ranges, f"{head}"))  # fmt: skip
    return sources


def _address_range(node: tree.Node, text: str) -> list[IPAddress]:
    """``10.0.0.1-10``: 10.0.0.1 .. 10.0.0.10 (an IPv6 range counts in its last group)."""
    first_text, _, last_text = text.partition("-")
    try:
        first = parse_address("virtual_server_group", first_text)
        if not last_text:
            return [first]
        base = 16 if first.version == 6 else 10
        step = int(last_text, base)
        last_part = int(first) & (0xFFFF if first.version == 6 else 0xFF)
    except (LvsfwError, ValueError):
        raise _fail(node, "expected ADDRESS or ADDRESS-LAST PORT") from None
    if not last_part <= step <= (0xFFFF if first.version == 6 else 0xFF) or step - last_part > 255:
        raise _fail(node, "an address range runs backwards or spans more than 256 addresses")
    return [first + offset for offset in range(step - last_part + 1)]


def _groups(nodes: tuple[tree.Node, ...], warn: list[str]) -> dict[str, list[tree.Node]]:
    groups: dict[str, list[tree.Node]] = {}
    for node in nodes:
        if node.keyword == "virtual_server_group" and node.children is not None:
            if len(node.words) != 2:
                raise _fail(node, "expected 'virtual_server_group NAME {'")
            groups[node.words[1]] = [n for n in node.children if n.words]
            for member in node.children:
                if member.children is not None or len(member.words) != 2:
                    warn.append(not_imported(member.where, " ".join(member.words),
                                             "expected 'VIP PORT' or 'fwmark N'"))  # fmt: skip
    return groups


def _group_sources(
    node: tree.Node, members: list[tree.Node], name: str, warn: list[str]
) -> list[Source]:
    pairs: list[tuple[IPAddress, int]] = []
    sources = []
    for member in members:
        if member.children is not None or len(member.words) != 2:
            continue
        if member.keyword == "fwmark":
            sources.append(_fwmark(node, member.words[1], name, warn))
        else:
            port = _int(member, member.words[1])
            if not 1 <= port <= 65535:
                raise _fail(member, "expected a port 1..65535")
            pairs += [(vip, port) for vip in _address_range(member, member.keyword)]
    families = {Family.of(v) for v, _ in pairs}
    for family in sorted(families):
        sources += _ip_port(node, [p for p in pairs if Family.of(p[0]) == family], name, warn)
    return sources


def _virtual_server(
    node: tree.Node, groups: dict[str, list[tree.Node]], warn: list[str]
) -> list[Source]:
    words = node.words
    if len(words) != 3:
        raise _fail(node, "expected 'virtual_server fwmark N', 'VIP PORT' or 'group NAME'")
    if words[1] == "fwmark":
        return [_fwmark(node, words[2], "", warn)]
    if words[1] == "group":
        if words[2] not in groups:
            raise _fail(node, f"no virtual_server_group {words[2]} is defined")
        return _group_sources(node, groups[words[2]], words[2], warn)
    try:
        vip = parse_address("virtual_server", words[1])
    except LvsfwError as exc:
        raise _fail(node, str(exc)) from None
    port = _int(node, words[2])
    if not 1 <= port <= 65535:
        warn.append(f"{node.where}: '{' '.join(words)}' not imported: port 0 (every port of "
                    "a persistent service) is not a port list lvsfw keeps")  # fmt: skip
        return []
    return _ip_port(node, [(vip, port)], "", warn)


def _other(node: tree.Node, warn: list[str], vrrp: Optional[list[tree.Node]]) -> None:
    """Warnings for a top-level statement that is not a virtual server; with ``vrrp``,
    ``global_defs`` and the VRRP blocks go there instead (:mod:`~lvsfw.importers.kavrrp`)."""
    head = " ".join(node.words)
    if vrrp is not None and (node.keyword in VRRP_BLOCKS or node.keyword.startswith("vrrp_")
                             or node.keyword == "global_defs"):  # fmt: skip
        vrrp.append(node)
        if node.keyword != "global_defs":
            return
    if node.keyword == "include":
        warn.append(f"{node.where}: '{head}' is not imported (import the file itself: "
                    "includes are read from files, not from text)")  # fmt: skip
    elif node.keyword == "global_defs":
        for child in node.children or ():
            if child.keyword.startswith("lvs_") and not (
                vrrp is not None and child.keyword == "lvs_sync_daemon"
            ):
                warn.append(not_imported(child.where, child.keyword,
                                         "director-wide IPVS settings are not in lvsfw's model"))
    elif node.keyword in VRRP_BLOCKS or node.keyword.startswith("vrrp_"):
        warn.append(not_imported(node.where, head, "lvsfw has no VRRP ([cluster]) settings; "
                                 "keep keepalived running for failover"))  # fmt: skip
    elif node.keyword and node.keyword != "virtual_server_group":
        warn.append(not_imported(node.where, head, _OTHER))


def parse_keepalived(
    text: str,
    source: str = "keepalived.conf",
    path: Optional[str] = None,
    *,
    vrrp: Optional[list[tree.Node]] = None,
) -> tuple[list[Source], list[str]]:
    """The virtual servers of a keepalived.conf text, and warnings. With ``path`` (the file
    ``text`` was read from), ``include`` lines are read relative to it; with ``vrrp``, the
    ``global_defs`` and VRRP statements are appended to it for
    :func:`lvsfw.importers.kavrrp.read_node` (else each is a warning here)."""
    source = comment(source)  # it starts every warning and ``where``: one line each
    warn: list[str] = []
    includer = _Includer(source, path, warn) if path is not None else None
    nodes = tree.read(text, source, tree.KEEPALIVED, includer)
    groups = _groups(nodes, warn)
    found: list[Source] = []
    seen: dict[tuple[object, ...], str] = {}
    for node in nodes:
        if node.keyword != "virtual_server" or node.children is None:
            _other(node, warn, vrrp)
            continue
        for item in _virtual_server(node, groups, warn):
            keys = [("mark", item.mark, item.family)] if item.mark is not None else [
                ("port", v, p) for v in item.vips for p in item.ports
            ]  # fmt: skip
            for key in keys:
                if key in seen and seen[key] != node.where:
                    raise _fail(node, f"a second virtual server for what {seen[key]} defines")
                seen[key] = node.where
            found.append(item)
    return found, warn


class _Includer:
    """Reads ``include PATTERN`` for the tree reader: globs, relative to the including file,
    a cycle or a missing file an error naming the line, at most :data:`MAX_INCLUDES` files."""

    def __init__(self, source: str, path: str, warn: list[str]) -> None:
        self.directories = {source: os.path.dirname(path)}
        self.active = {os.path.realpath(path)}
        self.count = 0
        self.warn = warn

    def __call__(self, pattern: str, source: str, line: int) -> Iterator[tree.Token]:
        where = f"{source}:{line}"
        full = os.path.join(self.directories.get(source, ""), pattern)
        if any(c in pattern for c in "*?["):
            import glob  # noqa: PLC0415 - only when a pattern needs it

            matches = sorted(glob.glob(full))
            if not matches:
                self.warn.append(f"{where}: 'include {pattern}' matches no file; nothing included")
        else:
            matches = [full]
        for name in matches:
            yield from self._one(name, pattern, where)
        yield "\n", source, line

    def _one(self, name: str, pattern: str, where: str) -> Iterator[tree.Token]:
        real = os.path.realpath(name)
        if real in self.active:
            raise ParseError("keepalived", where, f"include {pattern}: {name} is already being "
                             "read (an include cycle)")  # fmt: skip
        self.count += 1
        if self.count > MAX_INCLUDES:
            raise ParseError("keepalived", where, f"more than {MAX_INCLUDES} files included")
        try:
            with open(name, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ParseError("keepalived", where, f"include {pattern}: {name}: {reason}") from None
        shown = comment(name)
        self.directories[shown] = os.path.dirname(name)
        self.active.add(real)
        try:
            yield from tree.tokens(text, shown, tree.KEEPALIVED, self)
        finally:
            self.active.discard(real)
