"""A picture of bundles: Graphviz DOT text, and SVG through Graphviz's ``dot``.

Left to right: each bundle's VIPs with their port sets, the bundle's mark, the IPVS fwmark
service of each address family, and the real servers with their weights. With what the live
kernel holds (:func:`observe`, ``lvsfw show FILE --format dot --live``) drift is drawn in red
(a bundle with findings, a service missing or differing, a real server not wanted or at
another weight) and real servers that are down (not in the live service, or at weight 0) in
grey.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional

import attrs

from lvsfw import state
from lvsfw.command import run
from lvsfw.director import Director
from lvsfw.drift import Report
from lvsfw.enums import Family, address_key
from lvsfw.model import Bundle, RealServer
from lvsfw.rules import FwmarkService, specify

#: What ``--format svg`` needs, and how to get it.
DOT_HINT = "apt-get install graphviz (Graphviz's dot draws the picture)"
RED, GREY = "#c0392b", "#9a9a9a"
#: At most this many drift findings are written into a bundle's note.
NOTE_LINES = 6

Key = tuple[Family, int]


@attrs.frozen
class Observed:
    """What the live kernel adds to a picture: ``verify``'s report and lvsfw's live IPVS
    services (empty when IPVS is not managed)."""

    report: Report
    services: frozenset[FwmarkService] = frozenset()
    ipvs: bool = True


def observe(director: Director, bundles: Sequence[Bundle]) -> Observed:
    """Read the live kernel through ``director``: verify's drift and the IPVS services lvsfw
    owns or ``bundles`` want."""
    report = director.verify(bundles)
    if director.ipvs is None:
        return Observed(report, ipvs=False)
    keys = {(s.family, s.mark) for s in specify(bundles).services}
    keys |= state.load(director.state_file).services
    live = director.ipvs.observe(frozenset(keys)).services
    return Observed(report, frozenset(s for s in live if (s.family, s.mark) in keys))


def quote(text: str) -> str:
    """``text`` as a DOT quoted string; a newline becomes a centred line break."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n") + '"'


def _attrs(**values: str) -> str:
    return "[" + ", ".join(f"{k}={quote(v)}" for k, v in values.items() if v) + "]"


