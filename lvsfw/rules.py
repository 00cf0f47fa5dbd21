"""The backend-neutral specification of a set of bundles.

:func:`specify` expands bundles into :class:`MarkRule` s (packet-filter half) and
:class:`FwmarkService` s (IPVS half). Every backend is proven against this expansion: what a
backend renders, parsed back, must equal it.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from lvsfw.conflicts import check_bundles
from lvsfw.enums import Family, IPAddress, Protocol, address_key
from lvsfw.model import Bundle, VirtualService


@attrs.frozen(order=True)
class MarkRule:
    """Packets of ``family`` to ``vip`` on ``protocol`` ports first..last get ``mark``/``mask``."""

    family: Family
    vip: IPAddress = attrs.field(order=address_key)
    protocol: Protocol
    first_port: int
    last_port: int
    mark: int
    mask: int = 0xFFFFFFFF

    def matches(self, family: Family, address: IPAddress, protocol: Protocol, port: int) -> bool:
        """Whether a packet with these fields is classified by this rule."""
        return (
            family == self.family
            and address == self.vip
            and protocol == self.protocol
            and self.first_port <= port <= self.last_port
        )


@attrs.frozen(order=True)
class FwmarkService:
    """One IPVS fwmark virtual service: (``family``, ``mark``) and its settings."""

    family: Family
    mark: int
    service: VirtualService = attrs.field(order=False)


@attrs.frozen
class Specification:
    """What the kernel must hold for a set of bundles."""

    rules: frozenset[MarkRule]
    services: frozenset[FwmarkService]
    owners: dict[MarkRule, str] = attrs.field(eq=False, repr=False, factory=dict)

    @property
    def marks(self) -> frozenset[int]:
        """Every mark the packet-filter half sets."""
        return frozenset(r.mark for r in self.rules)


def bundle_rules(bundle: Bundle) -> list[MarkRule]:
    """The mark rules of one bundle, one per (VIP, port range)."""
    mark = bundle.mark
    return [
        MarkRule(Family.of(vip), vip, r.protocol, r.first_port, r.last_port, mark.value, mark.mask)
        for vip in bundle.vips
        for r in bundle.ports
    ]


def bundle_services(bundle: Bundle) -> list[FwmarkService]:
    """The IPVS services of one bundle: one per address family of its VIPs."""
    return [
        FwmarkService(family, bundle.mark.value, bundle.service.for_family(family))
        for family in bundle.families
    ]


def specify(bundles: Iterable[Bundle], check: bool = True) -> Specification:
    """Expand ``bundles`` (conflict-checked first unless ``check`` is False)."""
    bundles = list(bundles)
    if check:
        check_bundles(bundles)
    owners: dict[MarkRule, str] = {}
    services: set[FwmarkService] = set()
    for bundle in bundles:
        for rule in bundle_rules(bundle):
            owners[rule] = bundle.name
        services.update(bundle_services(bundle))
    return Specification(frozenset(owners), frozenset(services), owners)


def normalize(rules: Iterable[MarkRule]) -> frozenset[MarkRule]:
    """Merge touching port ranges of otherwise equal rules: a canonical form for comparison."""
    merged: list[MarkRule] = []
    key = attrs.astuple
    for rule in sorted(
        rules,
        key=lambda r: (
            r.family,
            r.vip.version,
            int(r.vip),
            r.protocol,
            r.mark,
            r.mask,
            r.first_port,
        ),
    ):
        last = merged[-1] if merged else None
        if (
            last is not None
            and key(last, recurse=False)[:3] == key(rule, recurse=False)[:3]
            and (last.mark, last.mask) == (rule.mark, rule.mask)
            and rule.first_port <= last.last_port + 1
        ):
            merged[-1] = attrs.evolve(last, last_port=max(last.last_port, rule.last_port))
        else:
            merged.append(rule)
    return frozenset(merged)


def classify(
    rules: Iterable[MarkRule], family: Family, address: IPAddress, protocol: Protocol, port: int
) -> tuple[int, int] | None:
    """The (mark, mask) a packet gets from ``rules``, or None if no rule matches."""
    for rule in rules:
        if rule.matches(family, address, protocol, port):
            return (rule.mark, rule.mask)
    return None
