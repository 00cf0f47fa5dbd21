"""What of the live iptables state is lvsfw's: the :class:`Live` state of the iptables
backends, which sets with lvsfw's names it owns, and the nf_tables mangle tables it created.

A set with one of lvsfw's names (``lvsfw4-nft``, ``lvsfw6-legacy-new``, ...) is lvsfw's when
the state file records it (:attr:`lvsfw.backends.base.PacketFilter.owned`), when the backend
created it itself in this process, or, for the main names only, when it has exactly the
structure lvsfw creates (:meth:`lvsfw.backends.ipset.SetState.alien`), so a lost state file
does not lock the admin out. A ``-new`` scratch set counts only when recorded. Any other set
with one of those names is foreign: an apply of rules refuses it (:func:`refuse`) before any
write, and no code path ever destroys it.

iptables-nft creates nf_tables ``table ip mangle`` (``ip6 mangle``) on its first write when
it is absent; :func:`mangle_tables` reads which exist (one libnftables listing) so the
backend can record the table as created, and :func:`drop_mangle` deletes a recorded table
once it holds nothing but iptables' empty built-in chains. x_tables (legacy) tables cannot
be deleted and are left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Optional

import attrs

from lvsfw.backends import ipset
from lvsfw.backends.iptsyntax import LiveState, return_rule, set_rule
from lvsfw.backends.nftables import Context
from lvsfw.enums import Family
from lvsfw.errors import CommandFailed, ConflictError, LvsfwError
from lvsfw.netns import call_in_netns
from lvsfw.rules import MarkRule, Specification

#: The nf_tables family of each address family's mangle table (iptables-nft).
MANGLE = {Family.IPV4: "ip", Family.IPV6: "ip6"}
#: iptables' built-in mangle chains, at iptables' mangle priority, policy accept: what an
#: empty iptables-nft mangle table holds.
_BUILTIN = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
_MANGLE_PRIORITY = -150
#: Attempts and pause for destroying a set whose last rule was just deleted (nf_tables drops
#: its references to the set after the commit, asynchronously).
_DESTROY_TRIES, _DESTROY_PAUSE = 20, 0.05
#: An apply's writes: ``ipset restore`` lines first, restore text per family, lines last.
Writes = tuple[list[str], dict[Family, str], list[str]]


def set_id(name: str) -> str:
    """The ownership identifier of set ``name``."""
    return f"ipset:{name}"


def table_id(family: Family) -> str:
    """The ownership identifier of ``family``'s nf_tables mangle table."""
    return f"table:{MANGLE[family]} mangle"


@attrs.frozen
class Live:
    """lvsfw's live state, read once: ``chains`` per family, the sets with lvsfw's names
    found (``sets``: main and scratch names, parsed), ``names``: every set name in the
    namespace, ``set_names``: the backend's own set per family, ``mine``: the set names
    present that are lvsfw's, ``foreign``: name -> what it is, of each present set with one
    of lvsfw's names that is not, and ``tables``: the nf_tables families (``ip``, ``ip6``)
    whose mangle table exists (None: not read, as for iptables-legacy)."""

    chains: dict[Family, LiveState]
    sets: dict[str, ipset.SetState]
    names: frozenset[str]
    set_names: dict[Family, str]
    mine: frozenset[str] = frozenset()
    foreign: dict[str, str] = attrs.field(factory=dict)
    tables: Optional[frozenset[str]] = None
    #: :meth:`owners` per family, computed once (a read is used by plan, diff and findings).
    _owners: dict[Family, dict[MarkRule, str]] = attrs.field(
        factory=dict, init=False, eq=False, repr=False
    )

    def problems(self, family: Family) -> list[str]:
        """Own lines and set members lvsfw does not understand, and foreign set rules."""
        chain, name = self.chains[family], self.set_names[family]
        found = [*chain.unknown, *(set_rule(n) for n in chain.sets if n != name)]
        found += [return_rule(n) for n in chain.returns if n != name]
        if name in chain.sets and name in self.sets:
            found += self.sets[name].unknown
        return found

    def owners(self, family: Family) -> dict[MarkRule, str]:
        """The own rules of ``family`` lvsfw understands, with their bundle names. What it
        does not understand is in :meth:`problems`: drift to report and repair, not a crash.
        (Computed once per read: do not modify the result.)"""
        found = self._owners.get(family)
        if found is not None:
            return found
        owners: dict[MarkRule, str] = {}
        for rules, comment in self.chains[family].entries:
            owners.update(dict.fromkeys(rules, comment.partition(":")[2]))
        name = self.set_names[family]
        if name in self.chains[family].sets and name in self.sets:
            owners.update(self.sets[name].owners(family))
        self._owners[family] = owners
        return owners

    @property
    def rules(self) -> frozenset[MarkRule]:
        """The mark rules in force: own chains' rules and their sets' members."""
        return frozenset(r for family in Family for r in self.owners(family))


