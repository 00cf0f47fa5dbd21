"""FTP: the control port 21 and the passive data range share one mark, with persistence.

The data connection must reach the real server that holds the control connection, so both
ports are one fwmark service with persistence. NAT forwarding to two real servers.
"""

from lvsfw import Bundle, RealServer, render

ftp = Bundle(
    name="ftp",
    vips="192.0.2.21",
    ports="tcp:21,10000-20000",
    mark=21,
    scheduler="rr",
    persistence=900,
    real_servers=[
        RealServer("10.0.0.21", forwarding="masq"),
        RealServer("10.0.0.22", forwarding="masq"),
    ],
)

for backend in ("nftables", "iptables-nft", "ipvs"):
    print(f"### {backend}")
    print(render([ftp], backend))
