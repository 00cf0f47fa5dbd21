"""The nftables backend's data and transactions: what a table holds, and the change (and
inverse change) between two states, as libnftables JSON. Pure: no I/O.

Each element carries its bundle's name as its comment (:mod:`lvsfw.backends.nftsyntax`).
Names are kept beside the rules, never in them: rules compare as before, and a change is
(a) the rules that differ plus (b) the rules both sides hold whose names differ; an element
of (b) is deleted and added again with its new comment in the same transaction (nft keeps
the old comment of a key added again).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Optional, Union

import attrs

from lvsfw.backends.nftparse import LiveState
from lvsfw.backends.nftsyntax import (
    ADDR,
    FAMILY,
    FULL,
    MAPS,
    PROTO_NAME,
    SKELETON,
    TABLE,
    TABLE_OBJ,
    Content,
    Json,
    add_mark_chain,
    chain_name,
    desired,
    element_list,
    elements,
    kept_bits,
    map_type,
    mark_line,
    note,
    paused_gc,
    placement,
    sorted_elements,
    table_object,
)
from lvsfw.ports import ports_text
from lvsfw.rules import MarkRule, normalize


class Target:
    """A table's data: its rules (normalized when ``read`` is False), their bundle names and,
    built only when needed, its map contents and mark chains. ``read``: the contents as
    listed from the kernel (elements may sit in unusual maps); otherwise lvsfw's own
    placement of ``rules``. ``names``: rule -> bundle name, the element comments; it may hold
    more keys than ``rules`` (a specification's own owners, shared rather than copied)."""

    def __init__(
        self,
        rules: frozenset[MarkRule],
        content: Optional[Content] = None,
        chains: Optional[dict[str, tuple[int, int]]] = None,
        names: Optional[Mapping[MarkRule, str]] = None,
    ) -> None:
        self.rules = rules
        self.read = content is not None
        self._content = content
        self._chains = chains
        self.names: Mapping[MarkRule, str] = {} if names is None else names

    @classmethod
    def of(
        cls, rules: frozenset[MarkRule], owners: Optional[Mapping[MarkRule, str]] = None
    ) -> Target:
        """The data of an intact table applying ``rules``, named by ``owners`` (a
        specification's: keyed by its rules before :func:`normalize`)."""
        normal = normalize(rules)
        return cls(normal, names=rule_names(normal, owners or {}))

    def name(self, rule: MarkRule) -> Optional[str]:
        """The comment of ``rule``'s element (None: none)."""
        return note(self.names.get(rule))

    def owners(self) -> dict[MarkRule, str]:
        """The bundle name of each rule that has one."""
        return {rule: name for rule in self.rules if (name := self.name(rule)) is not None}

    @property
    def content(self) -> Content:
        if self._content is None:
            self._content, self._chains = desired(self.rules, self.names)
        return self._content

    @property
    def chains(self) -> dict[str, tuple[int, int]]:
        if self._chains is None:
            masked = [r for r in self.rules if r.mask & FULL != FULL]
            self._chains = {chain_name(r.mark, r.mask): (r.mark, r.mask) for r in masked}
        return self._chains

    def located(self, rules: Iterable[MarkRule]) -> Content:
        """The map elements of this table that carry ``rules`` (a subset of its rules)."""
        found: Content = {}
        for rule in rules:
            key = (rule.vip, rule.protocol, rule.first_port, rule.last_port)
            if not self.read:
                name, value = placement(rule)
                found.setdefault(name, {})[key] = (value, self.name(rule))
                continue
            for name, items in self.content.items():
                entry = items.get(key)
                if entry is None:
                    continue
                datum = entry[0]
                marked = (datum, FULL) if isinstance(datum, int) else self.chains.get(str(datum))
                if marked == (rule.mark, rule.mask):
                    found.setdefault(name, {})[key] = entry
        return found


def rule_names(
    rules: frozenset[MarkRule], owners: Mapping[MarkRule, str]
) -> Mapping[MarkRule, str]:
    """The bundle name of each of ``rules`` (normalized) from ``owners`` (keyed by the rules
    before normalizing): a rule's own name, or for a range merged from several rules the name
    of the covered rule with the lowest ports. ``owners`` itself when no rule was merged (the
    common case: no copy, and no per-rule Python work)."""
    merged = rules.difference(owners)  # C speed: the set's and the dict's stored hashes
    if not merged:
        return owners
    names = dict(owners)
    wholes: dict[tuple[object, ...], list[MarkRule]] = {}
    for rule in merged:
        wholes.setdefault((rule.vip, rule.protocol, rule.mark, rule.mask), []).append(rule)
    parts = sorted(set(owners).difference(rules), key=lambda r: (r.first_port, r.last_port))
    for part in parts:
        for whole in wholes.get((part.vip, part.protocol, part.mark, part.mask), ()):
            if whole.first_port <= part.first_port and part.last_port <= whole.last_port:
                names.setdefault(whole, owners[part])
    return names


def renamed(have: Target, want: Target) -> frozenset[MarkRule]:
    """The rules both tables hold whose element comments differ.

    Linear at C speed: the two name maps are compared item by item through their stored
    hashes, and only the items that differ are looked at in Python.
    """
    if have.names is want.names:
        return frozenset()
    differing = have.names.items() ^ want.names.items()
    return frozenset(
        rule
        for rule, _ in differing
        if rule in have.rules and rule in want.rules and have.name(rule) != want.name(rule)
    )


@attrs.frozen
class Change:
    """One libnftables transaction as a value (:class:`lvsfw.backends.base.Change`).

    ``forward`` is what :meth:`Nftables.commit` sends: libnftables JSON, or an ``nft -f``
    script (``str``: the whole table, which libnftables loads from text in two thirds of the
    time its JSON takes); ``backward`` the transaction undoing it, ``target`` what the table
    holds after ``forward`` (None: no table, or unknown: an undo, whose result lvsfw does
    not cache). ``str()`` is exactly what is sent.
    """

    forward: Union[Json, str]
    backward: Union[Json, str]
    target: Optional[Target]

    @property
    def inverse(self) -> Change:
        """The transaction putting back what this one replaces."""
        return Change(self.backward, self.forward, None)

    def __str__(self) -> str:
        if isinstance(self.forward, str):
            return self.forward
        return json.dumps(self.forward, sort_keys=True)


@paused_gc()
def full_table(target: Target, replace: bool = False) -> Json:
    """The libnftables JSON creating the whole table (``replace``: deleting it first)."""
    commands: list[Json] = [{"add": TABLE_OBJ}]
    if replace:
        commands += [{"delete": TABLE_OBJ}, {"add": TABLE_OBJ}]
    for name, (mark, mask) in sorted(target.chains.items()):
        commands += add_mark_chain(name, mark, mask)
    for name, (family, kind, interval) in MAPS.items():
        key_type = [ADDR[family][1], "inet_proto", "inet_service"]
        flags = {"flags": ["interval"]} if interval else {}
        body = table_object("map", name=name, type=key_type, map=kind, **flags)
        if target.content[name]:
            body["map"]["elem"] = element_list(sorted_elements(target.content[name], interval))
        commands.append({"add": body})
    hook = dict(zip(("type", "hook", "prio", "policy"), ("filter", "prerouting", -150, "accept")))
    commands.append({"add": table_object("chain", name="prerouting", **hook)})
    commands += [{"add": table_object("rule", chain="prerouting", expr=e)} for _, e in SKELETON]
    return {"nftables": commands}


@paused_gc()
def full_table_text(target: Target, replace: bool = False) -> str:
    """The ``nft -f`` script creating the whole table, in the format ``nft list`` prints
    (each element commented with its bundle's name); ``replace``: deleting it first."""
    blocks = []
    texts: dict[object, str] = {}
    for name, (family, kind, interval) in MAPS.items():
        flags = "\t\tflags interval\n" if interval else ""
        head = f"\tmap {name} {{\n\t\ttype {map_type(family, kind)}\n{flags}"
        items = []
        for (vip, proto, lo, hi), (value, said) in sorted_elements(target.content[name], interval):
            address = texts.get(vip)
            if address is None:
                address = texts[vip] = str(vip)
            datum = f"{value:#010x}" if isinstance(value, int) else f"goto {value}"
            comment = "" if said is None else f' comment "{said}"'
            key = f"{address} . {PROTO_NAME[proto]} . {ports_text(lo, hi)}"
            items.append(f"{key}{comment} : {datum}")
        if items:
            head += "\t\telements = { " + ",\n\t\t\t     ".join(items) + " }\n"
        blocks.append(head + "\t}")
    for name, (mark, mask) in sorted(target.chains.items()):
        blocks.append(f"\tchain {name} {{\n\t\t{mark_line(kept_bits(mark, mask), mark)}\n\t}}")
    rules = "".join(f"\t\t{text}\n" for text, _ in SKELETON)
    hook = "type filter hook prerouting priority mangle; policy accept;"
    blocks.append(f"\tchain prerouting {{\n\t\t{hook}\n{rules}\t}}")
    table = f"table {FAMILY} {TABLE} {{\n" + "\n\n".join(blocks) + "\n}\n"
    if replace:
        return f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n{table}"
    return table


def deltas(have: Target, want: Target) -> Optional[tuple[Json, Json]]:
    """The element and mark-chain changes turning an intact table ``have`` into ``want``,
    and back (None when they are equal).

    New chains first, then element deletions, additions, and chains no longer used last.
    The set difference runs over rules; only the differing ones, and those whose bundle name
    changed (:func:`renamed`: deleted and added again), are looked up as elements.
    """
    gone, fresh = have.rules - want.rules, want.rules - have.rules
    names = renamed(have, want)
    if not gone and not fresh and not names and have.chains == want.chains:
        return None
    old, new = have.located(gone | names), want.located(fresh | names)
    return _delta(have.chains, old, want.chains, new), _delta(want.chains, new, have.chains, old)


def _delta(
    have_chains: dict[str, tuple[int, int]],
    gone: Content,
    want_chains: dict[str, tuple[int, int]],
    fresh: Content,
) -> Json:
    added = want_chains.keys() - have_chains.keys()
    deleted = have_chains.keys() - want_chains.keys()
    commands = [c for name in sorted(added) for c in add_mark_chain(name, *want_chains[name])]
    adds: list[Json] = []
    for name, (_, _, interval) in MAPS.items():
        commands += elements("delete", name, sorted_elements(gone.get(name, {}), interval), False)
        adds += elements("add", name, sorted_elements(fresh.get(name, {}), interval), True)
    commands += adds + [{"delete": table_object("chain", name=name)} for name in sorted(deleted)]
    return {"nftables": commands}


def written(target: Optional[Target]) -> LiveState:
    """The live state an intact table holding ``target`` reads back as."""
    if target is None:
        return LiveState(False)
    return LiveState(True, target.rules, (), (), target=target)
