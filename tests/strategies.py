"""Hypothesis strategies shared by the test modules: valid, conflict-free sets of bundles."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from lvsfw import Bundle, FirewallMark, PortRange, RealServer, VirtualService
from lvsfw.enums import Forwarding, Protocol, Scheduler

names = st.from_regex(r"\A[A-Za-z0-9_.-]{1,28}\Z")
ipv4 = st.integers(min_value=1, max_value=2**32 - 2).map(ipaddress.IPv4Address)
ipv6 = st.integers(min_value=1, max_value=2**128 - 2).map(ipaddress.IPv6Address)
ports = st.integers(min_value=1, max_value=65535)
protocols = st.sampled_from(list(Protocol))


@st.composite
def port_ranges(draw: st.DrawFn) -> PortRange:
    """One protocol range; mostly single ports, sometimes a span."""
    first = draw(ports)
    last = draw(st.one_of(st.just(first), st.integers(first, min(65535, first + 20000))))
    return PortRange(draw(protocols), first, last)


marks = st.builds(FirewallMark, st.integers(min_value=1, max_value=2**32 - 1))


@st.composite
def masked_marks(draw: st.DrawFn) -> FirewallMark:
    """A mark with a narrower mask covering its value."""
    value = draw(st.integers(min_value=1, max_value=2**32 - 1))
    extra = draw(st.integers(min_value=0, max_value=2**32 - 1))
    return FirewallMark(value, value | extra)


def real_servers(family: int) -> st.SearchStrategy[RealServer]:
    """Real servers of one address family with random settings (a lower threshold is never
    above the upper one: the kernel refuses that, and so does RealServer)."""
    thresholds = st.integers(0, 2**31 - 1).flatmap(
        lambda upper: st.tuples(st.just(upper), st.integers(0, upper))
    )
    return st.builds(
        lambda address, weight, forwarding, limits: RealServer(
            address, weight, forwarding, upper_threshold=limits[0], lower_threshold=limits[1]
        ),
        ipv4 if family == 4 else ipv6,
        weight=st.integers(0, 65535),
        forwarding=st.sampled_from(list(Forwarding)),
        limits=thresholds,
    )


@st.composite
def services(draw: st.DrawFn, families: frozenset[int]) -> VirtualService:
    """A virtual service whose real servers belong to ``families``."""
    servers = []
    for family in sorted(families):
        servers += draw(st.lists(real_servers(family), max_size=3, unique_by=lambda s: s.address))
    return VirtualService(
        scheduler=draw(st.sampled_from(list(Scheduler))),
        persistence=draw(st.one_of(st.none(), st.integers(1, 86400))),
        persistence_netmask=draw(st.integers(0, 32)),
        persistence_prefix=draw(st.integers(1, 128)),
        real_servers=servers,
    )


@st.composite
def bundles(draw: st.DrawFn, max_size: int = 5, masks: bool = True) -> list[Bundle]:
    """A conflict-free list of bundles: distinct names, marks and VIPs.

    Distinct VIPs per bundle make (family, vip, protocol, port) collisions impossible; the
    VIPs are drawn from a small pool so that several bundles still share a rule set's maps.
    """
    count = draw(st.integers(1, max_size))
    all_vips = draw(
        st.lists(st.one_of(ipv4, ipv6), min_size=count, max_size=count * 3, unique=True)
    )
    mark_values = draw(
        st.lists(st.integers(1, 2**32 - 1), min_size=count, max_size=count, unique=True)
    )
    bundle_names = draw(st.lists(names, min_size=count, max_size=count, unique=True))
    result = []
    for i in range(count):
        vips = all_vips[i::count]
        families = frozenset(v.version for v in vips)
        mark = FirewallMark(mark_values[i])
        if masks and draw(st.booleans()) and draw(st.booleans()):
            extra = draw(st.integers(0, 2**32 - 1))
            mark = FirewallMark(mark_values[i], mark_values[i] | extra)
        result.append(
            Bundle(
                name=bundle_names[i],
                vips=vips,
                ports=draw(st.lists(port_ranges(), min_size=1, max_size=6)),
                mark=mark,
                service=draw(services(families)),
            )
        )
    return result


#: Junk thrown at every constructor and parser: nothing but LvsfwError may escape.
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(),
    st.binary(),
    st.lists(st.one_of(st.integers(), st.text()), max_size=4),
    st.tuples(st.text(), st.integers()),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
junk_text = st.one_of(
    st.text(),
    st.text(alphabet="tcpudsx:0123456789,-; \n/"),
    st.lists(
        st.sampled_from(
            [
                "-A",
                "-a",
                "-f",
                "80",
                "-r",
                "::",
                "tcp",
                ":",
                "{",
                "}",
                "\n",
                "table",
                "inet",
                "lvsfw",
                "map",
                "0x50",
                "-j",
                "MARK",
                "*mangle",
                "COMMIT",
                "LVSFW-PREROUTING",
                "--dports",
                "elements",
                "=",
            ]
        ),
        max_size=30,
    ).map(" ".join),
)
