"""``firewall="auto"``: pick the packet filter the host already uses for mangle."""

from __future__ import annotations

from typing import Optional

from lvsfw.backends.nftables import Context
from lvsfw.command import run
from lvsfw.errors import BackendUnavailable, CommandFailed, ConflictError, LvsfwError
from lvsfw.netns import call_in_netns, legacy_tables

OWN_NFT_TABLE = ("inet", "lvsfw")


def _legacy_mangle_in_use(netns: Optional[str]) -> bool:
    tables = legacy_tables(netns)
    text = ""
    for family, save in (("ip", "iptables-legacy-save"), ("ip6", "ip6tables-legacy-save")):
        if (family, "mangle") not in tables:  # never ask save: it would create the table
            continue
        try:
            text += run([save, "-t", "mangle"], netns=netns)
        except (BackendUnavailable, CommandFailed):  # not installed, or no x_tables
            continue
    return any(line.startswith("-A ") for line in text.splitlines())


def _nft_tables(netns: Optional[str]) -> list[tuple[str, str]]:
    """(family, name) of every nftables table in ``netns`` (none when libnftables is absent)."""

    def list_tables() -> list[tuple[str, str]]:
        command = {"nftables": [{"list": {"tables": None}}]}
        listed = Context().json(command, ("nft", "-j", "list", "tables"))
        items = listed.get("nftables", []) if isinstance(listed, dict) else []
        return [(i["table"]["family"], i["table"]["name"]) for i in items if "table" in i]

    try:
        return call_in_netns(netns, list_tables)
    except LvsfwError:  # no libnftables, or no nf_tables in the kernel
        return []


def detect_firewall(netns: Optional[str] = None) -> str:
    """The packet-filter backend this host uses: iptables-legacy, iptables-nft or nftables.

    Legacy iptables rules in mangle mean iptables-legacy; an nftables ``mangle`` table made by
    iptables-nft means iptables-nft; otherwise (including lvsfw's own table) nftables. Both
    legacy mangle rules and nft mangle/prerouting tables at once is refused.
    """
    legacy = _legacy_mangle_in_use(netns)
    tables = [t for t in _nft_tables(netns) if t != OWN_NFT_TABLE]
    nft_mangle = [t for t in tables if t in {("ip", "mangle"), ("ip6", "mangle")}]  # iptables-nft
    if legacy and nft_mangle:
        raise ConflictError(
            "firewall='auto': both iptables-legacy and nftables (table "
            f"{nft_mangle[0][0]} mangle) hold mangle rules; pick firewall= explicitly"
        )
    if legacy:
        return "iptables-legacy"
    if nft_mangle:
        return "iptables-nft"
    return "nftables"
