"""Drift: how the live kernel differs from what a set of bundles specifies, bundle by bundle."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Generic, Optional, TypeVar

import attrs

from lvsfw.backends.base import Finding
from lvsfw.backends.keepalived import builds
from lvsfw.enums import Family, IPAddress, Protocol
from lvsfw.health import HealthCheck
from lvsfw.model import Bundle, RealServer
from lvsfw.ports import ports_text
from lvsfw.rules import FwmarkService, MarkRule, Specification, normalize

#: Kinds of drift, in the order a report lists them.
KINDS = (
    "missing",  # a bundled port carries no mark
    "changed",  # a bundled port carries another mark
    "extra",  # lvsfw marks a port no bundle has
    "structure",  # lvsfw's own table/chain/jump damaged
    "override",  # a foreign rule in the same hook overrides or skips lvsfw's marks
    "service-missing",  # a mark with no IPVS service
    "service-changed",  # an IPVS service whose settings differ
    "service-extra",  # an owned IPVS service no bundle wants
    "service-down",  # every real server down by health check, and no sorry server
)


@attrs.frozen(order=True)
class Drift:
    """One finding: ``kind`` (see :data:`KINDS`), the ``bundle`` it concerns, and what."""

    kind: str
    bundle: str
    detail: str

    def __str__(self) -> str:
        return f"{self.bundle}: {self.kind}: {self.detail}"


@attrs.frozen(order=True)
class Down:
    """A configured real server a health check took out of IPVS (keepalived): not drift."""

    bundle: str
    family: Family
    mark: int
    address: IPAddress

    def __str__(self) -> str:
        return (f"{self.bundle}: down by health check: fwmark {self.mark} ({self.family})"
                f" real server {self.address}")  # fmt: skip


@attrs.frozen
class Report:
    """The result of :meth:`lvsfw.Director.verify`; ``ok`` when nothing drifted. ``down``:
    the real servers a health check took out (they do not make the report fail)."""

    drift: tuple[Drift, ...] = ()
    down: tuple[Down, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the live kernel matches the bundles."""
        return not self.drift

    def of_kind(self, kind: str) -> tuple[Drift, ...]:
        """The findings of one kind."""
        return tuple(d for d in self.drift if d.kind == kind)

    @property
    def missing(self) -> tuple[Drift, ...]:
        """Bundled ports that lost their mark."""
        return self.of_kind("missing")

    @property
    def extra(self) -> tuple[Drift, ...]:
        """Marked ports no bundle has."""
        return self.of_kind("extra")

    @property
    def changed(self) -> tuple[Drift, ...]:
        """Ports or services whose value differs."""
        return self.of_kind("changed") + self.of_kind("service-changed")

    def __str__(self) -> str:
        head = [str(d) for d in self.drift] or ["no drift"]
        return "\n".join([*head, *map(str, self.down)])


Wanted = tuple[int, int, str]  # mark, mask, bundle name
Live = tuple[int, int]  # mark, mask
Segment = tuple[int, int, Optional[Wanted], Optional[Live]]
V = TypeVar("V")


class _Intervals(Generic[V]):
    """Disjoint port intervals with a value each; ``at(port)`` finds a port's value."""

    def __init__(self, items: Iterable[tuple[int, int, V]]) -> None:
        self.items = sorted(items, key=lambda item: item[0])
        self.starts = [item[0] for item in self.items]

    def at(self, port: int) -> Optional[V]:
        i = bisect.bisect_right(self.starts, port) - 1
        if i >= 0 and self.items[i][0] <= port <= self.items[i][1]:
            return self.items[i][2]
        return None


