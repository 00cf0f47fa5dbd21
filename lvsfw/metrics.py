"""Prometheus metrics of a director, through ``prometheus_client`` (never hand-written text).

:func:`collect` reads what a scrape needs once — the bundles of a config, ``verify``'s drift,
the state file, the last apply's record and the IPVS counters of lvsfw's services (``ipvsadm
-L -n`` and ``ipvsadm -L -n --stats --exact``) — into a :class:`Snapshot`;
:class:`SnapshotCollector` turns a snapshot into metric families, :func:`exposition` into the
text format and :func:`write_textfile` into a file for node_exporter's textfile collector
(written to a temporary file and renamed). A part that cannot be read is left out and named
in ``lvsfw_collector_success{collector=...} 0`` instead of failing the whole scrape.

The last apply is recorded by ``lvsfw apply`` in ``STATE_FILE.last-apply`` (see
:func:`record_apply`; library callers can call it too). Without such a record the state file
stands in: its modification time (apply and destroy write it whenever they change something)
and its ``pending`` flag (set while an apply runs; left set by one killed half-way).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Optional, Protocol, Union

import attrs
from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lvsfw import state
from lvsfw.backends.ipvs import Ipvs
from lvsfw.backends.karun import KeepalivedRuntime
from lvsfw.director import Director
from lvsfw.drift import KINDS, Report
from lvsfw.enums import Family, IPAddress
from lvsfw.errors import LvsfwError, ParseError
from lvsfw.files import write_atomic
from lvsfw.model import FULL_MASK, Bundle
from lvsfw.rules import FwmarkService, specify

Key = tuple[Family, int]
_AnyFamily = Union[GaugeMetricFamily, CounterMetricFamily]
#: The name of the last apply's record, next to the state file.
LAST_APPLY_SUFFIX = ".last-apply"
#: Findings ``verify`` attributes to no bundle carry this bundle label.
NO_BUNDLE = "-"
SERVICE_LABELS = ("family", "mark", "bundle")
SERVER_LABELS = (*SERVICE_LABELS, "server")


# -- the last apply ---------------------------------------------------------------------------


@attrs.frozen
class LastApply:
    """When the last apply ended (``time``, seconds since the epoch) and whether it succeeded."""

    time: float
    ok: bool
    error: Optional[str] = None


def last_apply_path(state_file: str) -> str:
    """``STATE_FILE.last-apply``: where :func:`record_apply` writes."""
    return state_file + LAST_APPLY_SUFFIX


def record_apply(state_file: str, ok: bool, error: Optional[str] = None) -> None:
    """Record that an apply for ``state_file`` ended now, and how (atomically)."""
    data = {"time": time.time(), "ok": ok, "error": error}
    write_atomic(last_apply_path(state_file), json.dumps(data) + "\n")


def read_last_apply(state_file: str) -> Optional[LastApply]:
    """The record :func:`record_apply` wrote for ``state_file`` (None: there is none).

    A damaged record is an :class:`LvsfwError` naming the file."""
    path = last_apply_path(state_file)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LvsfwError(f"{path}: cannot read the last apply's record: {exc}") from None
    if (
        not isinstance(data, dict)
        or type(data.get("time")) not in (int, float)
        or type(data.get("ok")) is not bool
        or not isinstance(data.get("error"), (str, type(None)))
    ):
        raise LvsfwError(f"{path}: damaged (expected time, ok and error); remove it")
    return LastApply(float(data["time"]), data["ok"], data["error"])


# -- IPVS counters ----------------------------------------------------------------------------


@attrs.frozen
class Counters:
    """IPVS totals since the service or real server was added."""

    connections: int = 0
    in_packets: int = 0
    out_packets: int = 0
    in_bytes: int = 0
    out_bytes: int = 0


@attrs.frozen
class ServerStats:
    """One live real server: ``ipvsadm -L -n``'s weight and connections, and its counters."""

    address: IPAddress
    weight: int
    active: int
    inactive: int
    counters: Counters = Counters()


@attrs.frozen
class ServiceStats:
    """One live fwmark service: its counters and real servers."""

    counters: Counters
    servers: tuple[ServerStats, ...]


def _fwm_key(tokens: Sequence[str]) -> tuple[Key, int]:
    """(family, mark) of a ``FWM  80 [IPv6] ...`` line, and where the rest begins."""
    mark = int(tokens[1]) & FULL_MASK  # ipvsadm prints the mark with %d
    v6 = tokens[2:3] == ["IPv6"]
    return (Family.IPV6 if v6 else Family.IPV4, mark), 3 if v6 else 2


def _server_address(text: str) -> IPAddress:
    return ipaddress.ip_address(text.rpartition(":")[0].strip("[]"))


