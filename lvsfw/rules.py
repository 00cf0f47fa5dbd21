"""The backend-neutral specification of a set of bundles.

:func:`specify` expands bundles into :class:`MarkRule` s (packet-filter half) and
:class:`FwmarkService` s (IPVS half). Every backend is proven against this expansion: what a
backend renders, parsed back, must equal it.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Optional

import attrs

from lvsfw.conflicts import check_bundles
from lvsfw.enums import Family, IPAddress, Protocol, address_key
from lvsfw.model import FULL_MASK, Bundle, RealServer, VirtualService


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


#: A rule's fields, in MarkRule's own order, as attribute paths read at C speed: the family's
#: and protocol's values, the address as an int (``vip._ip``: no Python-level call).
RULE_FIELDS = ("family._value_", "vip._ip", "protocol._value_", "first_port", "last_port",
               "mark", "mask")  # fmt: skip
#: A rule as a plain tuple of :data:`RULE_FIELDS`: a sort key ordering rules as MarkRule
#: does (the family first, so the address's int never compares across families) and a row.
rule_row: Callable[[MarkRule], tuple[object, ...]] = operator.attrgetter(*RULE_FIELDS)


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


#: bundle -> (that bundle as first seen, its rules), keyed by value (bundles are immutable): a
#: caller's memo of earlier expansions. Freshly built bundles equal to earlier ones (a config
#: file read again) reuse the earlier rule objects, which also makes comparing cheap.
Memo = dict[Bundle, tuple[Bundle, list[MarkRule]]]
#: The last bundle set :func:`specify` found free of conflicts, by value, with its rules: any
#: subset of it is conflict-free too, so only bundles new since need checking (and later calls
#: without a memo, e.g. the Director after the config loader, reuse its expansions). Replaced,
#: never mutated (a reader in another thread sees one whole set).
_checked: list[Memo] = [{}]
#: The fields equality leaves out (keepalived's settings) of a bundle, its service and its
#: real servers: the conflict check compares them, so a bundle counts as checked only when
#: they are the same too.
_HIDDEN = tuple(
    tuple(f.name for f in attrs.fields(cls) if not f.eq)
    for cls in (Bundle, VirtualService, RealServer)
)


def expanded() -> Iterator[MarkRule]:
    """The rule objects of the last conflict-free bundle set :func:`specify` expanded: those a
    specification built since most likely holds. A reader of rules from elsewhere (a cache
    file) may reuse the equal ones, so that comparing them with the specification is by
    identity (C speed) rather than field by field."""
    return itertools.chain.from_iterable(map(operator.itemgetter(1), _checked[0].values()))


def _hidden(bundle: Bundle) -> tuple[object, ...]:
    bundle_fields, service_fields, server_fields = _HIDDEN
    service = bundle.service
    return (
        tuple(getattr(bundle, f) for f in bundle_fields),
        tuple(getattr(service, f) for f in service_fields),
        tuple(tuple(getattr(r, f) for f in server_fields) for r in service.real_servers),
    )


def _same(known: Bundle, bundle: Bundle) -> bool:
    """Whether ``bundle`` (equal to ``known``) is the same in the fields equality ignores."""
    return known is bundle or not any(_HIDDEN) or _hidden(known) == _hidden(bundle)


def specify(
    bundles: Iterable[Bundle], check: bool = True, memo: Optional[Memo] = None
) -> Specification:
    """Expand ``bundles`` (conflict-checked first unless ``check`` is False).

    ``memo``: expansions of bundles seen before, by value; it is updated to hold exactly
    ``bundles``. The check is incremental: against the last conflict-free set, only the bundles
    not in it (and those sharing a name, VIP or mark with them) are checked, with the same
    verdict and message as a full check (a conflict always involves a new bundle).
    """
    bundles = list(bundles)
    if check:
        for item in bundles:
            if not isinstance(item, Bundle):
                check_bundles(bundles)  # raises the ValidationError naming it
    known = _checked[0]
    owners: dict[MarkRule, str] = {}
    hits: set[int] = set()  # id() of the entries of ``known`` that ``bundles`` reuse
    new: Memo = {}  # the bundles not in ``known`` (not known to be conflict-free)
    repeated = False
    for bundle in bundles:
        entry = known.get(bundle) if known else None  # (an empty dict still hashes the key)
        if entry is not None and _same(entry[0], bundle):
            repeated = repeated or id(entry) in hits
            hits.add(id(entry))
        elif bundle in new:
            repeated = True
            entry = new[bundle]
        else:  # the rules depend on compared fields only: an equal bundle's are this one's
            entry = (memo.get(bundle) if memo else None) or entry
            entry = new[bundle] = (bundle, entry[1] if entry else bundle_rules(bundle))
        name = bundle.name
        for rule in entry[1]:
            owners[rule] = name
    seen = _seen(known, hits, new)
    if check:
        _check(bundles, list(new), repeated)
        if seen:  # an empty set (destroy) proves nothing worth keeping
            _checked[0] = seen
    if memo is not None and memo is not seen:
        memo.clear()
        memo.update(seen)  # from a dict: its stored hashes, no Bundle.__hash__ calls
    return Specification(frozenset(owners), None, owners, bundles=tuple(bundles))


def _seen(known: Memo, hits: set[int], new: Memo) -> Memo:
    """The memo of exactly the bundles of one call: the entries of ``known`` it reused (their
    ids in ``hits``) and ``new``. Built by copying ``known`` (stored hashes, no hashing of
    every bundle again) when most of it was reused."""
    if len(hits) == len(known) and not new:
        return known
    if len(hits) * 2 < len(known):
        seen = {b: e for b, e in known.items() if id(e) in hits}
    else:
        seen = known.copy()
        for bundle in [b for b, e in known.items() if id(e) not in hits]:
            del seen[bundle]
    seen.update(new)
    return seen


def _check(bundles: list[Bundle], new: list[Bundle], repeated: bool) -> None:
    """:func:`check_bundles` of ``bundles``, of which only ``new`` are not in a set known to be
    conflict-free (``repeated``: some bundle occurs twice, a name conflict)."""
    if repeated or len(new) * 4 > len(bundles):
        check_bundles(bundles)
        return
    if not new:
        return
    names = {b.name for b in new}
    vips = {v for b in new for v in b.vips}
    marks = {b.mark.value for b in new}
    near = [
        b
        for b in bundles
        if b.name in names or b.mark.value in marks or not vips.isdisjoint(b.vips)
    ]
    check_bundles(near)


class Normalized(frozenset[MarkRule]):
    """Rules known to be in :func:`normalize` form (normalizing them again is free)."""

    __slots__ = ()


def normalize(rules: Iterable[MarkRule]) -> frozenset[MarkRule]:
    """Merge touching port ranges of otherwise equal rules: a canonical form for comparison."""
    if isinstance(rules, Normalized):
        return rules
    groups = list(_grouped(rules).values())
    merged = list(map(_merged, groups))
    if isinstance(rules, frozenset) and all(map(operator.is_, merged, groups)):
        return Normalized(rules)  # nothing merged: built from the set's stored hashes
    return Normalized(itertools.chain.from_iterable(merged))


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
    """One group's rules with touching or overlapping port ranges merged (the rules that
    merge with none are kept as they are: the same objects; ``group`` itself, the same list,
    when none merged)."""
    if len(group) == 1:
        return group
    merged: list[MarkRule] = []
    ordered = sorted(group, key=_PORTS)
    last = ordered[0]
    for rule in ordered[1:]:
        if rule.first_port <= last.last_port + 1:
            if rule.last_port > last.last_port:
                last = attrs.evolve(last, last_port=rule.last_port)
        else:
            merged.append(last)
            last = rule
    merged.append(last)
    return group if len(merged) == len(group) else merged


GroupKey = tuple[int, int, str, int, int]
#: A rule's group, (IP version, address as an int, protocol name, mark, mask), read at C
#: speed (``vip._version``/``vip._ip`` are ipaddress's own fields: no Python-level call per
#: rule, which ``int(vip)`` and ``Protocol.value`` would be).
_group: Callable[[MarkRule], GroupKey] = operator.attrgetter(
    "vip._version", "vip._ip", "protocol._value_", "mark", "mask"
)
_PORTS = operator.attrgetter("first_port", "last_port")


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
            if all(map(operator.is_, self._normals.values(), self._members.values())):
                self._normal = Normalized(rules)  # nothing merged: the set's stored hashes
            else:
                self._normal = Normalized(itertools.chain.from_iterable(self._normals.values()))
            self._rules = rules
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
