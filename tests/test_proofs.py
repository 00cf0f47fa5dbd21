"""The proofs across backends: both halves agree, and the packet filters agree with each other."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lvsfw import Family, Protocol, registry, specify
from lvsfw.backends.base import PacketFilter, ServiceBackend
from lvsfw.enums import IPAddress
from lvsfw.model import Bundle
from lvsfw.rules import MarkRule, classify
from tests import strategies

PACKET_FILTERS = ("iptables-legacy", "iptables-nft", "nftables")

Packet = tuple[Family, IPAddress, Protocol, int]


def parsed_rules(name: str, bundles: list[Bundle]) -> frozenset[MarkRule]:
    """What backend ``name`` renders for ``bundles``, parsed back from its own text."""
    backend = registry.get(name)()
    assert isinstance(backend, PacketFilter)
    return backend.parse(backend.render(bundles))


def sample_packets(bundles: list[Bundle], extra: list[Packet]) -> list[Packet]:
    """Packets at and just outside every range edge and middle, plus ``extra``."""
    packets = list(extra)
    for bundle in bundles:
        for vip in bundle.vips:
            for r in bundle.ports:
                for port in (
                    r.first_port - 1,
                    r.first_port,
                    (r.first_port + r.last_port) // 2,
                    r.last_port,
                    r.last_port + 1,
                ):
                    if 1 <= port <= 65535:
                        for proto in Protocol:
                            packets.append((Family.of(vip), vip, proto, port))
    return packets


@given(strategies.bundles())
def test_every_service_has_a_mark_rule_and_every_mark_a_service(bundles: list[Bundle]) -> None:
    ipvs = registry.get("ipvs")()
    assert isinstance(ipvs, ServiceBackend)
    services = ipvs.parse(ipvs.render(bundles))
    assert services == specify(bundles).services
    served = {(s.family, s.mark) for s in services}
    for name in PACKET_FILTERS:
        marked = {(r.family, r.mark) for r in parsed_rules(name, bundles)}
        assert marked == served, name


packets = st.tuples(
    st.sampled_from(list(Family)),
    st.one_of(strategies.ipv4, strategies.ipv6),
    strategies.protocols,
    strategies.ports,
).filter(lambda p: (p[0] is Family.IPV4) == (p[1].version == 4))


@given(strategies.bundles(), st.lists(packets, max_size=20))
def test_packet_filters_classify_sampled_packets_identically(
    bundles: list[Bundle], extra: list[Packet]
) -> None:
    spec = specify(bundles)
    per_backend = {name: parsed_rules(name, bundles) for name in PACKET_FILTERS}
    for packet in sample_packets(bundles, extra):
        expected = classify(spec.rules, *packet)
        for name, rules in per_backend.items():
            assert classify(rules, *packet) == expected, (name, packet)