def _lines(text: str, source: str) -> Iterator[tuple[str, list[str]]]:
    """The service (``"service"``) and real server (``"server"``) lines of an ``ipvsadm -L``
    listing, as tokens; headers skipped."""
    for raw in text.splitlines():
        tokens = raw.split()
        if not tokens or tokens[0] in {"IP", "Prot"} or tokens[1:2] == ["RemoteAddress:Port"]:
            continue
        if tokens[0] in {"FWM", "TCP", "UDP", "SCTP"}:
            yield "service", tokens
        elif tokens[0] == "->" and len(tokens) >= 2:
            yield "server", tokens
        else:
            raise ParseError(source, raw, "unexpected line")


def parse_listing(text: str) -> dict[Key, dict[IPAddress, tuple[int, int, int]]]:
    """(weight, active, inactive connections) per real server of each fwmark service, from
    ``ipvsadm -L -n`` (``  -> ADDR:0  Route  1  0  0``); other services are skipped."""
    found: dict[Key, dict[IPAddress, tuple[int, int, int]]] = {}
    current: Optional[dict[IPAddress, tuple[int, int, int]]] = None
    for kind, tokens in _lines(text, "ipvsadm -L -n"):
        try:
            if kind == "service":
                current = found.setdefault(_fwm_key(tokens)[0], {}) if tokens[0] == "FWM" else None
            elif current is not None:
                weight, active, inactive = (int(t) for t in tokens[3:6])
                current[_server_address(tokens[1])] = (weight, active, inactive)
        except (IndexError, ValueError):
            raise ParseError("ipvsadm -L -n", " ".join(tokens), "unexpected line") from None
    return found


def _counters(tokens: Sequence[str]) -> Counters:
    if len(tokens) != 5:
        raise ValueError("expected 5 counters")
    return Counters(*(int(t) for t in tokens))  # --exact: plain integers, never 12K


def parse_stats(text: str) -> dict[Key, tuple[Counters, dict[IPAddress, Counters]]]:
    """Counters of each fwmark service and of its real servers, from ``ipvsadm -L -n --stats
    --exact`` (``FWM  80  Conns InPkts OutPkts InBytes OutBytes``)."""
    found: dict[Key, tuple[Counters, dict[IPAddress, Counters]]] = {}
    current: Optional[dict[IPAddress, Counters]] = None
    for kind, tokens in _lines(text, "ipvsadm --stats"):
        try:
            if kind == "service" and tokens[0] == "FWM":
                key, rest = _fwm_key(tokens)
                current = {}
                found[key] = (_counters(tokens[rest:]), current)
            elif kind == "service":
                current = None
            elif current is not None:
                current[_server_address(tokens[1])] = _counters(tokens[2:])
        except (IndexError, ValueError):
            raise ParseError("ipvsadm --stats", " ".join(tokens), "unexpected line") from None
    return found


def read_ipvs(ipvs: Ipvs) -> dict[Key, ServiceStats]:
    """Every live fwmark service with its real servers' weights, connections and counters."""
    listing = parse_listing(ipvs.run(["-L", "-n"]))
    stats = parse_stats(ipvs.run(["-L", "-n", "--stats", "--exact"]))
    found = {}
    for key, servers in listing.items():
        totals, per_server = stats.get(key, (Counters(), {}))
        found[key] = ServiceStats(
            totals,
            tuple(
                ServerStats(a, w, act, inact, per_server.get(a, Counters()))
                for a, (w, act, inact) in servers.items()
            ),
        )
    return found


# -- one scrape -------------------------------------------------------------------------------


@attrs.frozen
class Snapshot:
    """What one scrape read. ``bundles`` and ``report`` are None without a config (or when
    verify failed); ``ipvs`` None when IPVS was not read; ``errors``: collector -> message."""

    state_file: str
    bundles: Optional[tuple[Bundle, ...]] = None
    report: Optional[Report] = None
    owned: state.State = attrs.field(factory=state.State)
    state_mtime: Optional[float] = None
    last_apply: Optional[LastApply] = None
    ipvs: Optional[dict[Key, ServiceStats]] = None
    errors: dict[str, str] = attrs.field(factory=dict)

    @property
    def wanted(self) -> dict[Key, FwmarkService]:
        """The IPVS services the bundles want, by (family, mark)."""
        spec = specify(self.bundles or ())
        return {(s.family, s.mark): s for s in spec.services}


def _message(exc: BaseException) -> str:
    notes = [str(n) for n in getattr(exc, "__notes__", ())]
    return " ".join("; ".join([str(exc), *notes]).split()) or type(exc).__name__


