"""What a service file says about one virtual service, before it is joined with the rules."""

from __future__ import annotations

from typing import Optional

import attrs

from lvsfw.enums import Family, IPAddress
from lvsfw.model import VirtualService
from lvsfw.ports import PortRange


@attrs.frozen
class Source:
    """One virtual service as the imported file states it.

    ``mark`` the fwmark of a fwmark service, or None for an IP:port service (its VIPs x ports
    are exactly ``vips`` x ``ports``; a mark is assigned on import). For a fwmark service
    ``vips``/``ports`` are what the file itself says (lvs.cf's ``address`` and ``port``, a
    stand-in when no rule sets the mark; empty for keepalived). ``name`` the service's name
    (lvs.cf virtual, keepalived group) or None, ``where`` ``FILE:LINE``, ``origin`` the head
    of the original block (it becomes a comment over the bundle).
    """

    mark: Optional[int]
    family: Family
    service: VirtualService
    where: str
    name: Optional[str] = None
    vips: tuple[IPAddress, ...] = ()
    ports: tuple[PortRange, ...] = ()
    origin: str = ""


def not_imported(where: str, keyword: str, reason: str) -> str:
    """The warning for one keyword the model cannot hold."""
    return f"{where}: '{keyword}' not imported: {reason}"
