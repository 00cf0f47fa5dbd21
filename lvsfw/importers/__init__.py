"""Move over from Piranha (``lvs.cf``) or keepalived (``keepalived.conf``) to lvsfw.

One module per format: :mod:`~lvsfw.importers.keepalived`, :mod:`~lvsfw.importers.lvscf`
(both read by the one brace-tree reader :mod:`~lvsfw.importers.tree`),
:mod:`~lvsfw.importers.iptables` and :mod:`~lvsfw.importers.nft` (the mark rules);
:mod:`~lvsfw.importers.join` turns them into bundles.

A fwmark service's ports live in the packet filter, so an import reads the mark rules too
(``iptables-save`` / ``nft list ruleset`` text, or the live kernel) and joins the two on the
mark. An IP:port service (``virtual_server VIP PORT``, an lvs.cf virtual without ``fwmark``)
becomes a bundle of its own on a newly assigned mark. Nothing is widened and nothing is dropped
silently: what lvsfw cannot represent is named in :attr:`Imported.warnings`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Optional

import attrs
import tomli_w

from lvsfw import config
from lvsfw.cluster import Cluster
from lvsfw.errors import LvsfwError, ParseError
from lvsfw.files import read_text
from lvsfw.importers import kavrrp, tree
from lvsfw.importers.found import Scan
from lvsfw.importers.join import FIRST_MARK, Joined, join
from lvsfw.importers.join import Names as _Names
from lvsfw.importers.kacluster import cluster_of
from lvsfw.importers.keepalived import parse_keepalived
from lvsfw.importers.lvscf import NETWORKS, parse_lvs_cf
from lvsfw.importers.scanning import LIVE_DUMPS, read_live
from lvsfw.importers.source import Source
from lvsfw.model import Bundle
from lvsfw.textscan import comment

__all__ = [
    "FIRST_MARK",
    "LIVE_DUMPS",
    "NETWORKS",
    "ImportFailed",
    "Imported",
    "Source",
    "_Names",
    "detect_format",
    "import_file",
    "import_files",
    "import_text",
    "join",
    "parse_keepalived",
    "parse_lvs_cf",
    "read_live",
]

_KEEPALIVED = re.compile(
    r"(?m)^[^\S\n]*(?:virtual_server|virtual_server_group|global_defs|vrrp_\w+|include)\b"
)
_LVS_CF = re.compile(r"(?m)^[^\S\n]*(?:virtual[^\S\n]+[^\s{=]+[^\S\n]*\{?[^\S\n]*$|\w+[^\S\n]*=)")


class ImportFailed(ParseError):
    """An import that failed after warnings were collected: ``warnings`` holds them (the
    CLI prints them before its one error line); the message is the cause's own."""

    def __init__(self, cause: LvsfwError, warnings: Sequence[str]) -> None:
        if isinstance(cause, ParseError):
            super().__init__(cause.source, cause.text, cause.reason)
        else:
            super().__init__("import", "", str(cause))
        self.message = str(cause)
        self.warnings = tuple(warnings)

    def __str__(self) -> str:
        return self.message


@attrs.frozen
class Imported:
    """The result of an import.

    ``bundles``; ``unmatched`` names every mark no rule sets; ``stubs`` the (note, bundle
    table) of those left out (no address or port to stand in); ``warnings`` everything else
    not imported (or imported with a caveat), and why; ``comments`` (bundle name, the
    original service it came from), written over each bundle; ``cluster`` the VRRP
    ``[cluster]`` every node's keepalived.conf gave together (None: none, or not exactly).
    """

    bundles: tuple[Bundle, ...]
    unmatched: tuple[str, ...] = ()
    stubs: tuple[tuple[str, dict[str, object]], ...] = ()
    warnings: tuple[str, ...] = ()
    comments: tuple[tuple[str, str], ...] = ()
    cluster: Optional[Cluster] = None

    def config_text(self, header: Sequence[str] = ()) -> str:
        """The lvsfw TOML config; marks left out follow as commented-out bundles."""
        notes = dict(self.comments)
        if not notes:
            parts = [config.dumps(self.bundles, header=header, cluster=self.cluster)]
        else:
            head = config.dumps([], header=header, cluster=self.cluster)
            parts = [head.replace("bundle = []\n\n", "").replace("bundle = []\n", "")]
            for index, bundle in enumerate(self.bundles):
                note = notes.get(bundle.name)
                parts.append("\n" if index or self.cluster is not None else "")
                parts.append(f"# {comment(note)}\n" if note else "")
                parts.append(tomli_w.dumps({"bundle": [config.bundle_data(bundle)]}))
        for note, stub in self.stubs:
            body = tomli_w.dumps({"bundle": [stub]})
            parts.append(f"\n# {comment(note)}\n# Fill in vips and ports, then uncomment:\n")
            parts += [f"# {comment(line)}".rstrip() + "\n" for line in body.splitlines()]
        return "".join(parts)


def detect_format(text: str, path: str = "") -> str:
    """``lvs.cf`` or ``keepalived``: from the content first (keepalived's block keywords or
    lvs.cf's ``name = value`` settings), the file name only when the content says neither."""
    keepalived, lvs_cf = _KEEPALIVED.search(text), _LVS_CF.search(text)
    if keepalived and not lvs_cf:
        return "keepalived"
    if lvs_cf and not keepalived:
        return "lvs.cf"
    if keepalived and lvs_cf:
        return "keepalived" if keepalived.start() < lvs_cf.start() else "lvs.cf"
    return "lvs.cf" if path.endswith("lvs.cf") else "keepalived"