def _segments(
    want: Sequence[MarkRule], owners: dict[MarkRule, str], live: Sequence[MarkRule]
) -> list[Segment]:
    """Split the port line of one (vip, protocol) into pieces of constant (wanted, live) mark."""
    rules = [*want, *live]
    edges = sorted({r.first_port for r in rules} | {r.last_port + 1 for r in rules})
    wanted = _Intervals(
        (r.first_port, r.last_port, (r.mark, r.mask, owners.get(r, "?"))) for r in want
    )
    present = _Intervals((r.first_port, r.last_port, (r.mark, r.mask)) for r in live)
    pieces: list[Segment] = []
    for lo, nxt in zip(edges, edges[1:]):
        w, v = wanted.at(lo), present.at(lo)
        if pieces and pieces[-1][1] == lo - 1 and (pieces[-1][2], pieces[-1][3]) == (w, v):
            pieces[-1] = (pieces[-1][0], nxt - 1, w, v)
        else:
            pieces.append((lo, nxt - 1, w, v))
    return pieces


def rule_drift(spec: Specification, live: Iterable[MarkRule]) -> list[Drift]:
    """Missing, changed and extra marks, each naming the bundle and the ports."""
    live = frozenset(live)
    want_n = spec.normalized
    if live == want_n:  # the usual case: every element is exactly one wanted rule
        return []
    live_n = normalize(live)
    # only (vip, protocol) pairs whose canonical rules differ can drift: group just those
    touched = {(r.vip, r.protocol) for r in want_n ^ live_n}
    groups: dict[tuple[IPAddress, Protocol], tuple[list[MarkRule], list[MarkRule]]] = {}
    if not touched:
        return []
    for rule in spec.rules:
        if (rule.vip, rule.protocol) in touched:
            groups.setdefault((rule.vip, rule.protocol), ([], []))[0].append(rule)
    for rule in live:
        if (rule.vip, rule.protocol) in touched:
            groups.setdefault((rule.vip, rule.protocol), ([], []))[1].append(rule)
    found: list[Drift] = []
    for (vip, protocol), (want, have) in groups.items():
        for lo, hi, w, v in _segments(want, spec.owners, have):
            where = f"{vip} {protocol}:{ports_text(lo, hi)}"
            if w is not None and v is None:
                found.append(Drift("missing", w[2], f"{where} is not marked (want mark {w[0]})"))
            elif w is not None and v is not None and (w[0], w[1]) != v:
                found.append(Drift("changed", w[2], f"{where} has mark {v[0]}, want {w[0]}"))
            elif w is None and v is not None:
                found.append(Drift("extra", "-", f"{where} is marked {v[0]} by no bundle"))
    return found


def finding_drift(findings: Iterable[Finding], bundles: Sequence[Bundle]) -> list[Drift]:
    """Structural findings attributed to the bundles (and ports) they affect."""
    drift: list[Drift] = []
    for finding in findings:
        kind = "override" if finding.detail.startswith("foreign") else "structure"
        hit = [
            b
            for b in bundles
            if (finding.vip is None or finding.vip in b.vips)
            and (finding.family is None or finding.family in b.families)
        ]
        if finding.protocol is not None and finding.port is not None:
            hit = [b for b in hit if (finding.protocol, finding.port) in b.ports]
        port = f" ({finding.protocol}:{finding.port})" if finding.port is not None else ""
        for bundle in hit or bundles[:1]:
            ports = port or f" (all ports: {bundle.ports})"
            drift.append(Drift(kind, bundle.name if hit else "-", finding.detail + ports))
    return drift


def _differences(want: FwmarkService, live: FwmarkService) -> str:
    a, b = want.service, live.service
    fields = [f.name for f in attrs.fields(type(a)) if getattr(a, f.name) != getattr(b, f.name)]
    parts = []
    for name in fields:
        if name == "real_servers":
            w = {s.address: s for s in a.real_servers}
            h = {s.address: s for s in b.real_servers}
            parts += [f"real server {x} missing" for x in sorted(w.keys() - h.keys(), key=str)]
            parts += [f"real server {x} not wanted" for x in sorted(h.keys() - w.keys(), key=str)]
            parts += [
                f"real server {x} differs"
                for x in sorted(w.keys() & h.keys(), key=str)
                if w[x] != h[x]
            ]
        else:
            parts.append(f"{name} is {getattr(b, name)}, want {getattr(a, name)}")
    return "; ".join(parts)