def collect(director: Director, bundles: Optional[Iterable[Bundle]] = None) -> Snapshot:
    """Read everything a scrape exports through ``director`` (verify only with ``bundles``)."""
    errors: dict[str, str] = {}
    found: dict[str, object] = {}
    wanted = tuple(bundles) if bundles is not None else None
    if wanted is not None:
        found["bundles"] = wanted
        try:
            found["report"] = director.verify(wanted)
        except (LvsfwError, OSError) as exc:
            errors["verify"] = _message(exc)
    owned = state.State()
    try:
        owned = state.load(director.state_file)
        with contextlib.suppress(FileNotFoundError):
            found["state_mtime"] = os.stat(director.state_file).st_mtime
        found["last_apply"] = read_last_apply(director.state_file)
    except (LvsfwError, OSError) as exc:
        errors["state"] = _message(exc)
    keys = owned.services | {(s.family, s.mark) for s in specify(wanted or ()).services}
    # the table lvsfw's ipvsadm writes, or the one keepalived builds from lvsfw's file
    reader = director.ipvs.ipvs_reader if isinstance(director.ipvs, KeepalivedRuntime) \
        else director.ipvs  # fmt: skip
    if isinstance(reader, Ipvs) and keys:  # a marks-only host needs no IPVS
        try:
            found["ipvs"] = read_ipvs(reader)
        except (LvsfwError, OSError) as exc:
            errors["ipvs"] = _message(exc)
    return Snapshot(director.state_file, owned=owned, errors=errors, **found)  # type: ignore[arg-type]