def import_text(
    text: str,
    source: str,
    kind: str = "auto",
    rules: Optional[Scan] = None,
    *,
    path: Optional[str] = None,
    first_mark: int = FIRST_MARK,
    merge_ports: bool = False,
) -> Imported:
    """Import an lvs.cf or keepalived.conf text; ``rules`` supply the fwmark services' VIPs
    and ports; ``path`` the file the text came from (keepalived ``include`` lines are read
    relative to it). A failure after warnings is :class:`ImportFailed`, carrying them. One
    node's keepalived.conf gives no ``[cluster]`` (its peers' names and priorities are in
    theirs: see :func:`import_files`)."""
    return _import([(text, source, path)], kind, rules, first_mark, merge_ports)


def import_file(
    path: str,
    kind: str = "auto",
    rules: Optional[Scan] = None,
    *,
    first_mark: int = FIRST_MARK,
    merge_ports: bool = False,
) -> Imported:
    """Import the file ``path`` (its ``include`` lines read relative to it)."""
    text = read_text(path)
    return import_text(
        text, path, kind, rules, path=path, first_mark=first_mark, merge_ports=merge_ports
    )


def import_files(
    paths: Sequence[str],
    kind: str = "auto",
    rules: Optional[Scan] = None,
    *,
    first_mark: int = FIRST_MARK,
    merge_ports: bool = False,
) -> Imported:
    """Import one file, or every node's keepalived.conf of one VRRP cluster: the bundles
    come from the first file (each other file's must be the same, else a warning names the
    first that differs), the ``[cluster]`` from all of them together
    (:func:`lvsfw.importers.kavrrp.cluster_of`)."""
    files = [(read_text(p), p, p) for p in paths]
    return _import(files, kind, rules, first_mark, merge_ports)


def _import(
    files: Sequence[tuple[str, str, Optional[str]]],
    kind: str,
    rules: Optional[Scan],
    first_mark: int,
    merge_ports: bool,
) -> Imported:
    found = rules or Scan()
    warn: list[str] = list(found.warnings)
    reads: list[kavrrp.NodeRead] = []
    first: Optional[Joined] = None
    for text, source, path in files:
        vrrp: list[tree.Node] = []
        try:
            joined = _join(text, source, path, kind=kind, count=len(files), found=found,
                           vrrp=vrrp, warn=warn, first_mark=first_mark,
                           merge_ports=merge_ports)  # fmt: skip
        except ImportFailed:
            raise
        except ParseError as exc:
            raise (ImportFailed(exc, warn) if warn else exc) from None
        shown = comment(source)
        reads.append(kavrrp.read_node(vrrp, shown, warn) if vrrp else kavrrp.NodeRead(shown, False))
        if first is None:
            first = joined
            warn += joined.warnings
        else:
            _same(first, joined, files[0][1], source, warn)
    assert first is not None  # noqa: S101 - files is never empty
    cluster = cluster_of(reads, first.bundles, warn)
    return Imported(first.bundles, first.unmatched, first.stubs, tuple(warn), first.comments,
                    cluster)  # fmt: skip


def _join(
    text: str,
    source: str,
    path: Optional[str],
    *,
    kind: str,
    count: int,
    found: Scan,
    vrrp: list[tree.Node],
    warn: list[str],
    first_mark: int,
    merge_ports: bool,
) -> Joined:
    """One file's bundles (their join warnings in the result, the file's own into ``warn``)."""
    kind = detect_format(text, path or source) if kind == "auto" else kind
    if kind == "lvs.cf":
        if count > 1:
            raise ParseError("import", comment(source), "several files are the keepalived.conf "
                             "of each node of one cluster; import an lvs.cf alone")
        sources, own = parse_lvs_cf(text, source)
    else:
        sources, own = parse_keepalived(text, source, path, vrrp=vrrp)
    warn += own
    if not sources:
        if vrrp:  # what it says of VRRP that lvsfw could not take, before the error
            kavrrp.read_node(vrrp, comment(source), warn)
        raise ParseError(kind, comment(source), "no virtual server found: no fwmark virtual "
                         "server and no IP:port one that can be imported")  # fmt: skip
    try:
        return join(sources, found.rules, (), first_mark=first_mark, merge_ports=merge_ports)
    except LvsfwError as exc:
        raise (ImportFailed(exc, warn) if warn else exc) from None


def _same(first: Joined, other: Joined, first_source: str, source: str, warn: list[str]) -> None:
    """A warning when ``other`` (another node's file) gives other bundles than the first."""
    mine = {b.name: config.bundle_data(b) for b in first.bundles}
    theirs = {b.name: config.bundle_data(b) for b in other.bundles}
    names = sorted(n for n in mine.keys() | theirs.keys() if mine.get(n) != theirs.get(n))
    if names or first.stubs != other.stubs:
        warn += other.warnings
        what = f"bundle {names[0]}" if names else "the marks left out"
        warn.append(f"{comment(source)}: its virtual servers give other bundles than "
                    f"{comment(first_source)}'s ({what} differs); the bundles are imported "
                    f"from {comment(first_source)} only")  # fmt: skip
