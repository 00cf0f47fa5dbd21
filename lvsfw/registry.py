"""The backend registry: a plain dict, filled from the ``lvsfw.backends`` entry points."""

from __future__ import annotations

from importlib import import_module, metadata

from lvsfw.backends.base import Backend, PacketFilter, ServiceHalf
from lvsfw.errors import BackendUnavailable, ValidationError

GROUP = "lvsfw.backends"

#: The backends lvsfw ships, used when its own entry points are not installed (a source tree).
BUILTIN = {
    "iptables-legacy": "lvsfw.backends.iptables:IptablesLegacy",
    "iptables-nft": "lvsfw.backends.iptables:IptablesNft",
    "nftables": "lvsfw.backends.nftables:Nftables",
    "ipvs": "lvsfw.backends.ipvs:Ipvs",
    "keepalived": "lvsfw.backends.karun:KeepalivedRuntime",
}


def _targets() -> dict[str, str]:
    targets = dict(BUILTIN)
    found = metadata.entry_points()
    if hasattr(found, "select"):
        group = list(found.select(group=GROUP))
    else:  # Python 3.9 returns a dict of groups
        group = list(found.get(GROUP, ()))
    targets.update({ep.name: ep.value for ep in group})
    return targets


def names() -> list[str]:
    """Every backend name known, built in or from a plugin."""
    return sorted(_targets())


def get(name: str) -> type[Backend]:
    """The backend class registered as ``name``."""
    target: str | None = _targets().get(name) if isinstance(name, str) else None
    if target is None:
        raise ValidationError("backend", name, f"one of {', '.join(names())}")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise BackendUnavailable(f"backend {name!r} ({target}) cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendUnavailable(f"backend {name!r} ({target}) is not an lvsfw Backend")
    return cls


def packet_filter(name: str, netns: str | None = None) -> PacketFilter:
    """An instance of the packet-filter backend ``name`` in ``netns``."""
    cls = get(name)
    if not issubclass(cls, PacketFilter):
        raise ValidationError("firewall", name, "a packet-filter backend")
    return cls(netns=netns)


def service_half_class(name: str) -> type[ServiceHalf]:
    """The live service backend (IPVS half) class registered as ``name``."""
    cls = get(name)
    if not issubclass(cls, ServiceHalf):
        raise ValidationError("ipvs", name, "a live service backend such as 'ipvs'")
    return cls


def service_half(name: str, netns: str | None = None) -> ServiceHalf:
    """An instance of the live service backend ``name`` (the IPVS half) in ``netns``."""
    return service_half_class(name)(netns=netns)
