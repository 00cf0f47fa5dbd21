"""An in-memory kernel for fast tests of the Director and the backend contract.

Shaped like kubernetes-sigs/knftables' ``Fake``: a change is applied to a copy of the
namespace and the copy is kept only when every part of it applied, so a failing write leaves
the kernel exactly as it was. One :class:`FakeKernel` is shared by any number of
:class:`FakeFilter` (one per packet-filter name: a second name models a filter switch) and
:class:`lvsfw.backends.fakeipvs.FakeServices` instances::

    kernel = FakeKernel()
    marks, services = FakeFilter(kernel, name="fake-a"), FakeServices(kernel)
    kernel.fail_at = 2                   # the second write from now fails
    kernel.fail_on = {"check"}           # every dry run fails ("fake-a:check": one backend's)

Each commit (and each remove that finds something) is one write; every successful write is
appended to :attr:`FakeKernel.log` as the ``str()`` of its change.
Nothing here touches a real kernel; :meth:`FakeFilter.available` always succeeds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, Callable, ClassVar, NoReturn, Optional

import attrs

from lvsfw.backends.base import Change, Live, PacketFilter, ServiceKey
from lvsfw.enums import Family, IPAddress, Protocol
from lvsfw.errors import CommandFailed, ParseError
from lvsfw.model import MAX_MARK
from lvsfw.rules import FwmarkService, MarkRule, Specification

#: The name :class:`FakeServices` reports (and answers to in :attr:`FakeKernel.fail_on`).
SERVICES_NAME = "fake-ipvs"


def _fail(argv: Iterable[str], reason: str) -> NoReturn:
    raise CommandFailed(tuple(argv), 1, reason)


@attrs.define
class FakeKernel:
    """One network namespace's packet filters and IPVS table, in memory.

    ``rules``: the mark rules of each packet filter by name (a name is absent when that filter
    holds nothing: no table). ``owners``: the bundle name of each of those rules, by filter.
    ``services``: the fwmark services lvsfw can model, whoever owns them (ownership is the
    state file's business, as on a real kernel). ``foreign``: services lvsfw cannot model, by
    key, with the reason (like ``--pe sip``); lvsfw never touches them.

    Faults: ``fail_at`` counts writes down, 1-based: the Nth write from the moment it is set
    raises :class:`CommandFailed` (and ``fail_at`` becomes None again). ``fail_on`` holds verbs
    (``"check"``, ``"commit"``, ``"validate"``) that always fail, either for every backend or,
    as ``"NAME:VERB"``, for the backend called NAME (``"fake-b:commit"``, ``"fake-ipvs:check"``).
    ``writes`` counts every write attempted (failed ones too); ``log`` holds the ``str()`` of
    each successful write, in order.
    """

    rules: dict[str, frozenset[MarkRule]] = attrs.field(factory=dict)
    owners: dict[str, dict[MarkRule, str]] = attrs.field(factory=dict)
    services: dict[ServiceKey, FwmarkService] = attrs.field(factory=dict)
    foreign: dict[ServiceKey, str] = attrs.field(factory=dict)
    fail_at: Optional[int] = None
    fail_on: set[str] = attrs.field(factory=set)
    writes: int = 0
    log: list[str] = attrs.field(factory=list)

    def refuse(self, backend: str, verb: str) -> None:
        """Raise :class:`CommandFailed` if ``fail_on`` says ``verb`` of ``backend`` fails."""
        if verb in self.fail_on or f"{backend}:{verb}" in self.fail_on:
            _fail((backend, verb), f"{backend}: {verb} refused (fail_on)")

    def write(self, backend: str, text: str, apply: Callable[[], None]) -> None:
        """One write: count it, fail it if ``fail_at``/``fail_on`` say so, else ``apply`` it
        (``apply`` must change nothing when it raises) and log ``text``."""
        self.writes += 1
        if self.fail_at is not None:
            self.fail_at -= 1
            if self.fail_at <= 0:
                self.fail_at = None
                _fail((backend, "commit"), f"{backend}: write {self.writes} refused (fail_at)")
        self.refuse(backend, "commit")
        apply()
        self.log.append(text)

    def contents(self) -> tuple[Any, ...]:
        """Everything a write can change, as one comparable value (faults, log excluded)."""
        return (
            {k: v for k, v in self.rules.items() if v},
            {k: v for k, v in self.owners.items() if v},
            dict(self.services),
            dict(self.foreign),
        )


# -- the packet-filter half --------------------------------------------------------------------


def _owners_field(value: Mapping[MarkRule, str]) -> dict[MarkRule, str]:
    return dict(value)


@attrs.frozen
class FakeLive:
    """One read of a fake packet filter: its ``rules`` and each one's bundle name."""

    rules: frozenset[MarkRule] = frozenset()
    owners: dict[MarkRule, str] = attrs.field(factory=dict, converter=_owners_field, hash=False)


def _rule_text(rule: MarkRule) -> str:
    return (
        f"{rule.family} {rule.vip} {rule.protocol} {rule.first_port}-{rule.last_port}"
        f" {rule.mark:#x}/{rule.mask:#x}"
    )


@attrs.frozen
class FakeChange:
    """Replace ``before`` (what the filter holds) by ``after``; ``str()``: one line per rule,
    ``remove RULE`` then ``add RULE`` (sorted), as :attr:`FakeKernel.log` records it."""

    filter: str
    before: FakeLive
    after: FakeLive
    #: Its inverse is planned on a fresh read when sent (a non-atomic filter's, like the
    #: iptables backends'): it loads ``before`` whatever a half-sent change left.
    replans: bool = False
    #: This change is such an inverse: it loads ``after`` over whatever is there.
    reload: bool = False

    @property
    def inverse(self) -> FakeChange:
        """The change putting ``before`` back."""
        return FakeChange(self.filter, self.after, self.before, self.replans, self.replans)

    @property
    def added(self) -> frozenset[MarkRule]:
        """The rules this change adds."""
        return self.after.rules - self.before.rules

    @property
    def removed(self) -> frozenset[MarkRule]:
        """The rules this change removes."""
        return self.before.rules - self.after.rules

    def __str__(self) -> str:
        lines = [f"{self.filter}: remove {_rule_text(r)}" for r in sorted(self.removed)]
        lines += [f"{self.filter}: add {_rule_text(r)}" for r in sorted(self.added)]
        renamed = sorted(
            r for r in self.after.rules & self.before.rules
            if self.after.owners.get(r) != self.before.owners.get(r)
        )  # fmt: skip
        lines += [f"{self.filter}: rename {_rule_text(r)}" for r in renamed]
        return "\n".join(lines)


def _check_rule(argv: tuple[str, ...], rule: MarkRule) -> None:
    """Refuse a rule no kernel would load (as ``nft``/``iptables`` would)."""
    if Family.of(rule.vip) != rule.family:
        _fail(argv, f"{_rule_text(rule)}: address of another family")
    if not 0 <= rule.first_port <= rule.last_port <= 65535:
        _fail(argv, f"{_rule_text(rule)}: bad port range")
    if not (0 < rule.mark <= rule.mask <= MAX_MARK and rule.mark & ~rule.mask == 0):
        _fail(argv, f"{_rule_text(rule)}: mark outside its mask")


def _owned_by(spec: Specification, rules: frozenset[MarkRule]) -> dict[MarkRule, str]:
    """The bundle name of each of ``rules`` (normalized): the owner of a spec rule it covers."""
    names: dict[MarkRule, str] = {}
    by_group: dict[tuple[Any, ...], list[MarkRule]] = {}
    for rule in rules:
        by_group.setdefault((rule.vip, rule.protocol, rule.mark, rule.mask), []).append(rule)
    for rule, name in spec.owners.items():
        for merged in by_group.get((rule.vip, rule.protocol, rule.mark, rule.mask), []):
            if merged.first_port <= rule.first_port and rule.last_port <= merged.last_port:
                names.setdefault(merged, name)
    return names


class FakeFilter(PacketFilter):
    """A packet filter in a :class:`FakeKernel`: :class:`FakeLive` reads, :class:`FakeChange`
    changes, each commit one write; ``name`` tells filters of one kernel apart.

    Its one kernel object is ``table:NAME``, which exists while the filter holds rules.
    ``observe(fast=True)`` returns the live value of its own last commit while the kernel
    provably holds it still (the very rule set it stored: any write or direct edit of
    :attr:`FakeKernel.rules` replaces that object); :meth:`cached` then says so.
    """

    name: ClassVar[str] = "fake"
    atomic: ClassVar[bool] = True

    def __init__(
        self,
        kernel: Optional[FakeKernel] = None,
        name: str = "fake",
        netns: str | None = None,
        *,
        atomic: bool = True,
    ) -> None:
        super().__init__(netns)
        self.kernel = kernel if kernel is not None else FakeKernel()
        # per instance: several filters in one kernel; ``atomic=False`` makes the Director
        # dry-run every change (the commit is atomic either way)
        self.name = name  # type: ignore[misc]
        self.atomic = atomic  # type: ignore[misc]
        self._last: Optional[FakeLive] = None

    # -- the contract ----------------------------------------------------------------------

    def _read(self) -> FakeLive:
        return FakeLive(
            self.kernel.rules.get(self.name, frozenset()),
            self.kernel.owners.get(self.name, {}),
        )

    def observe(self, fast: bool = False) -> FakeLive:
        """The rules this filter holds now (``fast``: its last commit's value, if current)."""
        last = self._last
        if fast and last is not None:
            rules = self.kernel.rules.get(self.name, frozenset())
            if rules is last.rules and self.kernel.owners.get(self.name, {}) == last.owners:
                return last
        return self._read()

    def cached(self, live: Live) -> bool:
        """Whether ``live`` is the value of this filter's own last commit, not a read."""
        return self._last is not None and live is self._last

    def diff(self, spec: Specification, live: Live) -> Optional[FakeChange]:
        """The change from ``live`` to ``spec``'s normalized rules (None: nothing differs,
        bundle names included)."""
        before = self.own(live, FakeLive)
        rules = spec.normalized
        after = FakeLive(rules, _owned_by(spec, rules))
        if after == before:
            return None
        return FakeChange(self.name, before, after, replans=not self.atomic)

    def _applied(self, change: Change, argv: tuple[str, ...]) -> FakeLive:
        """What this filter holds once ``change`` is applied (the kernel's copy, unchanged);
        :class:`CommandFailed` when it does not apply to the live rules."""
        change = self.own(change, FakeChange)
        if change.filter != self.name:
            raise TypeError(f"{self.name}: a change of filter {change.filter}: {change!r}")
        live = self._read()
        if change.reload:
            return change.after
        missing = change.removed - live.rules
        present = change.added & live.rules
        if missing:
            _fail(argv, f"no such rule: {_rule_text(min(missing))}")
        if present:
            _fail(argv, f"rule exists: {_rule_text(min(present))}")
        for rule in change.added:
            _check_rule(argv, rule)
        rules = (live.rules - change.removed) | change.added
        owners = {r: n for r, n in live.owners.items() if r in rules}
        owners.update(change.after.owners)
        return FakeLive(rules, owners)

    def check(self, change: Change) -> None:
        """Apply ``change`` to a copy and drop it: fails exactly where :meth:`commit` would
        (``fail_at`` aside), or as :attr:`FakeKernel.fail_on` says."""
        self.kernel.refuse(self.name, "check")
        self._applied(change, (self.name, "check"))

    def commit(self, change: Change) -> None:
        """One write: apply ``change`` to a copy, then swap the copy in."""
        own = self.own(change, FakeChange)

        def swap() -> None:
            result = self._applied(own, (self.name, "commit"))
            self._store(result)
            self._last = result

        self.kernel.write(self.name, str(own), swap)

    def _store(self, live: FakeLive) -> None:
        kernel = self.kernel
        if live.rules:
            kernel.rules[self.name], kernel.owners[self.name] = live.rules, dict(live.owners)
        else:  # an empty filter keeps no table
            kernel.rules.pop(self.name, None)
            kernel.owners.pop(self.name, None)

    def remove(self) -> None:
        """Remove this filter's rules (one write; none when it holds nothing)."""
        live = self._read()
        if not live.rules:
            return

        def clear() -> None:
            self._store(FakeLive())
            self._last = None

        self.kernel.write(self.name, f"{self.name}: remove table", clear)

    def objects(self, live: Optional[Live] = None) -> frozenset[str]:
        """``table:NAME`` while the filter holds rules (in ``live``, else now)."""
        rules = self._read().rules if live is None else self.own(live, FakeLive).rules
        return frozenset({f"table:{self.name}"}) if rules else frozenset()

    def creates(self, change: Change) -> frozenset[str]:
        """``table:NAME`` when ``change`` fills an empty filter."""
        own = self.own(change, FakeChange)
        fills = own.after.rules and not own.before.rules
        return frozenset({f"table:{self.name}"}) if fills else frozenset()

    def snapshot(self) -> Specification:
        """The live rules with their bundle names (:meth:`apply` restores both)."""
        live = self._read()
        return Specification(live.rules, frozenset(), dict(live.owners))

    # -- text ------------------------------------------------------------------------------

    def render_spec(self, spec: Specification) -> str:
        """One line per rule: ``FAMILY VIP PROTOCOL FIRST-LAST MARK/MASK  # BUNDLE``."""
        lines = [f"# lvsfw {self.name}"]
        for rule in sorted(spec.rules):
            owner = spec.owners.get(rule)
            lines.append(_rule_text(rule) + (f"  # {owner}" if owner else ""))
        return "\n".join(lines) + "\n"

    def parse(self, text: str) -> frozenset[MarkRule]:
        """The rules of :meth:`render_spec` text; anything else is a :class:`ParseError`."""
        return frozenset(_parse_rule(line) for line in _lines(text))

    def validate(self, spec: Specification) -> None:
        """Refuse a ``spec`` no kernel would load (or as ``fail_on`` ``"validate"`` says)."""
        self.kernel.refuse(self.name, "validate")
        for rule in spec.rules:
            _check_rule((self.name, "validate"), rule)


def _lines(text: str) -> list[str]:
    """The non-blank lines of ``text`` without ``#`` comments."""
    found = []
    for raw in text.splitlines():
        line = raw.partition("#")[0].strip()
        if line:
            found.append(line)
    return found


def _number(line: str, text: str, high: int) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise ParseError("fake", line, f"{text!r} is not a number") from None
    if not 0 <= value <= high:
        raise ParseError("fake", line, f"{value} is not in 0..{high}")
    return value


def _parse_rule(line: str) -> MarkRule:
    fields = line.split()
    if len(fields) != 5:
        raise ParseError("fake", line, "expected FAMILY VIP PROTOCOL FIRST-LAST MARK/MASK")
    family_text, vip_text, proto_text, ports, marks = fields
    try:
        family = Family.parse(family_text, "family")
        protocol = Protocol.parse(proto_text, "protocol")
        vip: IPAddress = ipaddress.ip_address(vip_text)
    except ValueError as exc:
        raise ParseError("fake", line, str(exc)) from None
    first, sep, last = ports.partition("-")
    mark, slash, mask = marks.partition("/")
    if not sep or not slash:
        raise ParseError("fake", line, "expected FIRST-LAST MARK/MASK")
    rule = MarkRule(
        family,
        vip,
        protocol,
        _number(line, first, 65535),
        _number(line, last, 65535),
        _number(line, mark, MAX_MARK),
        _number(line, mask, MAX_MARK),
    )
    try:
        _check_rule(("fake", "parse"), rule)
    except CommandFailed as exc:
        raise ParseError("fake", line, exc.stderr) from None
    return rule
