"""What the ``lvsfw`` command prints: JSON forms of rules, services and plans; text tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Optional

import attrs

from lvsfw.enums import Family, IPAddress
from lvsfw.model import RealServer
from lvsfw.plan import Plan
from lvsfw.ports import ports_text as range_text
from lvsfw.rules import FwmarkService, MarkRule


def ports_text(rule: MarkRule) -> str:
    """The ports of ``rule``: ``"80"`` or ``"1000-2000"``."""
    return range_text(rule.first_port, rule.last_port)


def rule_json(rule: MarkRule) -> dict[str, object]:
    """A mark rule as JSON."""
    return {
        "family": str(rule.family),
        "vip": str(rule.vip),
        "protocol": str(rule.protocol),
        "ports": ports_text(rule),
        "mark": rule.mark,
        "mask": rule.mask,
    }


#: Per (family, mark) of a service, the addresses of its real servers that are up (keepalived
#: health checks); None where lvsfw itself holds IPVS (no up/down to tell).
Up = Optional[Mapping[tuple[Family, int], frozenset[IPAddress]]]


def _state(service: FwmarkService, server: RealServer, up: Up) -> dict[str, str]:
    if up is None:
        return {}
    live = up.get((service.family, service.mark), frozenset())
    return {"state": "up" if server.address in live else "down"}


def service_json(service: FwmarkService, up: Up = None) -> dict[str, object]:
    """An IPVS fwmark service as JSON (with ``up``: each real server's ``state``)."""
    vs = service.service
    return {
        "family": str(service.family),
        "mark": service.mark,
        "scheduler": str(vs.scheduler),
        "persistence": vs.persistence,
        "persistence_netmask": vs.persistence_netmask,
        "persistence_prefix": vs.persistence_prefix,
        "real_servers": [
            {**attrs.asdict(s), "address": str(s.address), "forwarding": str(s.forwarding),
             **_state(service, s, up)}
            for s in vs.real_servers
        ],
    }


def services_table(services: Iterable[FwmarkService], up: Up = None) -> str:
    """The text table of ``services`` ``lvsfw show`` prints (with ``up``: up/down)."""
    def servers(s: FwmarkService) -> str:
        return ", ".join(
            " ".join([f"{r.address} {r.forwarding} w{r.weight}", *_state(s, r, up).values()])
            for r in s.service.real_servers
        )

    rows = ((s.mark, s.family, s.service.scheduler, s.service.persistence or "-",
             servers(s) or "-") for s in services)  # fmt: skip
    return table(("MARK", "FAMILY", "SCHEDULER", "PERSISTENCE", "REAL SERVERS"), rows)


def plan_json(plan: Plan) -> dict[str, object]:
    """A plan as JSON: ``changes`` is False when there is nothing to do."""
    data: dict[str, object] = {"firewall": plan.firewall, "changes": bool(plan)}
    data["repair"] = list(getattr(plan, "repair", ()))
    for name in ("add_rules", "remove_rules"):
        data[name] = [rule_json(r) for r in sorted(getattr(plan, name))]
    for name in ("add_services", "change_services", "remove_services"):
        data[name] = [service_json(s) for s in sorted(getattr(plan, name))]
    return data


def summary(plan: Plan) -> str:
    add = len(plan.add_rules) + len(plan.add_services)
    change = len(plan.change_services)
    remove = len(plan.remove_rules) + len(plan.remove_services)
    return f"{add} to add, {change} to change, {remove} to remove"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain text table with left-aligned columns."""
    cells = [list(map(str, headers)), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
