"""The model: conversions, validation messages, junk, and the whole-set conflict checks."""

from __future__ import annotations

import contextlib
import ipaddress

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvsfw import (
    Bundle,
    ConflictError,
    FirewallMark,
    LvsfwError,
    PortBundle,
    PortRange,
    RealServer,
    ValidationError,
    VirtualService,
    specify,
)
from lvsfw.conflicts import check_bundles
from lvsfw.enums import Family, Forwarding, Protocol, Scheduler
from lvsfw.rules import MarkRule, classify, normalize
from tests import strategies


def web(**changes: object) -> Bundle:
    fields: dict[str, object] = {
        "name": "web",
        "vips": ["192.0.2.10"],
        "ports": "tcp:80,443",
        "mark": 80,
        "scheduler": "wlc",
        "persistence": 300,
        "real_servers": [RealServer("10.0.0.11"), RealServer("10.0.0.12", weight=2)],
    }
    fields.update(changes)
    return Bundle(**fields)  # type: ignore[arg-type]


def test_seed_bundle_from_plain_values() -> None:
    b = web()
    assert b.vips == (ipaddress.ip_address("192.0.2.10"),)
    assert b.ports == PortBundle([("tcp", 80, 80), ("tcp", 443, 443)])
    assert b.mark == FirewallMark(80)
    assert b.service.scheduler is Scheduler.WLC
    assert b.persistence == 300
    assert [s.weight for s in b.real_servers] == [1, 2]
    assert b.real_servers[0].forwarding is Forwarding.ROUTE


def test_bundle_from_model_objects_equals_plain_values() -> None:
    service = VirtualService(
        scheduler=Scheduler.WLC,
        persistence=300,
        real_servers=[RealServer("10.0.0.12", weight=2), RealServer("10.0.0.11")],
    )
    b = Bundle("web", "192.0.2.10", PortBundle.from_string("tcp:443,80"), FirewallMark(80), service)
    assert b == web()


def test_ports_parse_merge_and_text() -> None:
    p = PortBundle.from_string(" tcp:21,10000-20000  udp:53;tcp:22,20001 ")
    assert p.ranges == (
        PortRange(Protocol.TCP, 21, 22),
        PortRange(Protocol.TCP, 10000, 20001),
        PortRange(Protocol.UDP, 53, 53),
    )
    assert str(p) == "tcp:21-22,10000-20001 udp:53"
    assert PortBundle.from_string(str(p)) == p
    assert ("tcp", 15000) in p and (Protocol.UDP, 54) not in p


@pytest.mark.parametrize(
    ("build", "field", "value"),
    [
        (lambda: FirewallMark(0), "mark", "0"),
        (lambda: FirewallMark(2**32), "mark", str(2**32)),
        (lambda: FirewallMark(0x100, 0xFF), "mark mask", "0xff"),
        (lambda: PortBundle.from_string("tcp:0"), "first_port", "0"),
        (lambda: PortBundle.from_string("tcp:65536"), "first_port", "65536"),
        (lambda: PortBundle.from_string("tcp:90-80"), "last_port", "80"),
        (lambda: PortBundle.from_string("icmp:80"), "protocol", "icmp"),
        (lambda: PortBundle.from_string(""), "ports", "''"),
        (lambda: PortBundle([]), "ports", "[]"),
        (lambda: web(scheduler="fastest"), "scheduler", "fastest"),
        (lambda: web(vips=["192.0.2.300"]), "vips", "192.0.2.300"),
        (lambda: web(vips=[]), "vips", "[]"),
        (lambda: web(name="web server"), "name", "web server"),
        (lambda: web(name="x" * 29), "name", "x" * 29),
        (lambda: web(real_servers=["2001:db8::1"]), "real_servers", "2001:db8::1"),
        (lambda: web(real_servers=[RealServer("10.0.0.1", weight=70000)]), "weight", "70000"),
        (lambda: web(persistence=0), "persistence", "0"),
        (lambda: web(persistence_netmask="255.0.255.0"), "persistence_netmask", "255.0.255.0"),
        (lambda: web(forwarding="dr"), "Bundle keyword", "forwarding"),
        (lambda: RealServer("10.0.0.1", forwarding="direct"), "forwarding", "direct"),
    ],
)
def test_bad_values_name_field_value_and_what_is_allowed(
    build: object, field: str, value: str
) -> None:
    with pytest.raises(ValidationError) as info:
        build()  # type: ignore[operator]
    assert info.value.field == field
    message = str(info.value)
    assert message.startswith(f"{field}: ")
    assert value in message
    assert "expected" in message


