"""Move over from Piranha (``lvs.cf``) or keepalived (``virtual_server fwmark``) to lvsfw.

Neither file lists a fwmark service's ports: lvs.cf has ``fwmark = 80`` and one ``port``,
keepalived only the mark. The ports live in the packet filter, so an import reads the mark
rules too (:mod:`lvsfw.markscan`: ``iptables-save`` / ``nft list ruleset`` text, or the live
kernel) and joins the two on the mark. Every mark no rule sets is named
(:attr:`Imported.unmatched`); lvs.cf's own address and port stand in for it when it has them.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Optional

import attrs
import tomli_w

from lvsfw import config
from lvsfw.backends.keepalived import parse_blocks
from lvsfw.command import run
from lvsfw.enums import Family, IPAddress, Protocol, Scheduler, address_key
from lvsfw.errors import BackendUnavailable, CommandFailed, LvsfwError, ParseError
from lvsfw.markscan import FoundRule, Scan, scan
from lvsfw.model import NAME_PATTERN, Bundle, RealServer, VirtualService, parse_address
from lvsfw.netns import legacy_tables
from lvsfw.ports import PortRange, merge_ranges
from lvsfw.rules import specify

#: Piranha's ``network =`` values: one forwarding method for every real server.
NETWORKS = {"nat": "masq", "direct": "route", "tunnel": "tunnel"}
#: Tools that print the live rules for ``--live``: (argv, whether xt rules show in nft too).
LIVE_DUMPS = (
    ("nft", "list", "ruleset"),
    ("iptables-legacy-save", "-t", "mangle"),
    ("ip6tables-legacy-save", "-t", "mangle"),
    ("iptables-nft-save", "-t", "mangle"),
    ("ip6tables-nft-save", "-t", "mangle"),
)
_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|[{}=]|[^\s{}="]+')


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
class Imported:
    """The result of an import.

    ``bundles``; ``unmatched`` names every mark no rule sets; ``stubs`` the (note, bundle
    table) of those left out (no address or port to stand in); ``warnings`` everything else
    not imported, and why.
    """

    bundles: tuple[Bundle, ...]
    unmatched: tuple[str, ...] = ()
    stubs: tuple[tuple[str, dict[str, object]], ...] = ()
    warnings: tuple[str, ...] = ()

    def config_text(self, header: Sequence[str] = ()) -> str:
        """The lvsfw TOML config; marks left out follow as commented-out bundles."""
        text = config.dumps(self.bundles, header=header)
        for note, stub in self.stubs:
            body = tomli_w.dumps({"bundle": [stub]})
            text += f"\n# {note}\n# Fill in vips and ports, then uncomment:\n"
            text += "".join(f"# {line}".rstrip() + "\n" for line in body.splitlines())
        return text


# -- Piranha lvs.cf --------------------------------------------------------------------------


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
        line = re.sub(r'#(?=(?:[^"]*"[^"]*")*[^"]*$).*', "", raw)
        tokens += [(t, number) for t in _TOKEN.findall(line)] + [("\n", number)]
    stack: list[list[_Node]] = [[]]
    heads: list[tuple[tuple[str, ...], int]] = []
    words: list[str] = []
    start = 0
    for index, (piece, number) in enumerate(tokens):
        ahead = next((t for t, _ in tokens[index + 1 :] if t != "\n"), "")
        if piece == "\n" and ahead == "{":
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


# -- keepalived.conf -------------------------------------------------------------------------

_REAL_PORT = re.compile(r"^(\s*real_server\s+\S+\s+)(\d+)(?=\s*\{|\s*$)", re.M)


def parse_keepalived(text: str, source: str = "keepalived.conf") -> tuple[list[Source], list[str]]:
    """The ``virtual_server fwmark`` blocks of a keepalived.conf text, and warnings."""
    warn: list[str] = []
    for found in re.finditer(
        r"(?m)^\s*(include|virtual_server_group|virtual_server\s+group)\s+(\S+)", text
    ):
        line = text[: found.start()].count("\n") + 1
        what = " ".join(found[0].split())
        warn.append(
            f"{source}:{line}: '{what}' is not imported (import the file or the group's "
            "fwmark services one by one)"
        )

    def portless(found: re.Match[str]) -> str:
        heads = re.findall(r"(?m)^[ \t]*virtual_server[ \t]+(\S+)", text[: found.start()])
        if found[2] != "0" and heads[-1:] == ["fwmark"]:
            line = text[: found.start(2)].count("\n") + 1
            warn.append(
                f"{source}:{line}: real server port {found[2]} dropped: real servers of "
                "a fwmark service carry no port in lvsfw (the packet's port is kept)"
            )
        return found[1] + "0"

    services = parse_blocks(_REAL_PORT.sub(portless, text))
    result = []
    for service in sorted(services, key=lambda s: (s.mark, s.family)):
        head = re.search(rf"(?m)^[ \t]*virtual_server[ \t]+fwmark[ \t]+{service.mark}\b", text)
        line = text[: head.start()].count("\n") + 1 if head else 1
        result.append(Source(service.mark, service.family, service.service, f"{source}:{line}"))
    return result, warn


# -- the mark rules --------------------------------------------------------------------------


def read_live(netns: Optional[str] = None) -> Scan:
    """The mark rules of the live kernel (``nft list ruleset`` and every ``*-save``, with
    ``ipset save`` for the sets a ``-j SET --map-mark`` rule classifies through)."""
    found = Scan()
    try:
        ipsets = (run(["ipset", "save"], netns=netns), "live ipset save")
    except LvsfwError:  # no ipset program or kernel support: no set can classify
        ipsets = ("", "live ipset save")
    tables = legacy_tables(netns)
    for argv in LIVE_DUMPS:
        family = "ip6" if argv[0].startswith("ip6") else "ip"
        if "legacy" in argv[0] and (family, "mangle") not in tables:
            continue  # asking iptables-legacy-save would create the table
        try:
            text = run(list(argv), netns=netns)
        except BackendUnavailable:
            continue
        except CommandFailed as exc:
            found.warnings.append(f"{argv[0]}: could not read the rules: {exc.stderr.strip()}")
            continue
        found.extend(scan(text, f"live {argv[0]}", quiet_xt=True, ipsets=ipsets))
    return found


# -- joining on the mark ---------------------------------------------------------------------


def _safe_name(name: Optional[str], mark: int) -> str:
    if name and NAME_PATTERN.fullmatch(name):
        return name
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or "").strip("-")[:28]
    return text if NAME_PATTERN.fullmatch(text) else f"mark{mark}"


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... whichever is not taken yet (then taken)."""
    number, unique = 1, name
    while unique in taken:
        number += 1
        unique = f"{name[: 27 - len(str(number))]}-{number}"
    taken.add(unique)
    return unique


