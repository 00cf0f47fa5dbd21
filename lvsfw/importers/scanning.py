"""Both rule scanners over one dump, and the live kernel's rules (``--live``).

A dump may hold ``iptables-save``, ``ipset save`` and ``nft list ruleset`` output one after the
other; a rule found by both scanners (or twice) counts once.
"""

from __future__ import annotations

from typing import Optional

from lvsfw.command import run
from lvsfw.errors import BackendUnavailable, CommandFailed, LvsfwError
from lvsfw.importers.found import Scan
from lvsfw.importers.iptables import scan_iptables
from lvsfw.importers.nft import scan_nft
from lvsfw.netns import legacy_tables

#: Tools that print the live rules for ``--live``.
LIVE_DUMPS = (
    ("nft", "list", "ruleset"),
    ("iptables-legacy-save", "-t", "mangle"),
    ("ip6tables-legacy-save", "-t", "mangle"),
    ("iptables-nft-save", "-t", "mangle"),
    ("ip6tables-nft-save", "-t", "mangle"),
)


def scan(
    text: str, source: str, quiet_xt: bool = False, ipsets: Optional[tuple[str, str]] = None
) -> Scan:
    """Both scans over ``text`` (``ipsets``: see :func:`scan_iptables`)."""
    found = Scan()
    found.extend(scan_iptables(text, source, ipsets))
    found.extend(scan_nft(text, source, quiet_xt))
    return found


def read_live(netns: Optional[str] = None) -> Scan:
    """The mark rules of the live kernel (``nft list ruleset`` and every ``*-save``, with
    ``ipset save`` for the sets a ``-j SET --map-mark`` rule classifies through)."""
    found = Scan()
    try:
        ipsets = (run(["ipset", "save"], netns=netns), "live ipset save")
    except LvsfwError:  # no ipset program or kernel support: no set can classify
        ipsets = ("", "live ipset save")
    tables = legacy_tables(netns)
    for argv in LIVE_DUMPS:
        family = "ip6" if argv[0].startswith("ip6") else "ip"
        if "legacy" in argv[0] and (family, "mangle") not in tables:
            continue  # asking iptables-legacy-save would create the table
        try:
            text = run(list(argv), netns=netns)
        except BackendUnavailable:
            continue
        except CommandFailed as exc:
            found.warnings.append(f"{argv[0]}: could not read the rules: {exc.stderr.strip()}")
            continue
        found.extend(scan(text, f"live {argv[0]}", quiet_xt=True, ipsets=ipsets))
    return found
