"""The synthetic bundles: 2-4 ports each, some port ranges, some IPv6, unique VIPs and marks."""

from __future__ import annotations

import ipaddress

from lvsfw import Bundle

V4_BASE = int(ipaddress.IPv4Address("10.64.0.0"))
#: The VIP networks the client routes to the director (every VIP lies in one of them).
VIP_NETWORKS = ("10.64.0.0/16", "fd00:64::/64")
#: Port sets, cycled by bundle index: 2, 3, 2 (one a 100-port range) and 4 entries.
PORTS = (
    "tcp:80,443",
    "tcp:80,443,8080",
    "tcp:21,10000-10099",
    "tcp:80,443 udp:53,5353",
)
#: The packet the pps probe sends: UDP to this port of the probe bundle's IPv4 VIP.
PROBE_PORT = 53


def vip4(index: int) -> str:
    """The IPv4 VIP of bundle ``index`` (10.64.0.0 + index)."""
    return str(ipaddress.IPv4Address(V4_BASE + index))


def vip6(index: int) -> str:
    """The IPv6 VIP of bundle ``index``."""
    return f"fd00:64::{index:x}"


def make_bundle(index: int, extra_port: bool = False) -> Bundle:
    """Bundle ``index``: mark index+1; one in ten IPv6-only, one in ten dual-stack.

    ``extra_port`` adds tcp:8443: the "one change" of the incremental measurement.
    """
    kind = index % 10
    vips = (
        [vip6(index)] if kind == 3 else [vip4(index), vip6(index)] if kind == 7 else [vip4(index)]
    )
    ports = PORTS[index % len(PORTS)] + (" tcp:8443" if extra_port else "")
    servers = []
    if any(":" not in v for v in vips):
        servers.append(f"172.16.{(index >> 8) & 255}.{index & 255}")
    if any(":" in v for v in vips):
        servers.append(f"fd00:99::{index:x}")
    return Bundle(
        f"svc{index}",
        vips,
        ports,
        index + 1,
        persistence=300 if index % 2 else None,
        real_servers=servers,
    )


def make_bundles(count: int) -> list[Bundle]:
    """Bundles 0..count-1."""
    return [make_bundle(i) for i in range(count)]


def with_one_change(bundles: list[Bundle], index: int) -> list[Bundle]:
    """``bundles`` with bundle ``index`` gaining a port (all bundles passed, as in real use)."""
    changed = list(bundles)
    changed[index] = make_bundle(index, extra_port=True)
    return changed


def probe_index(count: int) -> int:
    """The bundle the pps probe hits: the highest IPv4 VIP with UDP ports among ``count``.

    The highest IPv4 address sorts last in lvsfw's iptables chain: the worst case for a
    linear chain. With count = 10,000 it is bundle 9999 (10.64.39.15, udp:53).
    """
    for index in range(count - 1, -1, -1):
        if index % 10 != 3 and PORTS[index % len(PORTS)].find(f"udp:{PROBE_PORT}") >= 0:
            return index
    raise ValueError(f"no bundle among {count} carries udp:{PROBE_PORT} on IPv4")
