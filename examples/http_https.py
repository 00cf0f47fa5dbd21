"""The seed case: HTTP and HTTPS of one VIP under one mark, with persistence.

Persistence on the fwmark service sends a client's HTTP and HTTPS connections to the same
real server. Prints what each backend would load; nothing touches the kernel.
"""

from lvsfw import Bundle, RealServer, render

web = Bundle(
    name="web",
    vips=["192.0.2.10"],
    ports="tcp:80,443",
    mark=80,
    scheduler="wlc",
    persistence=300,
    real_servers=[RealServer("10.0.0.11"), RealServer("10.0.0.12", weight=2)],
)

for backend in ("iptables-legacy", "iptables-nft", "nftables", "ipvs", "keepalived"):
    print(f"### {backend}")
    print(render([web], backend))
