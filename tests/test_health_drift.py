"""verify when keepalived owns IPVS (issue 11): a configured real server a health check took
out is *down*, not drift; what keepalived holds otherwise must be what lvsfw configured."""

from __future__ import annotations

import ipaddress

import attrs
import pytest

from lvsfw import Bundle
from lvsfw.drift import Down, health_drift
from lvsfw.enums import Family, Scheduler
from lvsfw.model import RealServer
from lvsfw.rules import FwmarkService, specify

WEB = Bundle("web", ["192.0.2.10"], "tcp:80,443", 80, persistence=300,
             real_servers=["10.0.0.11", "10.0.0.12"],
             health={"check": "http", "port": 80})  # fmt: skip
SORRY = Bundle("web", ["192.0.2.10"], "tcp:80,443", 80, real_servers=["10.0.0.11"],
               sorry_server="10.0.0.99", health={"check": "tcp", "port": 80})  # fmt: skip
INHIBIT = Bundle("web", ["192.0.2.10"], "tcp:80", 80, real_servers=["10.0.0.11", "10.0.0.12"],
                 inhibit_on_failure=True, health={"check": "tcp", "port": 80})  # fmt: skip


def live(bundle: Bundle, *servers: str, weights: dict[str, int] | None = None,
         **service: object) -> list[FwmarkService]:  # fmt: skip
    """The bundle's service as keepalived would hold it with only ``servers`` in it."""
    (want,) = specify([bundle]).services
    found = [RealServer(s, weight=(weights or {}).get(s, 1)) for s in servers]
    vs = attrs.evolve(want.service, real_servers=found, **service)
    return [attrs.evolve(want, service=vs)]


def check(bundle: Bundle, table: list[FwmarkService]) -> tuple[list[str], list[Down]]:
    drift, down = health_drift([bundle], specify([bundle]), table, {(Family.IPV4, 80)})
    return [d.kind for d in drift], down


def test_all_up_is_clean() -> None:
    assert check(WEB, live(WEB, "10.0.0.11", "10.0.0.12")) == ([], [])


def test_an_absent_server_is_down_not_drift() -> None:
    kinds, down = check(WEB, live(WEB, "10.0.0.12"))
    assert kinds == []
    assert down == [Down("web", Family.IPV4, 80, ipaddress.ip_address("10.0.0.11"))]
    assert "down by health check" in str(down[0]) and "10.0.0.11" in str(down[0])


def test_every_server_down_without_a_sorry_server_is_drift() -> None:
    kinds, down = check(WEB, live(WEB))
    assert kinds == ["service-down"] and len(down) == 2


def test_the_sorry_server_standing_in_is_fine() -> None:
    kinds, down = check(SORRY, live(SORRY, "10.0.0.99"))
    assert kinds == [] and [str(d.address) for d in down] == ["10.0.0.11"]


def test_inhibited_weight_zero_is_down() -> None:
    table = live(INHIBIT, "10.0.0.11", "10.0.0.12", weights={"10.0.0.11": 0})
    kinds, down = check(INHIBIT, table)
    assert kinds == [] and [str(d.address) for d in down] == ["10.0.0.11"]


@pytest.mark.parametrize(
    ("table", "kind"),
    [
        ([], "service-missing"),
        (live(WEB, "10.0.0.11", "10.0.0.12", scheduler=Scheduler("rr")), "service-changed"),
        (live(WEB, "10.0.0.11", "10.0.0.12", persistence=None), "service-changed"),
        (live(WEB, "10.0.0.11", "10.0.0.13"), "service-changed"),  # a server nobody wants
        (live(WEB, "10.0.0.11", "10.0.0.12", weights={"10.0.0.12": 7}), "service-changed"),
    ],
)
def test_what_keepalived_holds_otherwise_is_drift(table: list[FwmarkService], kind: str) -> None:
    kinds, _ = check(WEB, table)
    assert kind in kinds


def test_a_family_without_real_servers_is_not_missing() -> None:
    """keepalived ignores a virtual_server with no real server: the IPv6 half of a bundle
    whose real servers are all IPv4 is never built, and that is not drift."""
    dual = Bundle("web", ["192.0.2.10", "2001:db8::10"], "tcp:80", 80, real_servers=["10.0.0.11"],
                  health={"check": "tcp", "port": 80})  # fmt: skip
    four = [s for s in specify([dual]).services if s.family == Family.IPV4]
    drift, down = health_drift([dual], specify([dual]), four, set())
    assert (drift, down) == ([], [])