def service_drift(
    bundles: Sequence[Bundle],
    spec: Specification,
    live: Iterable[FwmarkService],
    owned: Iterable[tuple[Family, int]],
) -> list[Drift]:
    """Marks without an IPVS service, services that differ, and owned ones no bundle wants."""
    by_mark = {b.mark.value: b for b in bundles}
    have = {(s.family, s.mark): s for s in live}
    drift: list[Drift] = []
    for want in sorted(spec.services):
        bundle, key = by_mark[want.mark], (want.family, want.mark)
        where = f"fwmark {want.mark} {want.family} ({bundle.ports})"
        if key not in have:
            drift.append(Drift("service-missing", bundle.name, f"{where} has no IPVS service"))
        elif have[key] != want:
            detail = f"{where}: {_differences(want, have[key])}"
            drift.append(Drift("service-changed", bundle.name, detail))
    wanted = {(s.family, s.mark) for s in spec.services}
    for key in sorted(set(owned) - wanted):
        if key in have:
            drift.append(
                Drift(
                    "service-extra",
                    "-",
                    f"owned IPVS service fwmark {key[1]} ({key[0]}) is not wanted",
                )
            )
    return drift


def _server_differs(want: RealServer, live: RealServer, check: Optional[HealthCheck]) -> bool:
    """Whether a live real server departs from its configuration (its weight is keepalived's
    to change when a ``misc`` check sets it dynamically)."""
    if check is not None and check.dynamic:
        live = attrs.evolve(live, weight=want.weight)
    return attrs.evolve(live, health=want.health) != want


def health_drift(
    bundles: Sequence[Bundle],
    spec: Specification,
    live: Iterable[FwmarkService],
    owned: Iterable[tuple[Family, int]],
) -> tuple[list[Drift], list[Down]]:
    """Drift of an IPVS table keepalived builds and health-checks: every wanted service must
    exist with the wanted settings; its live real servers must be configured ones (or the
    sorry server); a configured one that is absent (or inhibited to weight 0) is down, and
    a service with every one down and no sorry server is drift."""
    live = list(live)
    servers = {(s.family, s.mark): s for s in live}

    def bare(fs: FwmarkService) -> FwmarkService:  # the service's settings, not its servers
        return attrs.evolve(fs, service=attrs.evolve(fs.service, real_servers=()))

    # a service keepalived never builds (no real server) is not missing
    wanted = Specification(frozenset(), frozenset(bare(s) for s in spec.services if builds(s)))
    drift = service_drift(bundles, wanted, map(bare, live), owned)
    down: list[Down] = []
    by_mark = {b.mark.value: b for b in bundles}
    for want in sorted(spec.services):
        have = servers.get((want.family, want.mark))
        if have is None:
            continue
        vs, bundle = want.service, by_mark[want.mark]
        where = f"fwmark {want.mark} {want.family} ({bundle.ports})"
        present = {s.address: s for s in have.service.real_servers}
        sorry = vs.sorry_server.address if vs.sorry_server is not None else None
        configured = {s.address: s for s in vs.real_servers}
        for address in sorted(present.keys() - configured.keys() - {sorry}, key=str):
            drift.append(Drift("service-changed", bundle.name,
                               f"{where}: real server {address} not wanted"))  # fmt: skip
        up = 0
        for address, server in configured.items():
            got = present.get(address)
            if got is None or (vs.inhibit_on_failure and got.weight == 0 < server.weight):
                down.append(Down(bundle.name, want.family, want.mark, address))
                continue
            up += 1
            check = server.health or vs.health
            if _server_differs(server, got, check):
                drift.append(Drift("service-changed", bundle.name,
                                   f"{where}: real server {address} differs"))  # fmt: skip
        if not up and sorry is None and configured:
            detail = f"{where}: every real server is down by health check and no sorry server"
            drift.append(Drift("service-down", bundle.name, detail))
    return drift, sorted(down)
