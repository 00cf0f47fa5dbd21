"""lvsfw: firewall marks and IPVS fwmark services for LVS directors, kept in agreement."""

from __future__ import annotations

from collections.abc import Iterable

from lvsfw import registry
from lvsfw.cluster import Cluster, Node
from lvsfw.director import Director
from lvsfw.drift import Drift, Report
from lvsfw.enums import Family, Forwarding, Protocol, Scheduler
from lvsfw.errors import (
    BackendUnavailable,
    CommandFailed,
    ConflictError,
    DriftError,
    LvsfwError,
    ParseError,
    ValidationError,
)
from lvsfw.health import HealthCheck, SorryServer
from lvsfw.model import Bundle, FirewallMark, RealServer, VirtualService
from lvsfw.plan import Plan
from lvsfw.ports import PortBundle, PortRange
from lvsfw.rendered import Rendered
from lvsfw.rules import FwmarkService, MarkRule, Specification, specify


def render(bundles: Iterable[Bundle], backend: str) -> str:
    """The text backend ``backend`` would load for ``bundles`` (conflict-checked first)."""
    return registry.get(backend)().render(bundles)


def render_parts(bundles: Iterable[Bundle], backend: str) -> Rendered:
    """:func:`render` as named parts, each one tool's input as is (``str()`` of the result is
    :func:`render`'s text; ``.part(name)`` one part; ``.names`` the part names)."""
    return registry.get(backend)().render_parts(specify(bundles))


__all__ = [
    "BackendUnavailable",
    "Bundle",
    "Cluster",
    "CommandFailed",
    "ConflictError",
    "Director",
    "Drift",
    "DriftError",
    "Family",
    "FirewallMark",
    "Forwarding",
    "FwmarkService",
    "HealthCheck",
    "LvsfwError",
    "MarkRule",
    "Node",
    "ParseError",
    "Plan",
    "PortBundle",
    "PortRange",
    "Protocol",
    "RealServer",
    "Rendered",
    "Report",
    "Scheduler",
    "SorryServer",
    "Specification",
    "ValidationError",
    "VirtualService",
    "render",
    "render_parts",
    "specify",
]
