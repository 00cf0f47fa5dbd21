"""The backend-neutral specification of a set of bundles.

:func:`specify` expands bundles into :class:`MarkRule` s (packet-filter half) and
:class:`FwmarkService` s (IPVS half). Every backend is proven against this expansion: what a
backend renders, parsed back, must equal it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional

import attrs

from lvsfw.conflicts import check_bundles
from lvsfw.enums import Family, IPAddress, Protocol, address_key
from lvsfw.model import FULL_MASK, Bundle, VirtualService


@attrs.frozen(order=True, unsafe_hash=False)
class MarkRule:
    """Packets of ``family`` to ``vip`` on ``protocol`` ports first..last get ``mark``/``mask``."""

    family: Family
    vip: IPAddress = attrs.field(order=address_key)
    protocol: Protocol
    first_port: int
    last_port: int
    mark: int
    mask: int = FULL_MASK

    def __hash__(self) -> int:
        # cheaper than hashing every field (ipaddress and enum hashes run Python code); equal
        # rules still hash equal
        return hash((int(self.vip), self.first_port, self.last_port, self.mark, self.mask))

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


class Specification:
    """What the kernel must hold for a set of bundles.

    ``rules``: the mark rules; ``services``: the IPVS services (computed on first use when
    built by :func:`specify`, so packet-filter-only work never builds them); ``owners``: the
    bundle name of each rule. Equal when rules and services are equal.
    """

    __slots__ = ("_bundles", "_normalized", "_services", "owners", "rules")

    def __init__(
        self,
        rules: frozenset[MarkRule],
        services: Optional[frozenset[FwmarkService]] = None,
        owners: Optional[dict[MarkRule, str]] = None,
        *,
        bundles: Sequence[Bundle] = (),
    ) -> None:
        self.rules = rules
        self.owners: dict[MarkRule, str] = {} if owners is None else owners
        self._services = services
        self._bundles = bundles
        self._normalized: Optional[frozenset[MarkRule]] = None

    @property
    def normalized(self) -> frozenset[MarkRule]:
        """``normalize(rules)``, computed once."""
        if self._normalized is None:
            self._normalized = normalize(self.rules)
        return self._normalized

    def normalize_with(self, normalizer: Normalizer) -> None:
        """Compute :attr:`normalized` through ``normalizer`` (incrementally)."""
        if self._normalized is None:
            self._normalized = normalizer(self.rules)

    @property
    def services(self) -> frozenset[FwmarkService]:
        """The IPVS fwmark services, one per (family, mark)."""
        if self._services is None:
            self._services = frozenset(s for b in self._bundles for s in bundle_services(b))
            self._bundles = ()
        return self._services

    @property
    def marks(self) -> frozenset[int]:
        """Every mark the packet-filter half sets."""
        return frozenset(r.mark for r in self.rules)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Specification):
            return NotImplemented
        return (self.rules, self.services) == (other.rules, other.services)

    def __hash__(self) -> int:
        return hash((self.rules, self.services))

    def __repr__(self) -> str:
        return f"Specification(rules={self.rules!r}, services={self.services!r})"


def bundle_rules(bundle: Bundle) -> list[MarkRule]:
    """The mark rules of one bundle, one per (VIP, port range)."""
    value, mask = bundle.mark.value, bundle.mark.mask
    ranges = [(r.protocol, r.first_port, r.last_port) for r in bundle.ports]
    return [
        MarkRule(Family.IPV4 if vip.version == 4 else Family.IPV6, vip, p, lo, hi, value, mask)
        for vip in bundle.vips
        for p, lo, hi in ranges
    ]


def bundle_services(bundle: Bundle) -> list[FwmarkService]:
    """The IPVS services of one bundle: one per address family of its VIPs."""
    return [
        FwmarkService(family, bundle.mark.value, bundle.service.for_family(family))
        for family in bundle.families
    ]


#: id(bundle) -> (that bundle, its rules): a caller's memo of earlier expansions.
Memo = dict[int, tuple[Bundle, list[MarkRule]]]


def specify(
    bundles: Iterable[Bundle], check: bool = True, memo: Optional[Memo] = None
) -> Specification:
    """Expand ``bundles`` (conflict-checked first unless ``check`` is False).

    ``memo``: expansions of bundle objects seen before (bundles are immutable, so the same
    object expands to the same rules); it is updated to hold exactly ``bundles``. Reusing the
    very same rule objects also makes comparing two specifications cheap.
    """
    bundles = list(bundles)
    if check:
        check_bundles(bundles)
    owners: dict[MarkRule, str] = {}
    seen: Memo = {}
    for bundle in bundles:
        known = memo.get(id(bundle)) if memo is not None else None
        rules = known[1] if known is not None and known[0] is bundle else bundle_rules(bundle)
        seen[id(bundle)] = (bundle, rules)
        name = bundle.name
        for rule in rules:
            owners[rule] = name
    if memo is not None:
        memo.clear()
        memo.update(seen)
    return Specification(frozenset(owners), None, owners, bundles=tuple(bundles))


class Normalized(frozenset[MarkRule]):
    """Rules known to be in :func:`normalize` form (normalizing them again is free)."""

    __slots__ = ()


def normalize(rules: Iterable[MarkRule]) -> frozenset[MarkRule]:
    """Merge touching port ranges of otherwise equal rules: a canonical form for comparison."""
    if isinstance(rules, Normalized):
        return rules
    merged: list[MarkRule] = []
    for group in _grouped(rules).values():
        merged += _merged(group)
    return Normalized(merged)


def _grouped(rules: Iterable[MarkRule]) -> dict[GroupKey, list[MarkRule]]:
    """``rules`` by (vip, protocol, mark, mask): only rules of one group can merge."""
    groups: dict[GroupKey, list[MarkRule]] = {}
    for rule in rules:
        key = _group(rule)
        found = groups.get(key)
        if found is None:
            groups[key] = [rule]
        else:
            found.append(rule)
    return groups


def _merged(group: list[MarkRule]) -> list[MarkRule]:
    """One group's rules with touching or overlapping port ranges merged."""
    if len(group) == 1:
        return group
    merged: list[MarkRule] = []
    group = sorted(group, key=lambda r: (r.first_port, r.last_port))
    last = group[0]
    for rule in group[1:]:
        if rule.first_port <= last.last_port + 1:
            if rule.last_port > last.last_port:
                last = attrs.evolve(last, last_port=rule.last_port)
        else:
            merged.append(last)
            last = rule
    merged.append(last)
    return merged


