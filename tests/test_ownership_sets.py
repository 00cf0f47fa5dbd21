"""Sets and tables lvsfw did not create are never taken for its own (issue 9, items 1 and 13).

A set with one of lvsfw's names (``lvsfw4-nft``, ``lvsfw6-legacy-new``, ...) that lvsfw cannot
have created (another type, family or extensions, or a ``-new`` scratch name it did not record)
is a :class:`ConflictError` before any write, for any apply of rules, even one that would not
use it (an IPv4-only apply refuses a foreign ``lvsfw6-*``: the names are lvsfw's, and the
admin learns of the clash now rather than from the first IPv6 bundle). An empty apply, an undo
and ``remove()`` skip such sets; nothing ever destroys them. iptables-nft's nf_tables mangle
tables are deleted by ``remove()`` only when lvsfw recorded creating them and they hold
nothing but empty built-in chains.

Every kernel test runs in a throwaway namespace of its own, deleted afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

import pytest

from lvsfw import Bundle, ConflictError, Director, specify
from lvsfw.backends import ipset, iptowner
from lvsfw.backends.iptables import Iptables, IptablesLegacy, IptablesNft
from lvsfw.enums import Family
from lvsfw.errors import BackendUnavailable
from tests.netlab import LabError, require_kernel, run

FLAVOURS = (IptablesLegacy, IptablesNft)
V4 = Bundle("web", "192.0.2.10", "tcp:80,443", 80)
DUAL = Bundle("web", ["192.0.2.10", "2001:db8::10"], "tcp:80,443", 80)
V6 = Bundle("web6", "2001:db8::10", "tcp:80,443", 81)
LVSFW_HEADER = "hash:ip,port family inet hashsize 1024 maxelem 65536 comment skbinfo"


# -- pure: what counts as lvsfw's ------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "family", "mine"),
    [
        (LVSFW_HEADER, Family.IPV4, True),
        (f"{LVSFW_HEADER} bucketsize 12 initval 0x1234", Family.IPV4, True),
        ("hash:ip family inet hashsize 1024 maxelem 65536 comment", Family.IPV4, False),
        (LVSFW_HEADER, Family.IPV6, False),  # family inet for the IPv6 name
        ("hash:ip,port family inet hashsize 1024 maxelem 65536 skbinfo", Family.IPV4, False),
        (f"{LVSFW_HEADER} timeout 300", Family.IPV4, False),
        ("hash:ip,port family inet counters comment skbinfo", Family.IPV4, False),
        ("", Family.IPV4, False),
    ],
)
def test_alien_accepts_only_the_structure_lvsfw_creates(
    header: str, family: Family, mine: bool
) -> None:
    state = ipset.SetState("lvsfw4-nft", tuple(header.split()))
    why = state.alien(family)
    assert (why is None) == mine
    if why is not None:  # it says what the set is, and what lvsfw's would be
        assert "hash:ip,port" in why and ("member" in why)
        assert "hashsize" not in why


def _classify(
    header: str, names: set[str], owned: Optional[frozenset[str]]
) -> tuple[frozenset[str], dict[str, str]]:
    set_names = dict(IptablesNft.set_names)
    sets = {n: ipset.SetState(n, tuple(header.split())) for n in names}
    return iptowner.classify(
        set_names, frozenset(names), sets, lambda i: owned is not None and i in owned
    )


def test_classify_main_names_by_record_or_structure_scratch_names_by_record_only() -> None:
    both = {"lvsfw4-nft", "lvsfw4-nft-new"}
    for owned in (None, frozenset(), frozenset({"ipset:other"})):
        mine, foreign = _classify(LVSFW_HEADER, both, owned)
        assert mine == {"lvsfw4-nft"}  # structure alone: a lost state file locks nobody out
        assert list(foreign) == ["lvsfw4-nft-new"]  # a scratch name needs the record
        mine, foreign = _classify("hash:ip family inet comment", both, owned)
        assert mine == set() and set(foreign) == both
    recorded = frozenset({"ipset:lvsfw4-nft", "ipset:lvsfw4-nft-new"})
    mine, foreign = _classify("hash:ip family inet comment", both, recorded)
    assert mine == both and foreign == {}


def test_refuse_names_every_foreign_set_and_what_to_do() -> None:
    live = iptowner.Live(
        {},
        {},
        frozenset(),
        dict(IptablesNft.set_names),
        foreign={"lvsfw6-nft": "is hash:net family inet6", "lvsfw4-nft-new": "is hash:ip"},
    )
    with pytest.raises(ConflictError) as caught:
        iptowner.refuse(live, specify([V4]))
    assert caught.value.names == ("lvsfw4-nft-new", "lvsfw6-nft")
    text = str(caught.value)
    assert "ipset lvsfw6-nft is hash:net family inet6" in text
    assert "rename" in text and "destroy" in text and "apply again" in text
    iptowner.refuse(live, specify([]))  # an empty apply creates nothing: no conflict


def test_a_recorded_set_not_of_lvsfws_structure_is_reloaded_whole() -> None:
    old = ipset.SetState("lvsfw4-nft", ("hash:ip", "family", "inet", "comment"))
    want = {(V4.vips[0], next(iter(V4.ports)).protocol, 80): (80, 0xFFFFFFFF, "web")}
    lines = ipset.load_lines("lvsfw4-nft", Family.IPV4, want, old, {"lvsfw4-nft"})
    assert lines[-2:] == ["destroy lvsfw4-nft", "rename lvsfw4-nft-new lvsfw4-nft"]
    assert not any(line.startswith("swap") for line in lines)
    timed = ipset.SetState("lvsfw4-nft", (*LVSFW_HEADER.split(), "timeout", "300"))
    lines = ipset.load_lines("lvsfw4-nft", Family.IPV4, want, timed, {"lvsfw4-nft"})
    assert lines[-2:] == ["swap lvsfw4-nft-new lvsfw4-nft", "destroy lvsfw4-nft-new"]


def test_foreign_content_allows_only_empty_builtin_chains() -> None:
    def chain(name: str, **kw: object) -> dict[str, object]:
        base = {"family": "ip", "table": "mangle", "name": name, "hook": "prerouting"}
        return {"chain": {**base, "prio": -150, "policy": "accept", **kw}}

    table = [{"metainfo": {}}, {"table": {"family": "ip", "name": "mangle"}}]
    assert iptowner.foreign_content([*table, chain("PREROUTING"), chain("OUTPUT")]) == []
    user = {"chain": {"family": "ip", "table": "mangle", "name": "MINE"}}
    rule = {"rule": {"family": "ip", "table": "mangle", "chain": "PREROUTING", "handle": 4}}
    for extra in (user, rule, chain("INPUT", policy="drop"), chain("FORWARD", prio=0)):
        assert iptowner.foreign_content([*table, chain("PREROUTING"), extra]) != []
    named_set = {"set": {"family": "ip", "table": "mangle", "name": "s"}}
    assert iptowner.foreign_content([*table, named_set]) == ["set s"]


# -- live, in throwaway namespaces -----------------------------------------------------------


def _ready(cls: type[Iptables]) -> Optional[str]:
    if os.geteuid() != 0:
        return "kernel tests need root"
    if shutil.which("ip") is None or shutil.which("nft") is None:
        return "ip (iproute2) and nft are needed"
    try:
        cls.available()
    except BackendUnavailable as exc:
        return str(exc)
    return None


class Ns:
    """A throwaway network namespace; :meth:`close` deletes it."""

    def __init__(self) -> None:
        self.name = f"lvsfw-o-{secrets.token_hex(4)}"
        run(["ip", "netns", "add", self.name])

    def close(self) -> None:
        """Delete the namespace (idempotent)."""
        run(["ip", "netns", "delete", self.name], check=False)

    def sh(self, *argv: str, stdin: Optional[str] = None) -> str:
        """Run ``argv`` in the namespace; its stdout."""
        return run(["ip", "netns", "exec", self.name, *argv], stdin=stdin)

    def ipset(self, name: str) -> Optional[str]:
        """``ipset save NAME`` (None: no such set)."""
        names = self.sh("ipset", "list", "-n").split()
        return self.sh("ipset", "save", name) if name in names else None

    def tables(self) -> list[str]:
        """``nft list tables`` (``family name`` per table)."""
        return [x.removeprefix("table ") for x in self.sh("nft", "list", "tables").splitlines()]

    def xtables(self, backend: Iptables) -> list[str]:
        """Every iptables table of both families as the flavour's save prints it."""
        lines = []
        for family in Family:
            lines += self.sh(backend.binaries[family][1]).splitlines()
        return [x for x in lines if not x.startswith("#")]


