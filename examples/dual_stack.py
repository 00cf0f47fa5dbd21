"""A dual-stack bundle: an IPv4 and an IPv6 VIP under one mark.

IPVS keys a fwmark service on (family, mark), so this becomes two IPVS services with mark 443,
each with the real servers of its own family.
"""

from lvsfw import Bundle, RealServer, render

web = Bundle(
    name="web-ds",
    vips=["192.0.2.10", "2001:db8::10"],
    ports="tcp:80,443",
    mark=443,
    scheduler="wrr",
    persistence=300,
    persistence_netmask="255.255.255.0",
    persistence_prefix=64,
    real_servers=[
        RealServer("10.0.0.11", weight=3),
        RealServer("10.0.0.12"),
        RealServer("2001:db8:1::11", weight=3),
        RealServer("2001:db8:1::12"),
    ],
)

for backend in ("nftables", "iptables-nft", "ipvs", "keepalived"):
    print(f"### {backend}")
    print(render([web], backend))
