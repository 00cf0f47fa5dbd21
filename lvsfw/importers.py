"""Move over from Piranha (``lvs.cf``) or keepalived (``virtual_server fwmark``) to lvsfw.

Neither file lists a fwmark service's ports: lvs.cf has ``fwmark = 80`` and one ``port``,
keepalived only the mark. The ports live in the packet filter, so an import reads the mark
rules too (:mod:`lvsfw.markscan`: ``iptables-save`` / ``nft list ruleset`` text, or the live
kernel) and joins the two on the mark. Every mark no rule sets is named
(:attr:`Imported.unmatched`); lvs.cf's own address and port stand in for it when it has them.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Optional

import attrs
import tomli_w

from lvsfw import config
from lvsfw.backends.keepalived import parse_blocks
from lvsfw.command import run
from lvsfw.enums import Family, IPAddress, address_key
from lvsfw.errors import BackendUnavailable, CommandFailed, LvsfwError, ParseError
from lvsfw.lvscf import NETWORKS, Source, parse_lvs_cf
from lvsfw.markscan import FoundRule, Scan, scan
from lvsfw.model import FULL_MASK, NAME_PATTERN, Bundle, RealServer, VirtualService
from lvsfw.netns import legacy_tables
from lvsfw.ports import PortRange, merge_ranges
from lvsfw.rules import specify
from lvsfw.textscan import LineIndex, comment

__all__ = [
    "LIVE_DUMPS",
    "NETWORKS",
    "Imported",
    "Source",
    "detect_format",
    "import_text",
    "join",
    "parse_keepalived",
    "parse_lvs_cf",
    "read_live",
]
#: Tools that print the live rules for ``--live``: (argv, whether xt rules show in nft too).
LIVE_DUMPS = (
    ("nft", "list", "ruleset"),
    ("iptables-legacy-save", "-t", "mangle"),
    ("ip6tables-legacy-save", "-t", "mangle"),
    ("iptables-nft-save", "-t", "mangle"),
    ("ip6tables-nft-save", "-t", "mangle"),
)


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
        parts = [config.dumps(self.bundles, header=header)]
        for note, stub in self.stubs:
            body = tomli_w.dumps({"bundle": [stub]})
            parts.append(f"\n# {comment(note)}\n# Fill in vips and ports, then uncomment:\n")
            parts += [f"# {comment(line)}".rstrip() + "\n" for line in body.splitlines()]
        return "".join(parts)


# -- keepalived.conf -------------------------------------------------------------------------

# One line start each ([^\S\n]: blanks but newlines), so a run of blank lines is not re-read
# from each of its lines: that made these searches quadratic.
_REAL_PORT = re.compile(r"^([^\S\n]*real_server\s+\S+\s+)(\d+)(?=\s*\{|\s*$)", re.M)
_NOT_IMPORTED = re.compile(
    r"(?m)^[^\S\n]*(include|virtual_server_group|virtual_server\s+group)\s+(\S+)"
)
_HEAD = re.compile(r"(?m)^[ \t]*virtual_server[ \t]+(\S+)")
_FWMARK_HEAD = re.compile(r"(?m)^[ \t]*virtual_server[ \t]+fwmark[ \t]+(\d+)\b")


def parse_keepalived(text: str, source: str = "keepalived.conf") -> tuple[list[Source], list[str]]:
    """The ``virtual_server fwmark`` blocks of a keepalived.conf text, and warnings."""
    source = comment(source)  # it starts every warning and ``where``: one line each
    warn: list[str] = []
    lines = LineIndex(text)
    for found in _NOT_IMPORTED.finditer(text):
        what = " ".join(found[0].split())
        warn.append(
            f"{source}:{lines.line(found.start(1))}: '{what}' is not imported (import the "
            "file or the group's fwmark services one by one)"
        )
    heads = [(found.start(), found[1]) for found in _HEAD.finditer(text)]
    starts = [start for start, _ in heads]

    def portless(found: re.Match[str]) -> str:
        before = bisect.bisect_left(starts, found.start())  # heads wholly before this line
        if found[2] != "0" and before and heads[before - 1][1] == "fwmark":
            warn.append(
                f"{source}:{lines.line(found.start(2))}: real server port {found[2]} dropped: "
                "real servers of a fwmark service carry no port in lvsfw (the packet's port "
                "is kept)"
            )
        return found[1] + "0"

    services = parse_blocks(_REAL_PORT.sub(portless, text))
    first_line: dict[str, int] = {}
    for found in _FWMARK_HEAD.finditer(text):
        first_line.setdefault(found[1], lines.line(found.start()))
    result = []
    for service in sorted(services, key=lambda s: (s.mark, s.family)):
        line = first_line.get(str(service.mark), 1)
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


@attrs.define
class _Names:
    """Hands out bundle names: ``name``, else ``name-2``, ``name-3``... whichever is free.

    The last number tried per base name is kept, so the n-th bundle of one name costs O(1)."""

    taken: set[str] = attrs.Factory(set)
    tried: dict[str, int] = attrs.Factory(dict)

    def unique(self, name: str) -> str:
        """A name not handed out before (then taken)."""
        number = self.tried.get(name, 1)
        unique = name if number == 1 else ""
        while not unique or unique in self.taken:
            number += 1
            unique = f"{name[: 27 - len(str(number))]}-{number}"
        self.tried[name] = number
        self.taken.add(unique)
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
    names = _Names()
    for mark, items in sorted(by_mark.items()):
        service = _one_service(items)
        base = _safe_name(next((i.name for i in items if i.name), None), mark)
        found = rules_of.get(mark, [])
        comments = {r.comment.partition(":")[2] for r in found if r.comment.startswith("lvsfw:")}
        if len(comments) == 1:
            base = _safe_name(comments.pop(), mark)
        groups = _groups(found)
        masks = sorted({r.mask for r in found}) or [FULL_MASK]
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
            stub_bundle = Bundle(names.unique(base), stand_ins, "tcp:1", mark, service=service)
            stub = config.bundle_data(stub_bundle)
            stubs.append((note, {**stub, "vips": [], "ports": ""}))
            continue
        for vips, ports in groups:
            name = names.unique(base)
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
