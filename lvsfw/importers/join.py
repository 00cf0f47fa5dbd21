"""Bundles from the services of a file (:class:`Source`) and the rules that set their marks.

A fwmark service takes its VIPs and ports from the rules that set its mark (lvs.cf's own
address and port stand in when none does). An IP:port service becomes a bundle of its own,
on a mark assigned from ``first_mark`` upwards, skipping every mark the file or the rules use
(keepalived's ``nftables_ipvs`` convention starts at 1000); with ``merge_ports``, services
with equal settings and real servers share one multi-port bundle per set of VIPs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Optional

import attrs

from lvsfw import config
from lvsfw.enums import Family, IPAddress, address_key
from lvsfw.errors import LvsfwError, ValidationError
from lvsfw.importers.found import FoundRule
from lvsfw.importers.source import Source
from lvsfw.model import FULL_MASK, MAX_MARK, NAME_PATTERN, Bundle, RealServer, VirtualService
from lvsfw.ports import PortRange, merge_ranges
from lvsfw.rules import specify

#: Where assigned marks start (keepalived's own convention for its nftables_ipvs marks).
FIRST_MARK = 1000


@attrs.frozen
class Joined:
    """Bundles, with the comment line over each (bundle name -> text); see Imported."""

    bundles: tuple[Bundle, ...]
    unmatched: tuple[str, ...]
    stubs: tuple[tuple[str, dict[str, object]], ...]
    warnings: tuple[str, ...]
    comments: tuple[tuple[str, str], ...]


def safe_name(name: Optional[str], fallback: str) -> str:
    """``name`` if it is a valid bundle name, else its valid characters (28 at most)."""
    if name and NAME_PATTERN.fullmatch(name):
        return name
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or "").strip("-")[:28].strip("-")
    return text if NAME_PATTERN.fullmatch(text) else fallback


@attrs.define
class Names:
    """Hands out bundle names: ``name``, else ``name-2``, ``name-3``... whichever is free.

    The last number tried per base name is kept, so the n-th bundle of one name costs O(1)."""

    taken: set[str] = attrs.Factory(set)
    tried: dict[str, int] = attrs.Factory(dict)

    def unique(self, name: str) -> str:
        """A name not handed out before (then taken)."""
        number = self.tried.get(name, 1)
        unique = name if number == 1 else ""
        while not unique or unique in self.taken:
            number += 1
            unique = f"{name[: 27 - len(str(number))]}-{number}"
        self.tried[name] = number
        self.taken.add(unique)
        return unique


def _one_service(sources: Sequence[Source]) -> VirtualService:
    """One VirtualService from the per-family services of a mark (they must agree)."""
    first = sources[0]
    servers: list[RealServer] = []
    netmask, prefix = 32, 128
    for item in sources:
        a, b = first.service, item.service
        if (a.scheduler, a.persistence) != (b.scheduler, b.persistence) or (
            item.family == first.family and a != b
        ):
            raise LvsfwError(
                f"{first.where} and {item.where}: both define fwmark {item.mark} "
                "with different settings; one mark is one service"
            )
        if item.family == first.family and item is not first:
            continue
        servers += b.real_servers
        if item.family == Family.IPV4:
            netmask = b.persistence_netmask
        else:
            prefix = b.persistence_prefix
    return attrs.evolve(
        first.service, real_servers=servers, persistence_netmask=netmask, persistence_prefix=prefix
    )


def _groups(
    rules: Iterable[FoundRule],
) -> list[tuple[tuple[IPAddress, ...], tuple[PortRange, ...]]]:
    """VIPs with identical port sets, each group with its merged ports."""
    by_vip: dict[IPAddress, list[PortRange]] = defaultdict(list)
    for rule in rules:
        by_vip[rule.vip].append(PortRange(rule.protocol, rule.first_port, rule.last_port))
    return _by_ports(by_vip)


def _by_ports(
    by_vip: dict[IPAddress, list[PortRange]],
) -> list[tuple[tuple[IPAddress, ...], tuple[PortRange, ...]]]:
    by_ports: dict[tuple[PortRange, ...], list[IPAddress]] = defaultdict(list)
    for vip in sorted(by_vip, key=address_key):
        by_ports[merge_ranges(by_vip[vip])].append(vip)
    return [(tuple(vips), ports) for ports, vips in by_ports.items()]


class _Join:
    """The state of one :func:`join`."""

    def __init__(self, warnings: Sequence[str]) -> None:
        self.warn = list(warnings)
        self.bundles: list[Bundle] = []
        self.unmatched: list[str] = []
        self.stubs: list[tuple[str, dict[str, object]]] = []
        self.comments: list[tuple[str, str]] = []
        self.names = Names()

    def add(
        self, base: str, vips: Sequence[IPAddress], ports: Sequence[PortRange], *,
        mark: tuple[int, int], service: VirtualService, note: str,
    ) -> None:  # fmt: skip
        """One bundle; real servers of a family no VIP has are left out with a warning."""
        families = {Family.of(v) for v in vips}
        kept = [s for s in service.real_servers if s.family in families]
        if len(kept) != len(service.real_servers):
            self.warn.append(
                f"mark {mark[0]}: real servers of a family no VIP has were left out: "
                + ", ".join(str(s.address) for s in service.real_servers if s not in kept)
            )
        service = attrs.evolve(service, real_servers=kept)
        name = self.names.unique(base)
        mark_text = f"{mark[0]:#x}/{mark[1]:#x}"
        try:
            bundle = Bundle(name, list(vips), list(ports), mark_text, service=service)
        except ValidationError as exc:
            self.warn.append(f"{note or name}: not imported: {exc}")
            return
        self.bundles.append(bundle)
        if note:
            self.comments.append((name, note))

    def fwmark(self, mark: int, items: list[Source], found: list[FoundRule]) -> None:
        """The bundles of one fwmark service."""
        service = _one_service(items)
        base = safe_name(next((i.name for i in items if i.name), None), f"mark{mark}")
        comments = {r.comment.partition(":")[2] for r in found if r.comment.startswith("lvsfw:")}
        if len(comments) == 1:
            base = safe_name(comments.pop(), f"mark{mark}")
        groups = _groups(found)
        masks = sorted({r.mask for r in found}) or [FULL_MASK]
        if len(masks) > 1:
            self.warn.append(f"mark {mark}: rules use several masks; using {masks[-1]:#x}")
        vips, ports = [v for i in items for v in i.vips], [p for i in items for p in i.ports]
        if not groups and vips and ports:
            note = (
                f"{items[0].where}: no packet-filter rule sets mark {mark}; using the "
                f"virtual server's own address and port ({', '.join(map(str, ports))})"
            )
            self.unmatched.append(note)
            self.warn.append(note)
            groups = [(tuple(dict.fromkeys(vips)), merge_ranges(ports))]
        if not groups:
            self.stub(mark, items, base, service)
        origin = f"from {items[0].where}: {items[0].origin}" if items[0].origin else ""
        for group_vips, group_ports in groups:
            self.add(base, group_vips, group_ports, mark=(mark, masks[-1]), service=service,
                     note=origin)  # fmt: skip

    def stub(self, mark: int, items: list[Source], base: str, service: VirtualService) -> None:
        """A fwmark service no rule sets the mark of: a commented-out bundle to finish."""
        note = f"{items[0].where}: no packet-filter rule sets mark {mark}; bundle left out"
        self.unmatched.append(note)
        self.warn.append(note)
        stand_in = {Family.IPV4: "192.0.2.1", Family.IPV6: "2001:db8::1"}
        stand_ins = sorted({stand_in[i.family] for i in items})
        stub_bundle = Bundle(self.names.unique(base), stand_ins, "tcp:1", mark, service=service)
        self.stubs.append((note, {**config.bundle_data(stub_bundle), "vips": [], "ports": ""}))


def _marks(first: int, used: set[int]) -> Iterable[int]:
    mark = first
    while mark <= MAX_MARK:
        if mark not in used:
            yield mark
        mark += 1


def _merged(sources: Sequence[Source], warn: list[str]) -> list[tuple[Source, list[Source]]]:
    """IP:port services merged by equal service: one (first, all merged) per VIP set."""
    by_service: dict[VirtualService, list[Source]] = defaultdict(list)
    for item in sources:
        by_service[item.service].append(item)
    result = []
    for service, items in by_service.items():
        by_vip: dict[IPAddress, list[PortRange]] = defaultdict(list)
        of_vip: dict[IPAddress, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            for vip in item.vips:
                by_vip[vip] += item.ports
                of_vip[vip].append(index)
        for vips, ports in _by_ports(by_vip):
            members = [items[i] for i in sorted({i for v in vips for i in of_vip[v]})]
            merged = attrs.evolve(members[0], vips=vips, ports=ports)
            if len(members) > 1 and service.persistence:
                warn.append(
                    f"{', '.join(m.where for m in members)}: merged into one bundle "
                    f"({', '.join(map(str, ports))}): persistence ({service.persistence} s) now "
                    "spans these ports (a client sticks to one real server across them)"
                )
            result.append((merged, members))
    return result


def join(
    sources: Sequence[Source],
    rules: Sequence[FoundRule],
    warnings: Sequence[str] = (),
    *,
    first_mark: int = FIRST_MARK,
    merge_ports: bool = False,
) -> Joined:
    """Bundles from ``sources`` and the VIPs/ports of the ``rules`` that set their marks."""
    state = _Join(warnings)
    by_mark: dict[int, list[Source]] = defaultdict(list)
    direct = [s for s in sources if s.mark is None]
    for item in sources:
        if item.mark is not None:
            by_mark[item.mark].append(item)
    rules_of: dict[int, list[FoundRule]] = defaultdict(list)
    for rule in rules:
        rules_of[rule.mark].append(rule)
    for mark in sorted(set(rules_of) - set(by_mark)):
        wheres = sorted({r.where for r in rules_of[mark]})
        state.warn.append(
            f"{', '.join(wheres)}: sets mark {mark}, which no virtual server uses; not imported"
        )
    for mark, items in sorted(by_mark.items()):
        state.fwmark(mark, items, rules_of.get(mark, []))
    groups = _merged(direct, state.warn) if merge_ports else [(s, [s]) for s in direct]
    marks = iter(_marks(first_mark, set(by_mark) | set(rules_of)))
    for item, members in groups:
        assigned = next(marks, None)
        if assigned is None:
            raise LvsfwError(f"{item.where}: no free mark left from {first_mark} to {MAX_MARK}")
        base = safe_name(item.name, f"vs{assigned}")
        if len(members) > 1 and base.startswith("vs-"):
            base = safe_name(f"vs-{item.vips[0]}", f"vs{assigned}")
        note = "from " + "; ".join(f"{m.where}: {m.origin}" for m in members[:4])
        note += f" (and {len(members) - 4} more)" if len(members) > 4 else ""
        state.add(base, item.vips, item.ports, mark=(assigned, FULL_MASK), service=item.service,
                  note=note)  # fmt: skip
    specify(state.bundles)
    return Joined(tuple(state.bundles), tuple(state.unmatched), tuple(state.stubs),
                  tuple(state.warn), tuple(state.comments))  # fmt: skip
