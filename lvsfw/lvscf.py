"""Piranha's ``lvs.cf``: its fwmark virtual servers as :class:`Source` items.

Read in one linear pass (:mod:`lvsfw.textscan`): a block tree of ``name = value`` settings,
``virtual NAME { ... }`` and ``server NAME { ... }`` blocks. Only virtual servers with a
``fwmark`` are taken; the rest are named in warnings. Used by :mod:`lvsfw.importers`.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

import attrs

from lvsfw.enums import Family, IPAddress, Protocol, Scheduler
from lvsfw.errors import LvsfwError, ParseError
from lvsfw.model import RealServer, VirtualService, parse_address
from lvsfw.ports import PortRange
from lvsfw.textscan import comment, lvs_tokens, strip_hash_comment

#: Piranha's ``network =`` values: one forwarding method for every real server.
NETWORKS = {"nat": "masq", "direct": "route", "tunnel": "tunnel"}


@attrs.frozen
class Source:
    """One fwmark service as the imported file states it.

    ``name`` the virtual server's name (lvs.cf) or None, ``vips``/``ports`` what the file
    itself says about them (lvs.cf's ``address`` and ``port``; empty for keepalived),
    ``where`` ``FILE:LINE``.
    """

    mark: int
    family: Family
    service: VirtualService
    where: str
    name: Optional[str] = None
    vips: tuple[IPAddress, ...] = ()
    ports: tuple[PortRange, ...] = ()


@attrs.frozen
class _Node:
    words: tuple[str, ...]
    children: Optional[tuple[_Node, ...]]
    line: int

    def value(self) -> str:
        words = self.words[2:] if self.words[1:2] == ("=",) else self.words[1:]
        return " ".join(w[1:-1] if w.startswith('"') else w for w in words)


def _lvs_tree(text: str, source: str) -> tuple[_Node, ...]:
    tokens: list[tuple[str, int]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        tokens += [(t, number) for t in lvs_tokens(strip_hash_comment(raw))]
        tokens.append(("\n", number))
    # ahead[i]: the first token after tokens[i] that is not a line end ("" at the end)
    ahead = [""] * len(tokens)
    following = ""
    for index in range(len(tokens) - 1, -1, -1):
        ahead[index] = following
        if tokens[index][0] != "\n":
            following = tokens[index][0]
    stack: list[list[_Node]] = [[]]
    heads: list[tuple[tuple[str, ...], int]] = []
    words: list[str] = []
    start = 0
    for index, (piece, number) in enumerate(tokens):
        if piece == "\n" and ahead[index] == "{":
            continue  # "server NAME" with its "{" on the next line
        if piece == "{":
            heads.append((tuple(words), start or number))
            stack.append([])
            words = []
        elif piece in {"}", "\n"}:
            if words and not (piece == "\n" and words[-1:] == ["="]):
                stack[-1].append(_Node(tuple(words), None, start))
                words = []
            if piece == "}":
                if not heads:
                    raise ParseError("lvs.cf", f"{source}:{number}", "'}' without '{'")
                (head, opened), children = heads.pop(), stack.pop()
                stack[-1].append(_Node(head, tuple(children), opened))
        else:
            start = number if not words else start
            words.append(piece)
    if heads:
        raise ParseError("lvs.cf", f"{source}:{heads[-1][1]}", "a '{' block is not closed")
    return tuple(stack[0])


def _settings(node: _Node) -> dict[str, _Node]:
    return {n.words[0]: n for n in node.children or () if n.children is None and n.words}


def _lvs_int(node: _Node, source: str, low: int = 0) -> int:
    text = (node.value().split() or [""])[0]
    if not (text.isascii() and text.isdigit()) or int(text) < low:
        raise ParseError("lvs.cf", f"{source}:{node.line}", f"{node.words[0]}: expected a number")
    return int(text)


def _lvs_server(node: _Node, forwarding: str, source: str) -> Optional[RealServer]:
    items = _settings(node)
    if "address" not in items:
        raise ParseError("lvs.cf", f"{source}:{node.line}", "a server without 'address'")
    if "active" in items and _lvs_int(items["active"], source) == 0:
        return None
    weight = _lvs_int(items["weight"], source) if "weight" in items else 1
    return RealServer((items["address"].value().split() or [""])[0], weight, forwarding)


def _lvs_virtual(node: _Node, forwarding: str, source: str, warn: list[str]) -> Optional[Source]:
    items, where = _settings(node), f"{source}:{node.line}"
    name = node.words[1] if len(node.words) > 1 else "virtual"
    if "active" in items and _lvs_int(items["active"], source) == 0:
        warn.append(f"{where}: virtual server {name!r} is inactive (active = 0); not imported")
        return None
    if "fwmark" not in items:
        warn.append(
            f"{where}: virtual server {name!r} has no fwmark; lvsfw manages fwmark "
            "services only; not imported"
        )
        return None
    vips = (
        (parse_address("address", (items["address"].value().split() or [""])[0]),)
        if "address" in items
        else ()
    )
    family = Family.of(vips[0]) if vips else Family.IPV4
    ports: tuple[PortRange, ...] = ()
    if "port" in items:
        protocol = items["protocol"].value() if "protocol" in items else "tcp"
        port = _lvs_int(items["port"], source, 1)
        ports = (PortRange(Protocol.parse(protocol, "protocol"), port, port),)
    persistence = _lvs_int(items["persistent"], source) if "persistent" in items else 0
    netmask, prefix = 32, 128
    if "pmask" in items and persistence:
        pmask = items["pmask"].value()
        if family == Family.IPV6:
            prefix = int(pmask.lstrip("/"))
        else:
            netmask = ipaddress.IPv4Network(f"0.0.0.0/{pmask}").prefixlen
    scheduler = items["scheduler"].value() if "scheduler" in items else "wlc"
    servers = []
    for child in node.children or ():
        if child.children is not None and child.words[:1] == ("server",):
            server = _lvs_server(child, forwarding, source)
            if server is None:
                warn.append(
                    f"{source}:{child.line}: server {' '.join(child.words[1:])!r} of "
                    f"{name!r} is inactive (active = 0); not imported"
                )
            else:
                servers.append(server)
    service = VirtualService(
        Scheduler.parse(scheduler, "scheduler"), persistence or None, netmask, prefix, servers
    )
    return Source(_lvs_int(items["fwmark"], source, 1), family, service, where, name, vips, ports)


def parse_lvs_cf(text: str, source: str = "lvs.cf") -> tuple[list[Source], list[str]]:
    """The fwmark virtual servers of a Piranha ``lvs.cf`` text, and warnings."""
    source = comment(source)  # it starts every warning and ``where``: one line each
    warn: list[str] = []
    nodes = _lvs_tree(text, source)
    globals_ = {n.words[0]: n for n in nodes if n.children is None and n.words}
    network = globals_["network"].value() if "network" in globals_ else ""
    if network not in NETWORKS:
        if network:
            raise ParseError(
                "lvs.cf",
                f"{source}:{globals_['network'].line}",
                f"network = {network!r}: expected nat, direct or tunnel",
            )
        warn.append(f"{source}: no 'network =' line; assuming nat (Piranha's default)")
        network = "nat"
    found = []
    for node in nodes:
        if node.children is not None and node.words[:1] == ("virtual",):
            try:
                item = _lvs_virtual(node, NETWORKS[network], source, warn)
            except ParseError:
                raise
            except (LvsfwError, ValueError) as exc:
                raise ParseError("lvs.cf", f"{source}:{node.line}", str(exc)) from None
            if item is not None:
                found.append(item)
    return found, warn