@pytest.fixture
def ns() -> Iterator[Ns]:
    """A fresh, empty namespace (no table of any packet filter yet)."""
    try:
        space = Ns()
    except LabError as exc:
        require_kernel(f"cannot create a network namespace: {exc}")
    try:
        yield space
    finally:
        space.close()


@pytest.fixture(params=FLAVOURS, ids=lambda c: c.name)
def flavour(request: pytest.FixtureRequest) -> type[Iptables]:
    """Each iptables flavour (skipped, or failed under LVSFW_REQUIRE_KERNEL=1, without it)."""
    cls: type[Iptables] = request.param
    reason = _ready(cls)
    if reason is not None:
        require_kernel(reason)
    return cls


def _name(cls: type[Iptables], family: Family, scratch: bool = False) -> str:
    return cls.set_names[family] + (ipset.TEMP_SUFFIX if scratch else "")


@pytest.mark.kernel
@pytest.mark.parametrize(
    "create",
    [
        "hash:ip comment",  # the review's case: swap would fail, undo destroyed it
        "hash:ip,port family inet6 comment skbinfo",
        "hash:ip,port family inet comment skbinfo timeout 300",
    ],
)
def test_foreign_main_set_is_refused_before_any_write(
    ns: Ns, flavour: type[Iptables], tmp_path: Path, create: str
) -> None:
    name = _name(flavour, Family.IPV4)
    ns.sh("ipset", "create", name, *create.split())
    member = "2001:db8::7,tcp:1" if "inet6" in create else "198.51.100.7"
    member += ",tcp:1" if "timeout" in create else ""
    ns.sh("ipset", "add", name, member)
    backend = flavour(netns=ns.name)
    backend.live()  # (iptables-legacy-save loads the x_tables mangle table it reads)
    before, tables, xt = ns.ipset(name), ns.tables(), ns.xtables(backend)
    spec = specify([V4])
    attempts: list[Callable[[], object]] = [
        lambda: backend.diff(spec, backend.live()),
        lambda: backend.apply(spec),
        lambda: backend.validate(spec),
    ]
    for attempt in attempts:
        with pytest.raises(ConflictError) as caught:
            attempt()
        assert caught.value.names == (name,)
        assert name in str(caught.value) and "rename" in str(caught.value)
    director = Director(
        flavour.name,
        ipvs=False,
        netns=ns.name,
        state_file=str(tmp_path / "state.json"),
        lock_dir=str(tmp_path),
    )
    with pytest.raises(ConflictError):
        director.apply([V4])
    assert ns.ipset(name) == before  # byte-identical, member included
    assert ns.tables() == tables and ns.xtables(backend) == xt  # nothing written at all
    backend.remove()
    director.destroy()
    assert ns.ipset(name) == before


