"""The mark-rule scanners under their first name; they live in :mod:`lvsfw.importers`
(:mod:`~lvsfw.importers.iptables`, :mod:`~lvsfw.importers.nft`)."""

from __future__ import annotations

from lvsfw.importers.found import FULL, FoundRule, Scan
from lvsfw.importers.iptables import scan_iptables
from lvsfw.importers.nft import scan_nft
from lvsfw.importers.scanning import scan

__all__ = ["FULL", "FoundRule", "Scan", "scan", "scan_iptables", "scan_nft"]
