"""DNS over UDP and TCP on port 53: one mark, one IPVS service for both protocols."""

from lvsfw import Bundle, RealServer, render

dns = Bundle(
    name="dns",
    vips=["192.0.2.53"],
    ports="udp:53 tcp:53",
    mark=53,
    scheduler="sh",
    real_servers=[RealServer("10.0.0.53"), RealServer("10.0.0.54")],
)

for backend in ("nftables", "iptables-legacy", "ipvs"):
    print(f"### {backend}")
    print(render([dns], backend))