def test_v6_real_server_behind_dual_stack_bundle_is_fine() -> None:
    b = web(vips=["192.0.2.10", "2001:db8::10"], real_servers=["10.0.0.11", "2001:db8::11"])
    spec = specify([b])
    by_family = {s.family: s for s in spec.services}
    assert set(by_family) == {Family.IPV4, Family.IPV6}
    assert {s.mark for s in spec.services} == {80}
    assert [str(r.address) for r in by_family[Family.IPV6].service.real_servers] == ["2001:db8::11"]


def test_conflict_same_vip_port_in_two_bundles_names_both() -> None:
    a = web()
    b = web(name="api", ports="tcp:8000-9000,443", mark=81)
    with pytest.raises(ConflictError) as info:
        check_bundles([a, b])
    assert "'web'" in str(info.value) and "'api'" in str(info.value)
    assert set(info.value.names) == {"web", "api"}


def test_conflict_shared_mark_with_different_service() -> None:
    a = web()
    b = web(name="other", vips="192.0.2.11", scheduler="rr")
    with pytest.raises(ConflictError, match="share mark 80"):
        specify([a, b])


def test_shared_mark_same_service_is_one_ipvs_service() -> None:
    a = web()
    b = web(name="web-tls", vips="192.0.2.11", ports="tcp:8443")
    spec = specify([a, b])
    assert len(spec.services) == 1
    assert len(spec.rules) == 3


def test_duplicate_names_conflict() -> None:
    with pytest.raises(ConflictError, match="named 'web'"):
        specify([web(), web(vips="192.0.2.99", mark=99)])


def test_no_conflict_between_families_or_protocols() -> None:
    a = web(ports="tcp:53", mark=53)
    b = web(name="dns-udp", ports="udp:53", mark=54)
    check_bundles([a, b])