def _one_service(sources: Sequence[Source]) -> VirtualService:
    """One VirtualService from the per-family services of a mark (they must agree)."""
    first = sources[0]
    servers: list[RealServer] = []
    netmask, prefix = 32, 128
    for item in sources:
        a, b = first.service, item.service
        if (a.scheduler, a.persistence) != (b.scheduler, b.persistence) or (
            item.family == first.family and a != b
        ):
            raise LvsfwError(
                f"{first.where} and {item.where}: both define fwmark {item.mark} "
                "with different settings; one mark is one service"
            )
        if item.family == first.family and item is not first:
            continue
        servers += b.real_servers
        if item.family == Family.IPV4:
            netmask = b.persistence_netmask
        else:
            prefix = b.persistence_prefix
    return attrs.evolve(
        first.service, real_servers=servers, persistence_netmask=netmask, persistence_prefix=prefix
    )


def _groups(
    rules: Iterable[FoundRule],
) -> list[tuple[tuple[IPAddress, ...], tuple[PortRange, ...]]]:
    """VIPs with identical port sets, each group with its merged ports."""
    by_vip: dict[IPAddress, list[PortRange]] = defaultdict(list)
    for rule in rules:
        by_vip[rule.vip].append(PortRange(rule.protocol, rule.first_port, rule.last_port))
    by_ports: dict[tuple[PortRange, ...], list[IPAddress]] = defaultdict(list)
    for vip in sorted(by_vip, key=address_key):
        by_ports[merge_ranges(by_vip[vip])].append(vip)
    return [(tuple(vips), ports) for ports, vips in by_ports.items()]