@pytest.mark.kernel
def test_foreign_v6_set_is_refused_by_an_ipv4_apply_and_kept_by_everything_else(
    ns: Ns, flavour: type[Iptables]
) -> None:
    name = _name(flavour, Family.IPV6)
    ns.sh("ipset", "create", name, "hash:net", "family", "inet6")
    ns.sh("ipset", "add", name, "2001:db8:ff::/64")
    before = ns.ipset(name)
    backend = flavour(netns=ns.name)
    with pytest.raises(ConflictError, match=name):
        backend.apply(specify([V4]))  # lvsfw's names are lvsfw's: refused, not skipped
    backend.apply(specify([]))  # an empty apply creates nothing: no conflict, nothing done
    backend.remove()
    assert ns.ipset(name) == before
    assert backend.read() == frozenset()


@pytest.mark.kernel
def test_foreign_scratch_sets_are_never_destroyed(ns: Ns, flavour: type[Iptables]) -> None:
    scratch = [_name(flavour, f, scratch=True) for f in Family]
    for name, family in zip(scratch, ("inet", "inet6")):  # even lvsfw's exact structure
        ns.sh("ipset", "create", name, "hash:ip,port", "family", family, "comment", "skbinfo")
    before = {n: ns.ipset(n) for n in scratch}
    records: list[Optional[frozenset[str]]] = [None, frozenset({"ipset:someone-else"})]
    for owned in records:
        backend = flavour(netns=ns.name)
        backend.owned = owned
        with pytest.raises(ConflictError) as caught:
            backend.apply(specify([DUAL]))
        assert set(caught.value.names) == set(scratch)
        backend.remove()
        assert {n: ns.ipset(n) for n in scratch} == before
    # lvsfw's own rules and sets go; the foreign scratch sets stay
    for name in scratch:
        ns.sh("ipset", "rename", name, f"{name}-aside")
    backend = flavour(netns=ns.name)
    backend.apply(specify([DUAL]))
    for name in scratch:
        ns.sh("ipset", "rename", f"{name}-aside", name)
    backend = flavour(netns=ns.name)  # a fresh process: no memory of its own writes
    backend.remove()
    assert backend.read() == frozenset()
    assert {n: ns.ipset(n) for n in scratch} == before
    assert all(ns.ipset(flavour.set_names[f]) is None for f in Family)
    # recorded as lvsfw's (a killed apply's scratch set): cleaned up
    backend.owned = frozenset(iptowner.set_id(n) for n in scratch)
    backend.apply(specify([V4]))
    assert all(ns.ipset(n) is None for n in scratch)
    assert backend.read() == specify([V4]).rules