GroupKey = tuple[int, int, str, int, int]


def _group(rule: MarkRule) -> GroupKey:
    return (rule.vip.version, int(rule.vip), _PROTO_NAME[rule.protocol], rule.mark, rule.mask)


_PROTO_NAME = {p: p.value for p in Protocol}


class Normalizer:
    """:func:`normalize` for a sequence of rule sets that differ little from one to the next.

    Keeps the last input, its normal form and both grouped by (vip, protocol, mark, mask);
    a new input is normalized by redoing only the groups its difference touches. The
    difference is cheap when unchanged rules are the very same objects (see ``specify``'s
    memo): frozenset operations then only compare stored hashes and identities.
    """

    def __init__(self) -> None:
        self._rules: frozenset[MarkRule] = frozenset()
        self._normal: frozenset[MarkRule] = Normalized()
        self._members: dict[GroupKey, list[MarkRule]] = {}
        self._normals: dict[GroupKey, list[MarkRule]] = {}

    def __call__(self, rules: frozenset[MarkRule]) -> frozenset[MarkRule]:
        added, removed = rules - self._rules, self._rules - rules
        if len(added) + len(removed) > len(rules) // 4:  # mostly new: start over
            self._members = _grouped(rules)
            self._normals = {k: _merged(v) for k, v in self._members.items()}
            normal = [rule for group in self._normals.values() for rule in group]
            self._rules, self._normal = rules, Normalized(normal)
            return self._normal
        touched = {_group(r) for r in added | removed}
        stale: list[MarkRule] = []
        fresh: list[MarkRule] = []
        for key in touched:
            members = [r for r in self._members.get(key, []) if r not in removed]
            members += [r for r in added if _group(r) == key]
            stale += self._normals.pop(key, [])
            self._members.pop(key, None)
            if members:
                self._members[key] = members
                self._normals[key] = _merged(members)
                fresh += self._normals[key]
        self._rules = rules
        self._normal = Normalized((self._normal - frozenset(stale)) | frozenset(fresh))
        return self._normal


def classify(
    rules: Iterable[MarkRule], family: Family, address: IPAddress, protocol: Protocol, port: int
) -> tuple[int, int] | None:
    """The (mark, mask) a packet gets from ``rules``, or None if no rule matches."""
    for rule in rules:
        if rule.matches(family, address, protocol, port):
            return (rule.mark, rule.mask)
    return None