class _Graph:
    """DOT statements, written in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def node(self, name: str, indent: int = 1, **values: str) -> None:
        self.lines.append(f"{'  ' * indent}{quote(name)} {_attrs(**values)};")

    def edge(self, a: str, b: str, **values: str) -> None:
        extra = f" {_attrs(**values)}" if any(values.values()) else ""
        self.lines.append(f"  {quote(a)} -> {quote(b)}{extra};")


def _service_label(fs: FwmarkService) -> str:
    vs = fs.service
    how = [str(vs.scheduler)]
    if vs.persistence is not None:
        how.append(f"persistent {vs.persistence}s")
    return f"IPVS fwmark {fs.mark} {fs.family}\n{', '.join(how)}"


def _server_label(server: RealServer) -> str:
    return f"{server.address}\n{server.forwarding}"


def dot(bundles: Iterable[Bundle], observed: Optional[Observed] = None) -> str:
    """The DOT text of ``bundles`` (with ``observed``: drift red, down servers grey)."""
    bundles = list(bundles)
    graph = _Graph()
    report = observed.report if observed is not None else Report()
    for bundle in bundles:
        _bundle(graph, bundle, report)
    wanted = {(s.family, s.mark): s for s in specify(bundles).services}
    live = {(s.family, s.mark): s for s in observed.services} if observed else {}
    checked = observed is not None and observed.ipvs
    by_mark = {b.mark.value: b.name for b in bundles}
    order = [(f, b.mark.value) for b in bundles for f in b.families]  # the file's order
    order += sorted(live.keys() - wanted.keys()) if checked else []
    for key in order:
        _service(graph, key, wanted.get(key), live.get(key) if checked else None, checked)
        if key[1] in by_mark:
            graph.edge(f"mark:{by_mark[key[1]]}", _service_id(key))
    strays = [d for d in report.drift if d.bundle not in by_mark.values()]
    if strays:
        graph.node(
            "drift:-",
            label=_note("drift of no bundle", [d.detail for d in strays]),
            shape="note",
            color=RED,
            fontcolor=RED,
        )
    head = [
        "digraph lvsfw {",
        '  graph [rankdir="LR", fontname="Helvetica", fontsize="12", nodesep="0.25", '
        'ranksep="0.9"];',
        '  node [shape="box", style="rounded", fontname="Helvetica", fontsize="11"];',
        '  edge [fontname="Helvetica", fontsize="10", color="#555555"];',
    ]
    return "\n".join([*head, *graph.lines, "}"]) + "\n"


def _note(title: str, details: Sequence[str]) -> str:
    lines = [title, *details[:NOTE_LINES]]
    if len(details) > NOTE_LINES:
        lines.append(f"... and {len(details) - NOTE_LINES} more")
    return "\n".join(lines)


def _bundle(graph: _Graph, bundle: Bundle, report: Report) -> None:
    findings = [d for d in report.drift if d.bundle == bundle.name]
    color = RED if findings else "#2c3e50"
    graph.lines.append(f"  subgraph {quote('cluster_' + bundle.name)} {{")
    title = f"bundle {bundle.name}" + (f" - drift: {len(findings)}" if findings else "")
    graph.lines.append(f"    graph {_attrs(label=title, color=color, fontcolor=color)};")
    for vip in bundle.vips:
        name = f"vip:{bundle.name}:{vip}"
        graph.node(name, 2, label=f"{vip}\n{bundle.ports}", color=color)
    graph.node(
        f"mark:{bundle.name}", 2, label=f"mark {bundle.mark}", shape="ellipse", color=color
    )
    if findings:
        label = _note("drift", [f"{d.kind}: {d.detail}" for d in findings])
        graph.node(f"drift:{bundle.name}", 2, label=label, shape="note", color=RED, fontcolor=RED)
    graph.lines.append("  }")
    for vip in bundle.vips:
        graph.edge(f"vip:{bundle.name}:{vip}", f"mark:{bundle.name}")


def _service_id(key: Key) -> str:
    return f"service:{key[0]}:{key[1]}"


def _service(
    graph: _Graph,
    key: Key,
    want: Optional[FwmarkService],
    have: Optional[FwmarkService],
    checked: bool,
) -> None:
    """One IPVS service node and its real servers; ``checked``: compared with ``have``."""
    shown = want or have
    assert shown is not None  # noqa: S101 - one of the two exists by construction
    label, color, style = _service_label(shown), "", "rounded"
    if checked and want is not None and have is None:
        label, color, style = label + "\nmissing", RED, "rounded,dashed"
    elif checked and want is None:
        label, color = label + "\nno bundle wants it", RED
    elif checked and want != have:
        label, color = label + "\ndiffers", RED
    node = _service_id(key)
    graph.node(node, label=label, color=color, fontcolor=color, style=style, shape="box")
    wanted = {s.address: s for s in want.service.real_servers} if want else {}
    live = {s.address: s for s in have.service.real_servers} if have else {}
    everyone = sorted(wanted.keys() | (live.keys() if checked else set()), key=address_key)
    for address in everyone:
        _server(graph, node, wanted.get(address), live.get(address), checked)


def _server(
    graph: _Graph,
    service: str,
    want: Optional[RealServer],
    have: Optional[RealServer],
    checked: bool,
) -> None:
    shown = want or have
    assert shown is not None  # noqa: S101 - one of the two exists by construction
    label, color, style, weight = _server_label(shown), "", "rounded", f"w{shown.weight}"
    if checked and have is None:
        label, color, style = label + "\ndown (not in IPVS)", GREY, "rounded,dashed"
    elif checked and want is None:
        label, color = label + "\nnot wanted", RED
    elif checked and have is not None and want is not None:
        weight = f"w{have.weight}"
        if have.weight != want.weight:
            weight, color = f"w{have.weight} (want w{want.weight})", RED
        elif have != want:
            label, color = label + "\ndiffers", RED
        if have.weight == 0:
            label, color, style = label + "\ndown (weight 0)", GREY, "rounded,dashed"
    node = f"server:{service.partition(':')[2]}:{shown.address}"
    graph.node(node, label=label, color=color, fontcolor=color, style=style)
    graph.edge(service, node, label=weight, color=color, fontcolor=color)


def svg(text: str) -> str:
    """``text`` (DOT) rendered by Graphviz's ``dot -Tsvg``; :class:`BackendUnavailable`
    naming the graphviz package when it is not installed."""
    return run(["dot", "-Tsvg"], stdin=text, install_hint=DOT_HINT)