@attrs.frozen
class Change:
    """An apply planned against ``live`` (``Iptables.diff``): ``spec`` is what it loads,
    ``writes`` how, ``before`` the own rules ``live`` held.

    Its :attr:`inverse` loads ``before`` back, planned on a fresh read when it is sent
    (``live`` and ``writes`` None): an apply is several transactions, and one failing half-way
    may have written its sets and not its chains. ``str()`` is the exact ipset and restore
    input sent.
    """

    spec: Specification
    live: Optional[Live]
    writes: Optional[Writes]
    before: Specification

    @property
    def inverse(self) -> Change:
        """The reload of the rules this change replaces."""
        return Change(self.before, None, None, self.spec)

    def __str__(self) -> str:
        if self.writes is None:
            return f"# reload of {len(self.spec.rules)} own rules, planned on a fresh read\n"
        before, chains, after = self.writes
        parts = [_section("ipset -exist restore", before)] if before else []
        parts += [f"# {_TOOLS[family]} --noflush\n{text}" for family, text in chains.items()]
        parts += [_section("ipset -exist restore", after)] if after else []
        return "".join(parts)


_TOOLS = {Family.IPV4: "iptables-restore", Family.IPV6: "ip6tables-restore"}


def _section(title: str, lines: list[str]) -> str:
    return f"# {title}\n" + "".join(f"{line}\n" for line in lines)


def set_names_of(set_names: dict[Family, str]) -> list[str]:
    """Every name lvsfw may give a set: each family's set and its scratch copy."""
    return [n for name in set_names.values() for n in (name, name + ipset.TEMP_SUFFIX)]


def classify(
    set_names: dict[Family, str],
    names: frozenset[str],
    sets: dict[str, ipset.SetState],
    recorded: Callable[[str], bool],
) -> tuple[frozenset[str], dict[str, str]]:
    """(the present sets that are lvsfw's, name -> what it is for those that are not).

    ``recorded(identifier)``: whether lvsfw recorded creating the object.
    """
    mine: set[str] = set()
    foreign: dict[str, str] = {}
    for family, name in set_names.items():
        temp = name + ipset.TEMP_SUFFIX
        state = sets.get(name, ipset.SetState(name))
        if name in names:
            why = None if recorded(set_id(name)) else state.alien(family)
            if why is None:
                mine.add(name)
            else:
                foreign[name] = why
        if temp in names:
            if recorded(set_id(temp)):
                mine.add(temp)
            else:
                what = sets.get(temp, ipset.SetState(temp)).describe()
                foreign[temp] = f"is {what}, on lvsfw's scratch name but not recorded as lvsfw's"
    return frozenset(mine), foreign


def refuse(live: Live, spec: Specification) -> None:
    """Raise :class:`ConflictError` naming every foreign set with one of lvsfw's names when
    ``spec`` has rules to load (an empty ``spec`` creates nothing: foreign sets are skipped)."""
    if not spec.rules or not live.foreign:
        return
    names = sorted(live.foreign)
    what = "; ".join(f"ipset {n} {live.foreign[n]}" for n in names)
    raise ConflictError(
        f"{what}: lvsfw did not create {'it' if len(names) == 1 else 'them'} and never changes"
        " or destroys a set it does not own; rename (ipset rename NAME OTHER) or destroy"
        f" (ipset destroy NAME) {' and '.join(names)}, then apply again",
        *names,
    )


def creates(spec: Specification, live: Live, writes: Writes) -> frozenset[str]:
    """The identifiers of what ``writes`` (loading ``spec``, planned on ``live``) may create:
    each set (and scratch copy) of a family with single ports, and each nf_tables mangle
    table a family's restore creates because ``live`` shows it absent."""
    made = {
        set_id(n)
        for family, name in live.set_names.items()
        if ipset.wanted_members(spec, family)
        for n in (name, name + ipset.TEMP_SUFFIX)
    }
    if live.tables is not None:
        made |= {table_id(f) for f in writes[1] if MANGLE[f] not in live.tables}
    return frozenset(made)