@pytest.mark.kernel
def test_undo_never_destroys_foreign_sets(ns: Ns, flavour: type[Iptables]) -> None:
    backend = flavour(netns=ns.name)
    change = backend.diff(specify([V4]), backend.live())
    assert change is not None
    backend.commit(change)
    # foreign sets appear on lvsfw's other names before the undo runs
    v6, scratch = _name(flavour, Family.IPV6), _name(flavour, Family.IPV4, scratch=True)
    ns.sh("ipset", "create", v6, "hash:net", "family", "inet6")
    ns.sh("ipset", "create", scratch, "hash:ip", "comment")
    ns.sh("ipset", "add", scratch, "198.51.100.7")
    before = {n: ns.ipset(n) for n in (v6, scratch)}
    backend.commit(change.inverse)
    assert backend.read() == frozenset()
    assert ns.ipset(_name(flavour, Family.IPV4)) is None  # lvsfw's own set is gone
    assert {n: ns.ipset(n) for n in (v6, scratch)} == before


@pytest.mark.kernel
def test_foreign_set_used_by_a_foreign_rule_does_not_break_remove(
    ns: Ns, flavour: type[Iptables]
) -> None:
    backend = flavour(netns=ns.name)
    backend.apply(specify([V6]))
    name = _name(flavour, Family.IPV4)
    ns.sh("ipset", "create", name, "hash:ip", "comment")
    ns.sh("ipset", "add", name, "198.51.100.7")
    rule = f"*mangle\n-A PREROUTING -m set --match-set {name} dst -j ACCEPT\nCOMMIT\n"
    ns.sh(flavour.binaries[Family.IPV4][0], "-w", "--noflush", stdin=rule)
    before, xt = ns.ipset(name), ns.sh(flavour.binaries[Family.IPV4][1], "-t", "mangle")
    backend = flavour(netns=ns.name)
    backend.remove()
    backend.remove()  # and again: still no failure
    assert backend.read() == frozenset()
    assert ns.ipset(_name(flavour, Family.IPV6)) is None
    assert ns.ipset(name) == before
    after = ns.sh(flavour.binaries[Family.IPV4][1], "-t", "mangle")
    assert [x for x in after.splitlines() if not x.startswith("#")] == [
        x for x in xt.splitlines() if not x.startswith("#")
    ]


@pytest.mark.kernel
def test_a_recorded_set_of_another_type_is_lvsfws_to_replace(
    ns: Ns, flavour: type[Iptables]
) -> None:
    name = _name(flavour, Family.IPV4)
    ns.sh("ipset", "create", name, "hash:ip", "comment")
    backend = flavour(netns=ns.name)
    backend.owned = frozenset({iptowner.set_id(name)})
    backend.apply(specify([V4]))
    assert backend.read() == specify([V4]).rules
    assert (ns.ipset(name) or "").split("\n")[0].split()[2] == ipset.SET_TYPE
    assert iptowner.set_id(name) in backend.objects()


@pytest.mark.kernel
def test_an_unrecorded_set_of_lvsfws_structure_stays_lvsfws(
    ns: Ns, flavour: type[Iptables]
) -> None:
    flavour(netns=ns.name).apply(specify([DUAL]))
    records: list[Optional[frozenset[str]]] = [None, frozenset()]
    for owned in records:  # no state file, or one that lost the sets
        backend = flavour(netns=ns.name)
        backend.owned = owned
        assert backend.live().foreign == {}
        assert backend.objects() == {iptowner.set_id(flavour.set_names[f]) for f in Family}
        backend.apply(specify([V4, V6]))
        assert backend.read() == specify([V4, V6]).rules
    backend.remove()
    assert all(ns.ipset(flavour.set_names[f]) is None for f in Family)


# -- iptables-nft's nf_tables mangle tables ----------------------------------------------------


@pytest.fixture
def nft(ns: Ns) -> IptablesNft:
    """An iptables-nft backend on ``ns`` (skipped without iptables-nft)."""
    reason = _ready(IptablesNft)
    if reason is not None:
        require_kernel(reason)
    return IptablesNft(netns=ns.name)


MANGLE = ["ip mangle", "ip6 mangle"]
TABLES = frozenset({"table:ip mangle", "table:ip6 mangle"})


