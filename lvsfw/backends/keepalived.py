"""keepalived ``virtual_server fwmark N { ... }`` blocks (render-only, plus a parser).

One block per :class:`FwmarkService`; a dual-stack bundle is two blocks on one mark, the
IPv6 one saying ``ip_family inet6`` (keepalived.conf(5): needed for fwmark services whose
family cannot be told from the real servers). Keywords: ``lb_algo`` and ``lb_kind``
(accepted by every keepalived; 2.x also knows them as ``lvs_sched``/``lvs_method``).

Mixed forwarding: ``lb_kind`` of the block is the method most of its real servers use; a real
server using another one says ``lvs_method`` itself (real_server-level ``lvs_method`` needs
keepalived >= 2.0; uniform services render without it and load on older versions too).

keepalived's default ``lb_kind`` is NAT, so the block always states it. The packet-filter half
(the marks) is not keepalived's: load it with another lvsfw backend. Real servers carry
port 0, as IPVS keeps them for fwmark services.
"""

from __future__ import annotations

import collections
import ipaddress
import re
from collections.abc import Iterator

import attrs

from lvsfw.backends import kachecks, kaconf
from lvsfw.backends.base import ServiceBackend
from lvsfw.backends.ipvs import canonical
from lvsfw.cluster import Cluster
from lvsfw.enums import Family, Forwarding, Scheduler
from lvsfw.errors import LvsfwError, ParseError, ValidationError
from lvsfw.model import MAX_MARK, RealServer, VirtualService
from lvsfw.rules import FwmarkService, Specification

KINDS = {Forwarding.ROUTE: "DR", Forwarding.MASQ: "NAT", Forwarding.TUNNEL: "TUN"}
#: What the keepalived.conf including lvsfw's blocks must say in its ``global_defs`` when a
#: bundle has a ``misc`` check (keepalived refuses to run check scripts otherwise).
SCRIPT_SECURITY = "global_defs {\n    enable_script_security\n    script_user root\n}\n"
_METHODS = {v: k for k, v in KINDS.items()}
#: keepalived's persistence_timeout without a value (IPVS_SVC_PERSISTENT_TIMEOUT).
DEFAULT_TIMEOUT = 360
_TOKEN = re.compile(r"[{}]|[^\s{}]+|\n")


def _kind(servers: tuple[RealServer, ...]) -> Forwarding:
    counts = collections.Counter(s.forwarding for s in servers)
    return max(Forwarding, key=lambda f: (counts[f], -list(Forwarding).index(f)))


def builds(fs: FwmarkService) -> bool:
    """Whether keepalived builds ``fs`` in IPVS from its block: it drops a virtual_server with
    no real_server, sorry server or not ("has no real servers - ignoring", check_parser.c)."""
    return bool(fs.service.real_servers)


def render_block(fs: FwmarkService, delay_loop: int | None = None) -> str:
    """The ``virtual_server fwmark`` block of one service."""
    fs = canonical(fs)
    vs = fs.service
    kind = _kind(vs.real_servers)
    lines = [f"virtual_server fwmark {fs.mark} {{"]
    if fs.family == Family.IPV6:
        lines.append("    ip_family inet6")
    if delay_loop is not None and vs.delay_loop is None:
        vs = attrs.evolve(vs, delay_loop=delay_loop)
    lines += kachecks.service_lines(vs, fs.family)
    lines += [f"    lb_algo {vs.scheduler.value}", f"    lb_kind {KINDS[kind]}"]
    if vs.persistence is not None:
        lines.append(f"    persistence_timeout {vs.persistence}")
        if fs.family == Family.IPV4 and vs.persistence_netmask != 32:
            net = ipaddress.IPv4Network(f"0.0.0.0/{vs.persistence_netmask}")
            lines.append(f"    persistence_granularity {net.netmask}")
        elif fs.family == Family.IPV6 and vs.persistence_prefix != 128:
            lines.append(f"    persistence_granularity {vs.persistence_prefix}")
    for server in vs.real_servers:
        lines += [f"    real_server {server.address} 0 {{", f"        weight {server.weight}"]
        if server.forwarding != kind:
            lines.append(f"        lvs_method {KINDS[server.forwarding]}")
        if server.upper_threshold:
            lines.append(f"        uthreshold {server.upper_threshold}")
        if server.lower_threshold:
            lines.append(f"        lthreshold {server.lower_threshold}")
        lines += kachecks.server_lines(server.health or vs.health, vs.inhibit_on_failure)
        lines.append("    }")
    lines.append("}")
    return "".join(line + "\n" for line in lines)