def left(
    spec: Specification, live: Live, writes: Writes, recorded: Callable[[str], bool]
) -> frozenset[str]:
    """lvsfw's objects once ``writes`` (loading ``spec``, planned on ``live``) succeeded: the
    set of each family with single ports (the others destroyed, no scratch set left) and each
    recorded mangle table (a restore creates its family's; none is deleted)."""
    sets = {set_id(n) for f, n in live.set_names.items() if ipset.wanted_members(spec, f)}
    tables = {table_id(f) for f in tables_of(live) if recorded(table_id(f))}
    if live.tables is not None:
        tables |= {table_id(f) for f in writes[1] if recorded(table_id(f))}
    return frozenset(sets | tables)


def destroy_sets(send: Callable[[list[str]], object], lines: list[str]) -> None:
    """Send ``ipset restore`` ``lines`` destroying sets of lvsfw's (callers pass only
    :attr:`Live.mine`): nf_tables drops a just-deleted rule's reference to a set shortly after
    its commit, so a set still in use is tried again for a second."""
    for attempt in range(_DESTROY_TRIES if lines else 0):
        try:
            send(lines)
            return
        except CommandFailed as exc:
            if "in use" not in exc.stderr or attempt == _DESTROY_TRIES - 1:
                raise
            time.sleep(_DESTROY_PAUSE)


def tables_of(live: Live) -> list[Family]:
    """The families whose nf_tables mangle table ``live`` shows present."""
    return [f for f in Family if live.tables is not None and MANGLE[f] in live.tables]


def _list(ctx: Context, command: dict[str, Any], argv: tuple[str, ...]) -> list[Any]:
    listed = ctx.json({"nftables": [command]}, argv)
    items = listed.get("nftables", []) if isinstance(listed, dict) else []
    return [i for i in items if isinstance(i, dict)]


def mangle_tables(netns: Optional[str]) -> Optional[frozenset[str]]:
    """The nf_tables families (``ip``, ``ip6``) whose ``mangle`` table exists in ``netns``
    (None: nf_tables cannot be listed here, so nothing is ever claimed created)."""

    def work() -> frozenset[str]:
        items = _list(Context(), {"list": {"tables": None}}, ("nft", "-j", "list", "tables"))
        tables = [i["table"] for i in items if isinstance(i.get("table"), dict)]
        families = set(MANGLE.values())
        return frozenset(
            t["family"] for t in tables if t.get("name") == "mangle" and t.get("family") in families
        )

    try:
        return call_in_netns(netns, work)
    except LvsfwError:  # no libnftables binding, or no nf_tables in the kernel
        return None


def foreign_content(items: list[Any]) -> list[str]:
    """What a listed mangle table holds besides iptables' empty built-in chains."""
    found = []
    for item in items:
        kind = next(iter(item), "")
        if kind in {"metainfo", "table"}:
            continue
        obj = item[kind] if isinstance(item[kind], dict) else {}
        if kind == "chain" and (
            obj.get("name") in _BUILTIN
            and "hook" in obj
            and obj.get("policy") == "accept"
            and obj.get("prio") == _MANGLE_PRIORITY
        ):
            continue
        found.append(f"{kind} {obj.get('name', obj.get('handle', ''))}".strip())
    return found


def drop_mangle(netns: Optional[str], family: Family) -> bool:
    """Delete ``family``'s nf_tables mangle table if it exists and holds nothing but empty
    built-in chains; whether it was deleted. (Between the listing and the deletion another
    writer could add to it: nf_tables has no delete-if-empty.)"""
    words = ("nft", "-j", "list", "table", MANGLE[family], "mangle")
    obj = {"family": MANGLE[family], "name": "mangle"}

    def work() -> bool:
        ctx = Context()
        tables = _list(ctx, {"list": {"tables": {"family": MANGLE[family]}}}, words[:4])
        if not any(i.get("table", {}).get("name") == "mangle" for i in tables):
            return False
        if foreign_content(_list(ctx, {"list": {"table": obj}}, words)):
            return False
        ctx.json({"nftables": [{"delete": {"table": obj}}]}, ("nft", "delete", *words[3:]))
        return True

    return call_in_netns(netns, work)


__all__ = [
    "MANGLE",
    "Change",
    "Live",
    "Writes",
    "classify",
    "creates",
    "destroy_sets",
    "drop_mangle",
    "foreign_content",
    "left",
    "mangle_tables",
    "refuse",
    "set_id",
    "set_names_of",
    "table_id",
    "tables_of",
]
