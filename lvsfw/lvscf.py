"""Piranha's ``lvs.cf`` reader under its first name; it lives in :mod:`lvsfw.importers.lvscf`."""

from __future__ import annotations

from lvsfw.importers.lvscf import NETWORKS, _lvs_tree, parse_lvs_cf
from lvsfw.importers.source import Source

__all__ = ["NETWORKS", "Source", "_lvs_tree", "parse_lvs_cf"]
