"""Checking a set of bundles as a whole: names, ports and marks must not collide."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from lvsfw.enums import Family
from lvsfw.errors import ConflictError, ValidationError
from lvsfw.model import Bundle


def _check_names(bundles: Sequence[Bundle]) -> None:
    seen: dict[str, Bundle] = {}
    for bundle in bundles:
        if bundle.name in seen:
            raise ConflictError(f"two bundles are named {bundle.name!r}", bundle.name)
        seen[bundle.name] = bundle


def _check_ports(bundles: Sequence[Bundle]) -> None:
    """No (family, vip, protocol, port) may be claimed by two bundles.

    One flat sort of (family, address, protocol, first, last, name): intervals of one
    (vip, protocol) end up adjacent and ordered, so an overlap shows between neighbours.
    """
    spans = [
        (vip.version, int(vip), r.protocol, r.first_port, r.last_port, bundle.name)
        for bundle in bundles
        for vip in bundle.vips
        for r in bundle.ports.ranges
    ]
    spans.sort()
    for a, b in zip(spans, spans[1:]):
        if a[:3] == b[:3] and b[3] <= a[4]:
            vip = ipaddress.IPv4Address(a[1]) if a[0] == 4 else ipaddress.IPv6Address(a[1])
            raise ConflictError(
                f"bundles {a[5]!r} and {b[5]!r} both claim {vip} {a[2]} port "
                f"{b[3]}: one VIP:port can carry one mark only",
                a[5],
                b[5],
            )


def _check_marks(bundles: Sequence[Bundle]) -> None:
    """Bundles sharing a mark must share its mask, and per address family its IPVS service
    (IPVS keys a fwmark service on (family, mark): it is one service)."""
    by_mark: dict[int, Bundle] = {}
    by_service: dict[tuple[Family, int], Bundle] = {}
    for bundle in bundles:
        mark = bundle.mark.value
        other = by_mark.setdefault(mark, bundle)
        pairs = [(other, "mask")] if other.mark.mask != bundle.mark.mask else []
        for family in bundle.families:
            first = by_service.setdefault((family, mark), bundle)
            if first is bundle:  # the first with this mark: nothing to compare yet
                continue
            mine, theirs = first.service.for_family(family), bundle.service.for_family(family)
            if mine != theirs:
                pairs.append((first, f"{family} IPVS service"))
            elif mine.keepalived_fields != theirs.keepalived_fields:
                pairs.append((first, f"{family} health checks or failure settings"))
        for first, what in pairs[:1]:
            raise ConflictError(
                f"bundles {first.name!r} and {bundle.name!r} share mark {mark} "
                f"but differ in {what}; one mark is one IPVS service per family",
                first.name,
                bundle.name,
            )


def check_bundles(bundles: Sequence[Bundle]) -> None:
    """Raise :class:`ConflictError` naming both bundles if any two of ``bundles`` collide."""
    for item in bundles:
        if not isinstance(item, Bundle):
            raise ValidationError("bundles", item, "a list of Bundle objects")
    _check_names(bundles)
    _check_ports(bundles)
    _check_marks(bundles)