@attrs.frozen
class _Node:
    """One keepalived statement: keyword, arguments, and its block (None: no block)."""

    words: tuple[str, ...]
    children: tuple[_Node, ...] | None
    line: int


def _tokens(text: str) -> Iterator[tuple[str, int]]:
    for number, raw in enumerate(text.splitlines(), 1):
        for token in _TOKEN.findall(re.split(r"[#!]", raw, maxsplit=1)[0]):
            yield token, number
        yield "\n", number


def _tree(tokens: Iterator[tuple[str, int]], nested: bool) -> tuple[_Node, ...]:
    nodes: list[_Node] = []
    words: list[str] = []
    for piece, line in tokens:
        if piece == "{":
            nodes.append(_Node(tuple(words), _tree(tokens, True), line))
            words = []
        elif piece == "}":
            if not nested:
                raise ParseError("keepalived", f"line {line}", "'}' without '{'")
            if words:
                nodes.append(_Node(tuple(words), None, line))
            return tuple(nodes)
        elif piece == "\n":
            if words:
                nodes.append(_Node(tuple(words), None, line))
            words = []
        else:
            words.append(piece)
    if nested:
        raise ParseError("keepalived", "end of text", "a '{' block is not closed")
    return tuple(nodes)


def _one(node: _Node) -> str:
    if len(node.words) != 2 or node.children is not None:
        raise ParseError("keepalived", " ".join(node.words), "expected 'keyword value'")
    return node.words[1]


def _int(node: _Node) -> int:
    try:
        return int(_one(node), 10)
    except ValueError:
        raise ParseError("keepalived", " ".join(node.words), "expected an integer") from None


def _method(node: _Node) -> Forwarding:
    words = node.words[1:]
    if words[:1] and words[0].upper() in _METHODS and words[1:] in ((), ("type", "ipip")):
        return _METHODS[words[0].upper()]
    raise ParseError("keepalived", " ".join(node.words), "expected NAT, DR, TUN or TUN type ipip")


def _server(node: _Node, default: Forwarding) -> RealServer:
    text = " ".join(node.words)
    if len(node.words) not in (2, 3) or node.words[2:] not in ((), ("0",)):
        raise ParseError("keepalived", text, "expected 'real_server ADDRESS [0]' (no port)")
    fields: dict[str, object] = {"address": node.words[1], "forwarding": default}
    for child in node.children or ():
        keyword = child.words[0] if child.words else ""
        if keyword == "weight":
            fields["weight"] = _int(child)
        elif keyword in {"lvs_method", "lb_kind"}:
            fields["forwarding"] = _method(child)
        elif keyword in {"uthreshold", "lthreshold"}:
            fields[f"{'upper' if keyword[0] == 'u' else 'lower'}_threshold"] = _int(child)
    fields["health"] = kachecks.checker_of(node.children or ())
    return RealServer.parse(fields)


def _service(node: _Node) -> FwmarkService:
    mark = int(node.words[2], 10)
    items = {n.words[0]: n for n in node.children or () if n.words and n.children is None}
    kind = _method(items["lb_kind"]) if "lb_kind" in items else Forwarding.MASQ
    kind = _method(items["lvs_method"]) if "lvs_method" in items else kind
    scheduler = next((_one(items[k]) for k in ("lb_algo", "lvs_sched") if k in items), "wlc")
    servers = [_server(n, kind) for n in node.children or () if n.words[:1] == ("real_server",)]
    family = Family.IPV4
    if "ip_family" in items:
        family = {"inet": Family.IPV4, "inet6": Family.IPV6}[_one(items["ip_family"])]
    elif servers:
        family = servers[0].family
    persistence = None
    if "persistence_timeout" in items:
        timeout = items["persistence_timeout"]
        persistence = _int(timeout) if len(timeout.words) > 1 else DEFAULT_TIMEOUT
    netmask, prefix = 32, 128
    if "persistence_granularity" in items:
        granularity = _one(items["persistence_granularity"])
        if family == Family.IPV6:
            prefix = int(granularity, 10)
        else:
            netmask = ipaddress.IPv4Network(f"0.0.0.0/{granularity}").prefixlen
    vs = VirtualService(
        Scheduler.parse(scheduler, "lb_algo"), persistence, netmask, prefix, servers,
        **kachecks.service_fields(items),  # type: ignore[arg-type]
    )
    vs = _shared_health(vs, node)
    return canonical(FwmarkService(family, mark, vs))


