"""Checking a set of bundles as a whole: names, ports and marks must not collide."""

from __future__ import annotations

from collections.abc import Sequence

from lvsfw.enums import IPAddress, Protocol
from lvsfw.errors import ConflictError
from lvsfw.model import Bundle


def _check_names(bundles: Sequence[Bundle]) -> None:
    seen: dict[str, Bundle] = {}
    for bundle in bundles:
        if bundle.name in seen:
            raise ConflictError(f"two bundles are named {bundle.name!r}", bundle.name)
        seen[bundle.name] = bundle


def _check_ports(bundles: Sequence[Bundle]) -> None:
    """No (family, vip, protocol, port) may be claimed by two bundles."""
    spans: dict[tuple[IPAddress, Protocol], list[tuple[int, int, str]]] = {}
    for bundle in bundles:
        for vip in bundle.vips:
            for r in bundle.ports:
                spans.setdefault((vip, r.protocol), []).append(
                    (r.first_port, r.last_port, bundle.name)
                )
    for (vip, protocol), items in spans.items():
        items.sort()
        for (_, last_a, name_a), (first_b, _, name_b) in zip(items, items[1:]):
            if first_b <= last_a:
                raise ConflictError(
                    f"bundles {name_a!r} and {name_b!r} both claim {vip} {protocol} port "
                    f"{first_b}: one VIP:port can carry one mark only",
                    name_a,
                    name_b,
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