def _apply_recorded(backend: IptablesNft) -> frozenset[str]:
    """Apply DUAL as the Director does; the objects it would record after the commit."""
    change = backend.diff(specify([DUAL]), backend.live())
    assert change is not None
    created = backend.creates(change)
    backend.commit(change)
    objects = backend.objects(backend.live())
    assert objects <= created
    return objects


@pytest.mark.kernel
def test_mangle_tables_lvsfw_created_are_deleted_by_remove(ns: Ns, nft: IptablesNft) -> None:
    assert ns.tables() == []
    nft.owned = frozenset()
    change = nft.diff(specify([DUAL]), nft.live())
    assert change is not None
    created = nft.creates(change)
    sets = {iptowner.set_id(n) for n in iptowner.set_names_of(IptablesNft.set_names)}
    assert created == TABLES | sets  # every set it may create, scratch names included
    nft.commit(change)
    assert sorted(ns.tables()) == MANGLE
    objects = nft.objects(nft.live())
    assert objects == TABLES | {iptowner.set_id(n) for n in IptablesNft.set_names.values()}
    fresh = IptablesNft(netns=ns.name)  # the next process, told what the state file holds
    fresh.owned = objects
    fresh.remove()
    assert ns.tables() == []
    assert fresh.objects() == frozenset()


@pytest.mark.kernel
@pytest.mark.parametrize("case", ["no record", "record without tables", "foreign rule"])
def test_mangle_tables_are_kept_unless_recorded_and_empty(
    ns: Ns, nft: IptablesNft, case: str
) -> None:
    objects = _apply_recorded(nft)
    assert objects >= TABLES
    fresh = IptablesNft(netns=ns.name)
    records = {"no record": None, "record without tables": objects - TABLES}
    fresh.owned = records.get(case, objects)
    if case == "foreign rule":  # in a chain of its own, and in a built-in one
        ns.sh("iptables-nft", "-t", "mangle", "-N", "THEIRS")
        ns.sh("ip6tables-nft", "-t", "mangle", "-A", "OUTPUT", "-j", "ACCEPT")
    fresh.remove()
    assert sorted(ns.tables()) == MANGLE
    assert fresh.read() == frozenset()
    for t in MANGLE:  # left as iptables-nft leaves an emptied table, or with the foreign rules
        assert "LVSFW" not in ns.sh("nft", "list", "table", *t.split())
    if case == "foreign rule":
        assert "-N THEIRS" in ns.sh("iptables-nft", "-t", "mangle", "-S")
        assert "-A OUTPUT -j ACCEPT" in ns.sh("ip6tables-nft", "-t", "mangle", "-S")


@pytest.mark.kernel
def test_a_mangle_table_that_existed_before_is_never_claimed(ns: Ns, nft: IptablesNft) -> None:
    ns.sh("nft", "add", "table", "ip6", "mangle")  # the admin's, before lvsfw's first write
    assert ns.tables() == ["ip6 mangle"]
    change = nft.diff(specify([DUAL]), nft.live())
    assert change is not None
    assert {"table:ip mangle"} == nft.creates(change) & TABLES
    nft.commit(change)
    nft.remove()
    assert ns.tables() == ["ip6 mangle"]  # its own: deleted; the admin's: kept


@pytest.mark.kernel
def test_legacy_creates_and_records_no_tables(ns: Ns) -> None:
    reason = _ready(IptablesLegacy)
    if reason is not None:
        require_kernel(reason)
    backend = IptablesLegacy(netns=ns.name)
    change = backend.diff(specify([DUAL]), backend.live())
    assert change is not None
    assert backend.creates(change) & TABLES == frozenset()
    backend.commit(change)
    assert backend.objects() & TABLES == frozenset()
    backend.remove()
    assert backend.objects() == frozenset()


@pytest.mark.kernel
@pytest.mark.parametrize("fresh", [False, True], ids=["same-director", "next-process"])
def test_director_apply_then_destroy_leaves_no_mangle_table(
    ns: Ns, nft: IptablesNft, tmp_path: Path, fresh: bool
) -> None:
    def director() -> Director:
        return Director(
            "iptables-nft",
            ipvs=False,
            netns=ns.name,
            state_file=str(tmp_path / "state.json"),
            lock_dir=str(tmp_path),
        )

    first = director()
    first.apply([DUAL])
    assert sorted(ns.tables()) == MANGLE
    (director() if fresh else first).destroy()  # next-process: only the state file knows
    assert ns.tables() == []
    assert director().firewall.objects() == frozenset()
