"""The nftables backend's data and transactions: what a table holds, and the change (and
inverse change) between two states, as libnftables JSON. Pure: no I/O."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Optional

import attrs

from lvsfw.backends.nftsyntax import (
    ADDR,
    FULL,
    MAPS,
    SKELETON,
    TABLE_OBJ,
    Content,
    Json,
    Key,
    LiveState,
    Value,
    add_mark_chain,
    chain_name,
    desired,
    element_list,
    elements,
    placement,
    sorted_elements,
    table_object,
)
from lvsfw.rules import MarkRule, normalize


class Target:
    """A table's data: its rules (normalized when ``read`` is False) and, built only when
    needed, its map contents and mark chains. ``read``: the contents as listed from the kernel
    (elements may sit in unusual maps); otherwise lvsfw's own placement of ``rules``."""

    def __init__(
        self,
        rules: frozenset[MarkRule],
        content: Optional[Content] = None,
        chains: Optional[dict[str, tuple[int, int]]] = None,
    ) -> None:
        self.rules = rules
        self.read = content is not None
        self._content = content
        self._chains = chains

    @classmethod
    def of(cls, rules: frozenset[MarkRule]) -> Target:
        """The data of an intact table applying ``rules``."""
        return cls(normalize(rules))

    @property
    def content(self) -> Content:
        if self._content is None:
            self._content, self._chains = desired(self.rules)
        return self._content

    @property
    def chains(self) -> dict[str, tuple[int, int]]:
        if self._chains is None:
            masked = [r for r in self.rules if r.mask & FULL != FULL]
            self._chains = {chain_name(r.mark, r.mask): (r.mark, r.mask) for r in masked}
        return self._chains

    def located(self, rules: Iterable[MarkRule]) -> dict[str, dict[Key, Value]]:
        """The map elements of this table that carry ``rules`` (a subset of its rules)."""
        found: dict[str, dict[Key, Value]] = {}
        for rule in rules:
            key = (rule.vip, rule.protocol, rule.first_port, rule.last_port)
            if not self.read:
                name, value = placement(rule)
                found.setdefault(name, {})[key] = value
                continue
            for name, items in self.content.items():
                datum = items.get(key)
                marked = (datum, FULL) if isinstance(datum, int) else self.chains.get(str(datum))
                if datum is not None and marked == (rule.mark, rule.mask):
                    found.setdefault(name, {})[key] = datum
        return found


@attrs.frozen
class Change:
    """One libnftables JSON transaction as a value (:class:`lvsfw.backends.base.Change`).

    ``forward`` is what :meth:`Nftables.commit` sends, ``backward`` the transaction undoing
    it, ``target`` what the table holds after ``forward`` (None: no table, or unknown: an
    undo, whose result lvsfw does not cache). ``str()`` is the exact JSON sent.
    """

    forward: Json
    backward: Json
    target: Optional[Target]

    @property
    def inverse(self) -> Change:
        """The transaction putting back what this one replaces."""
        return Change(self.backward, self.forward, None)

    def __str__(self) -> str:
        return json.dumps(self.forward, sort_keys=True)


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


def deltas(have: Target, want: Target) -> Optional[tuple[Json, Json]]:
    """The element and mark-chain changes turning an intact table ``have`` into ``want``,
    and back (None when they are equal).

    New chains first, then element deletions, additions, and chains no longer used last.
    The set difference runs over rules; only the differing ones are looked up as elements.
    """
    gone, fresh = have.rules - want.rules, want.rules - have.rules
    if not gone and not fresh and have.chains == want.chains:
        return None
    old, new = have.located(gone), want.located(fresh)
    return _delta(have.chains, old, want.chains, new), _delta(want.chains, new, have.chains, old)


def _delta(
    have_chains: dict[str, tuple[int, int]],
    gone: dict[str, dict[Key, Value]],
    want_chains: dict[str, tuple[int, int]],
    fresh: dict[str, dict[Key, Value]],
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