@given(strategies.bundles())
def test_specification_marks_every_port_and_nothing_else(bundles: list[Bundle]) -> None:
    spec = specify(bundles)
    rules = normalize(spec.rules)
    for b in bundles:
        for vip in b.vips:
            for r in b.ports:
                for port in {r.first_port, (r.first_port + r.last_port) // 2, r.last_port}:
                    got = classify(rules, Family.of(vip), vip, r.protocol, port)
                    assert got == (b.mark.value, b.mark.mask)
            if b.ports.ranges[0].first_port > 1:
                outside = b.ports.ranges[0].first_port - 1
                proto = b.ports.ranges[0].protocol
                if (proto, outside) not in b.ports:
                    assert classify(rules, Family.of(vip), vip, proto, outside) is None
    # both ways: every rule belongs to a bundle that owns that VIP, port and mark
    for rule in spec.rules:
        owner = next(b for b in bundles if b.name == spec.owners[rule])
        assert rule.vip in owner.vips and rule.mark == owner.mark.value
        assert (rule.protocol, rule.first_port) in owner.ports
    assert {(s.family, s.mark) for s in spec.services} == {
        (Family.of(v), b.mark.value) for b in bundles for v in b.vips
    }


@given(
    st.lists(
        st.builds(
            MarkRule,
            st.just(Family.IPV4),
            strategies.ipv4,
            strategies.protocols,
            st.integers(1, 100),
            st.integers(100, 200),
            st.integers(1, 3),
        )
    )
)
def test_normalize_preserves_classification(rules: list[MarkRule]) -> None:
    # a rule set without overlaps of different marks is what normalize is for
    seen: dict[tuple[object, ...], int] = {}
    unique = []
    for r in rules:
        key = (r.vip, r.protocol)
        if seen.setdefault(key, r.mark) == r.mark:
            unique.append(r)
    merged = normalize(unique)
    for r in unique:
        for port in (r.first_port, r.last_port):
            assert classify(merged, r.family, r.vip, r.protocol, port) == (r.mark, r.mask)
    assert len(merged) <= len(set(unique))


constructors = [
    FirewallMark,
    FirewallMark.parse,
    PortBundle,
    PortBundle.from_string,
    RealServer,
    RealServer.parse,
    lambda v: RealServer("10.0.0.1", weight=v),
    lambda v: RealServer("10.0.0.1", forwarding=v),
    lambda v: RealServer("10.0.0.1", upper_threshold=v),
    lambda v: VirtualService(scheduler=v),
    lambda v: VirtualService(persistence=v),
    lambda v: VirtualService(persistence_netmask=v),
    lambda v: VirtualService(persistence_prefix=v),
    lambda v: VirtualService(real_servers=v),
    lambda v: Bundle(v, "192.0.2.1", "tcp:80", 1),
    lambda v: Bundle("b", v, "tcp:80", 1),
    lambda v: Bundle("b", "192.0.2.1", v, 1),
    lambda v: Bundle("b", "192.0.2.1", "tcp:80", v),
    lambda v: Bundle("b", "192.0.2.1", "tcp:80", 1, v),
    lambda v: Bundle("b", "192.0.2.1", "tcp:80", 1, real_servers=v),
]


@pytest.mark.parametrize("index", range(len(constructors)))
@given(value=strategies.junk)
def test_junk_into_constructors_raises_only_lvsfw_errors(index: int, value: object) -> None:
    with contextlib.suppress(LvsfwError):
        constructors[index](value)


@given(strategies.junk_text)
def test_junk_port_text_raises_only_lvsfw_errors(text: str) -> None:
    try:
        PortBundle.from_string(text)
    except LvsfwError as exc:
        assert str(exc)


def test_model_is_frozen() -> None:
    b = web()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        b.name = "other"  # type: ignore[misc]
    assert attrs.evolve(b, name="other").name == "other"


@pytest.mark.parametrize("address", ["fe80::1%lo", "fe80::1%lo\n-F PREROUTING\n#", "2001:db8::1%"])
def test_ipv6_zones_are_refused(address: str) -> None:
    """Text after '%' would reach rule files; a VIP or real server has no zone anyway."""
    with pytest.raises(ValidationError, match="no %zone"):
        web(vips=[address])
    with pytest.raises(ValidationError):
        RealServer(address)
    with pytest.raises(ValidationError):
        RealServer(ipaddress.IPv6Address("fe80::1%lo"))


@pytest.mark.parametrize("name", ["web\n", "web\nx", "\nweb"])
def test_names_with_newlines_are_refused(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        web(name=name)
    assert info.value.field == "name"


def test_conflict_between_families_of_a_shared_mark() -> None:
    """v4-only, v6-only and dual-stack bundles on one mark: every (family, mark) is checked."""
    a = web(name="a", vips="192.0.2.1", real_servers=[])
    b = web(name="b", vips="2001:db8::1", scheduler="rr", real_servers=[])
    c = web(name="c", vips=["192.0.2.3", "2001:db8::3"], real_servers=[])
    with pytest.raises(ConflictError) as info:
        check_bundles([a, b, c])
    assert set(info.value.names) == {"b", "c"}
    check_bundles([a, c])


def test_specify_refuses_what_is_not_a_bundle() -> None:
    with pytest.raises(ValidationError, match="Bundle"):
        specify(["web"])  # type: ignore[list-item]
