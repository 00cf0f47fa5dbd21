"""Checking a set of bundles as a whole: names, ports and marks must not collide."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from lvsfw.errors import ConflictError
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
    """Bundles sharing a mark must share mask and IPVS service (it is one service)."""
    by_mark: dict[int, Bundle] = {}
    for bundle in bundles:
        other = by_mark.setdefault(bundle.mark.value, bundle)
        if other is bundle:
            continue
        if other.mark.mask != bundle.mark.mask:
            what = "mask"
        elif any(
            other.service.for_family(f) != bundle.service.for_family(f)
            for f in set(other.families) & set(bundle.families)
        ):
            what = "IPVS service"
        else:
            continue
        raise ConflictError(
            f"bundles {other.name!r} and {bundle.name!r} share mark {bundle.mark.value} "
            f"but differ in {what}; one mark is one IPVS service per family",
            other.name,
            bundle.name,
        )


def check_bundles(bundles: Sequence[Bundle]) -> None:
    """Raise :class:`ConflictError` naming both bundles if any two of ``bundles`` collide."""
    _check_names(bundles)
    _check_ports(bundles)
    _check_marks(bundles)