# -- metric families --------------------------------------------------------------------------


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Sequence[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


class SnapshotCollector(Collector):
    """The metric families of one :class:`Snapshot` (register it in a CollectorRegistry)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Every family; see the README's "Metrics" section for what each one means."""
        snap = self.snapshot
        success = _gauge(
            "lvsfw_collector_success",
            "1 when this part of the scrape was read, 0 when it failed (see lvsfw's stderr).",
            ["collector"],
        )
        parts = ["state", *(["verify"] if snap.bundles is not None else [])]
        parts += ["ipvs"] if snap.ipvs is not None or "ipvs" in snap.errors else []
        for part in parts:
            success.add_metric([part], 0.0 if part in snap.errors else 1.0)
        yield success
        yield from self._config()
        yield from self._state()
        if snap.ipvs is not None:
            yield from self._ipvs(snap.ipvs)

    def _config(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap.bundles is None:
            return
        yield GaugeMetricFamily(
            "lvsfw_bundles", "Bundles in the configuration file.", value=len(snap.bundles)
        )
        if snap.report is None:
            return
        drift = _gauge(
            "lvsfw_drift",
            "Drift findings of verify, by bundle and kind (0: the kernel matches the bundle; "
            f"bundle {NO_BUNDLE!r}: findings of no bundle).",
            ["bundle", "kind"],
        )
        counts: dict[tuple[str, str], int] = {}
        for finding in snap.report.drift:
            key = (finding.bundle, finding.kind)
            counts[key] = counts.get(key, 0) + 1
        names = [b.name for b in snap.bundles]
        for bundle in [*names, *sorted({b for b, _ in counts} - set(names) - {NO_BUNDLE})]:
            for kind in KINDS:
                drift.add_metric([bundle, kind], float(counts.get((bundle, kind), 0)))
        for kind in KINDS:
            drift.add_metric([NO_BUNDLE, kind], float(counts.get((NO_BUNDLE, kind), 0)))
        yield drift

    def _state(self) -> Iterator[Metric]:
        snap = self.snapshot
        if "state" in snap.errors:
            return
        yield GaugeMetricFamily(
            "lvsfw_state_pending",
            "1 while the state file records an apply that has not finished (a killed apply "
            "leaves it set until the next apply or destroy).",
            value=1.0 if snap.owned.pending else 0.0,
        )
        yield GaugeMetricFamily(
            "lvsfw_owned_ipvs_services",
            "IPVS services the state file records as lvsfw's.",
            value=len(snap.owned.services),
        )
        last = snap.last_apply
        if last is None and snap.state_mtime is not None:  # no record: the state file's word
            last = LastApply(snap.state_mtime, not snap.owned.pending)
        if last is None:
            return
        yield GaugeMetricFamily(
            "lvsfw_last_apply_timestamp_seconds",
            "When the last lvsfw apply ended (without its record: the state file's mtime).",
            value=last.time,
        )
        yield GaugeMetricFamily(
            "lvsfw_last_apply_success",
            "1: the last lvsfw apply succeeded; 0: it failed (without its record: 0 while the "
            "state file is pending).",
            value=1.0 if last.ok else 0.0,
        )

    def _ipvs(self, live: dict[Key, ServiceStats]) -> Iterator[Metric]:
        snap = self.snapshot
        wanted = snap.wanted
        names = {b.mark.value: b.name for b in snap.bundles or ()}
        service_doc = "lvsfw's IPVS fwmark service"
        total = _gauge(
            "lvsfw_ipvs_service_real_servers",
            f"Real servers of {service_doc} (configured or live).",
            SERVICE_LABELS,
        )
        up_count = _gauge(
            "lvsfw_ipvs_service_real_servers_up",
            f"Real servers of {service_doc} that are live with a weight above 0.",
            SERVICE_LABELS,
        )
        families: dict[str, _AnyFamily] = {}

        def family(
            name: str, doc: str, labels: Sequence[str], counter: bool = False
        ) -> _AnyFamily:
            if name not in families:
                make = _counter if counter else _gauge
                families[name] = make(name, doc, labels)
            return families[name]

        keys = sorted((snap.owned.services | wanted.keys()) & (live.keys() | wanted.keys()))
        for key in keys:
            labels = [str(key[0]), str(key[1]), names.get(key[1], NO_BUNDLE)]
            service = live.get(key)
            servers = {s.address: s for s in service.servers} if service else {}
            want = wanted[key].service.real_servers if key in wanted else ()
            configured = {r.address for r in want}
            everyone = sorted(configured | servers.keys(), key=lambda a: (a.version, int(a)))
            up = [a for a in everyone if a in servers and servers[a].weight > 0]
            total.add_metric(labels, float(len(everyone)))
            up_count.add_metric(labels, float(len(up)))
            if service is not None:
                self._counters(family, "service", service_doc, labels, service.counters)
            for address in everyone:
                server_labels = [*labels, str(address)]
                family(
                    "lvsfw_ipvs_real_server_up",
                    "1: the real server is in the live IPVS service with a weight above 0.",
                    SERVER_LABELS,
                ).add_metric(server_labels, 1.0 if address in up else 0.0)
                if address in servers:
                    self._server(family, server_labels, servers[address])
        yield total
        yield up_count
        yield from families.values()

    @staticmethod
    def _server(family: _Family, labels: list[str], server: ServerStats) -> None:
        doc = "a live real server of lvsfw's IPVS service"
        family(
            "lvsfw_ipvs_real_server_weight", f"The IPVS weight of {doc}.", SERVER_LABELS
        ).add_metric(labels, float(server.weight))
        family(
            "lvsfw_ipvs_real_server_active_connections",
            f"Active (established) connections of {doc}.",
            SERVER_LABELS,
        ).add_metric(labels, float(server.active))
        family(
            "lvsfw_ipvs_real_server_inactive_connections",
            f"Inactive connections (other states) of {doc}.",
            SERVER_LABELS,
        ).add_metric(labels, float(server.inactive))
        SnapshotCollector._counters(family, "real_server", doc, labels, server.counters)

    @staticmethod
    def _counters(
        family: _Family, what: str, doc: str, labels: list[str], counters: Counters
    ) -> None:
        names = SERVER_LABELS if what == "real_server" else SERVICE_LABELS
        family(
            f"lvsfw_ipvs_{what}_connections",
            f"Connections scheduled to {doc} since it was added.",
            names,
            True,
        ).add_metric(labels, float(counters.connections))
        for unit, inbound, outbound in (
            ("packets", counters.in_packets, counters.out_packets),
            ("bytes", counters.in_bytes, counters.out_bytes),
        ):
            metric = family(
                f"lvsfw_ipvs_{what}_{unit}",
                f"{unit.capitalize()} through {doc} since it was added, by direction.",
                [*names, "direction"],
                True,
            )
            metric.add_metric([*labels, "in"], float(inbound))
            metric.add_metric([*labels, "out"], float(outbound))


class _Family(Protocol):
    """The type of the ``family`` helper of :meth:`SnapshotCollector._ipvs` (for mypy)."""

    def __call__(
        self, name: str, doc: str, labels: Sequence[str], counter: bool = False
    ) -> _AnyFamily: ...


def registry_of(snapshot: Snapshot) -> CollectorRegistry:
    """A fresh registry holding only ``snapshot``'s families (no process metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return registry


def exposition(snapshot: Snapshot) -> str:
    """The Prometheus text exposition format of ``snapshot``."""
    return generate_latest(registry_of(snapshot)).decode("utf-8")


def write_textfile(path: str, snapshot: Snapshot) -> None:
    """Write ``snapshot`` to ``path`` for node_exporter's textfile collector: a temporary file
    in the same directory, renamed over ``path`` (a scrape never sees half a file)."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise LvsfwError(f"--textfile {path}: directory {directory} does not exist")
    write_to_textfile(path, registry_of(snapshot))
