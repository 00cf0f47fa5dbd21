"""The nf_tables ruleset generation of the current network namespace, read over netlink.

The kernel bumps a per-namespace generation id by exactly one on every committed nf_tables
transaction (any table, any tool: nft, iptables-nft, firewalld...); dry runs and failed
batches leave it alone. Paired with the namespace's cookie (``SO_NETNS_COOKIE``: unique per
namespace for the life of the boot, never reused) it names one exact state of the ruleset, so
a cache of what lvsfw itself committed is valid exactly while this pair is unchanged.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Optional

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NFTA_GEN_ID = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
SO_NETNS_COOKIE = 71
_HEADER = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")

#: (namespace cookie, generation id)
Generation = tuple[int, int]


def _attrs(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while len(data) >= 4:
        length, kind = struct.unpack_from("=HH", data)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[4:length]
        data = data[(length + 3) & ~3 :]
    return found


def generation() -> Optional[Generation]:
    """(cookie, generation id) of the calling thread's namespace; None when unknown."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
            cookie = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))
            kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
            body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
            seq = int.from_bytes(os.urandom(4), "little")
            sock.send(_HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body)
            sock.settimeout(1.0)
            reply = sock.recv(4096)
    except OSError:
        return None
    while len(reply) >= _HEADER.size:
        length, kind, _, rseq, _ = _HEADER.unpack_from(reply)
        if length < _HEADER.size:
            return None
        if rseq == seq and kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
            found = _attrs(reply[_HEADER.size + _NFGEN.size : length])
            if len(found.get(NFTA_GEN_ID, b"")) == 4:
                return (cookie[0], struct.unpack(">I", found[NFTA_GEN_ID])[0])
        reply = reply[(length + 3) & ~3 :]
    return None