def _shared_health(vs: VirtualService, node: _Node) -> VirtualService:
    """One check every real server has becomes the service's (as lvsfw renders it);
    ``inhibit_on_failure`` on every server is the service's."""
    checks = {s.health for s in vs.real_servers}
    blocks = [n for n in node.children or () if n.words[:1] == ("real_server",)]
    inhibit = bool(blocks) and all(
        any(c.words == ("inhibit_on_failure",) for c in b.children or ()) for b in blocks
    )
    if len(checks) == 1 and None not in checks:
        servers = tuple(attrs.evolve(s, health=None) for s in vs.real_servers)
        vs = attrs.evolve(vs, health=checks.pop(), real_servers=servers)
    return attrs.evolve(vs, inhibit_on_failure=inhibit)


def parse_blocks(text: str) -> frozenset[FwmarkService]:
    """The ``virtual_server fwmark`` blocks of a keepalived.conf text; other blocks are
    skipped. Raises :class:`ParseError` for malformed text or values."""
    found: dict[tuple[Family, int], FwmarkService] = {}
    try:
        nodes = _tree(_tokens(text), False)
    except RecursionError:
        raise ParseError("keepalived", text[:60], "blocks nested too deeply") from None
    for node in nodes:
        if node.words[:2] != ("virtual_server", "fwmark") or node.children is None:
            continue
        where = f"line {node.line}: {' '.join(node.words)}"
        number = node.words[2] if len(node.words) == 3 else ""
        if not (number.isascii() and number.isdigit()) or not 1 <= int(number) <= MAX_MARK:
            raise ParseError("keepalived", where, "expected 'virtual_server fwmark 1..2**32-1 {'")
        try:
            service = _service(node)
        except ParseError:
            raise
        except (LvsfwError, ValueError, KeyError) as exc:
            raise ParseError("keepalived", where, str(exc)) from None
        key = (service.family, service.mark)
        if key in found:
            raise ParseError("keepalived", where, "a second block for this mark and family")
        found[key] = service
    return frozenset(found.values())


class Keepalived(ServiceBackend):
    """keepalived.conf ``virtual_server fwmark`` blocks for the IPVS half of bundles.

    ``delay_loop``, if given, is written into every block (checker polling, seconds).
    """

    name = "keepalived"

    def __init__(
        self,
        netns: str | None = None,
        delay_loop: int | None = None,
        cluster: Cluster | None = None,
        node: str | None = None,
    ) -> None:
        super().__init__(netns)
        self.delay_loop = delay_loop
        #: With ``node``: render the whole keepalived.conf of that director of ``cluster``.
        self.cluster, self.node = cluster, node
        if node is not None and cluster is None:
            raise ValidationError("node", node, "a [cluster] table naming the nodes")
        if cluster is not None and node is not None:
            cluster.node(node)

    def render_spec(self, spec: Specification) -> str:
        """The blocks of ``spec``'s services, by mark, IPv4 first; for a cluster node, the
        whole keepalived.conf of that director (:func:`lvsfw.backends.kaconf.render_cluster`)."""
        services = sorted(spec.services, key=lambda s: (s.mark, s.family))
        blocks = [render_block(s, self.delay_loop) for s in services]
        if self.cluster is not None and self.node is not None:
            return kaconf.render_cluster(self.cluster, self.node, spec, blocks)
        return "\n".join(blocks)

    def parse(self, text: str) -> frozenset[FwmarkService]:
        """The fwmark services in keepalived.conf ``text`` (see :func:`parse_blocks`)."""
        return parse_blocks(text)