def _bundle(
    name: str,
    vips: Sequence[IPAddress],
    ports: Sequence[PortRange],
    *,
    mark: tuple[int, int],
    service: VirtualService,
    warn: list[str],
) -> Bundle:
    families = {Family.of(v) for v in vips}
    kept = [s for s in service.real_servers if s.family in families]
    if len(kept) != len(service.real_servers):
        warn.append(
            f"mark {mark[0]}: real servers of a family no rule's VIP has were left out: "
            + ", ".join(str(s.address) for s in service.real_servers if s not in kept)
        )
    service = attrs.evolve(service, real_servers=kept)
    return Bundle(name, list(vips), list(ports), f"{mark[0]:#x}/{mark[1]:#x}", service=service)


def join(
    sources: Sequence[Source], rules: Sequence[FoundRule], warnings: Sequence[str] = ()
) -> Imported:
    """Bundles from the services of ``sources`` and the VIPs/ports of the ``rules`` that set
    their marks. Marks with no rule are named in :attr:`Imported.unmatched`."""
    warn = list(warnings)
    by_mark: dict[int, list[Source]] = defaultdict(list)
    for item in sources:
        by_mark[item.mark].append(item)
    rules_of: dict[int, list[FoundRule]] = defaultdict(list)
    for rule in rules:
        rules_of[rule.mark].append(rule)
    for mark in sorted(set(rules_of) - set(by_mark)):
        wheres = sorted({r.where for r in rules_of[mark]})
        warn.append(
            f"{', '.join(wheres)}: sets mark {mark}, which no virtual server uses; not imported"
        )
    bundles: list[Bundle] = []
    unmatched: list[str] = []
    stubs: list[tuple[str, dict[str, object]]] = []
    taken: set[str] = set()
    for mark, items in sorted(by_mark.items()):
        service = _one_service(items)
        base = _safe_name(next((i.name for i in items if i.name), None), mark)
        found = rules_of.get(mark, [])
        comments = {r.comment.partition(":")[2] for r in found if r.comment.startswith("lvsfw:")}
        if len(comments) == 1:
            base = _safe_name(comments.pop(), mark)
        groups = _groups(found)
        masks = sorted({r.mask for r in found}) or [0xFFFFFFFF]
        if len(masks) > 1:
            warn.append(f"mark {mark}: rules use several masks; using {masks[-1]:#x}")
        fallback = [v for i in items for v in i.vips], [p for i in items for p in i.ports]
        if not groups and fallback[0] and fallback[1]:
            note = (
                f"{items[0].where}: no packet-filter rule sets mark {mark}; using the "
                f"virtual server's own address and port ({', '.join(map(str, fallback[1]))})"
            )
            unmatched.append(note)
            warn.append(note)
            groups = [(tuple(dict.fromkeys(fallback[0])), merge_ranges(fallback[1]))]
        if not groups:
            note = f"{items[0].where}: no packet-filter rule sets mark {mark}; bundle left out"
            unmatched.append(note)
            warn.append(note)
            stand_in = {Family.IPV4: "192.0.2.1", Family.IPV6: "2001:db8::1"}
            stand_ins = sorted({stand_in[i.family] for i in items})
            stub_bundle = Bundle(_unique(base, taken), stand_ins, "tcp:1", mark, service=service)
            stub = config.bundle_data(stub_bundle)
            stubs.append((note, {**stub, "vips": [], "ports": ""}))
            continue
        for vips, ports in groups:
            name = _unique(base, taken)
            bundles.append(
                _bundle(name, vips, ports, mark=(mark, masks[-1]), service=service, warn=warn)
            )
    specify(bundles)
    return Imported(tuple(bundles), tuple(unmatched), tuple(stubs), tuple(warn))


def detect_format(text: str, path: str = "") -> str:
    """``lvs.cf`` or ``keepalived`` from a file's name or content."""
    if path.endswith("lvs.cf") or re.search(r"(?m)^\s*virtual\s+\S+\s*\{", text):
        return "lvs.cf"
    return "keepalived"


def import_text(
    text: str, source: str, kind: str = "auto", rules: Optional[Scan] = None
) -> Imported:
    """Import an lvs.cf or keepalived.conf text; ``rules`` supply the marks' VIPs and ports."""
    kind = detect_format(text, source) if kind == "auto" else kind
    parser = parse_lvs_cf if kind == "lvs.cf" else parse_keepalived
    sources, warn = parser(text, source)
    if not sources:
        raise ParseError(kind, source, "no fwmark virtual server found")
    found = rules or Scan()
    return join(sources, found.rules, [*found.warnings, *warn])
