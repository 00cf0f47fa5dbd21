"""The nftables backend's persisted fast path (:mod:`lvsfw.backends.nftcache`): a later
process trusts the record of lvsfw's own last commit only while the namespace's boot, cookie
and nf_tables generation are the ones that commit produced; anything else (a foreign commit
to any table, a hand edit, a corrupt, symlinked, foreign-owned or other-version file, a
commit that died before recording) is a full read with the right answer, never an error.

Kernel tests run in a throwaway namespace each; the file-format tests need no kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lvsfw import Bundle
from lvsfw.backends import nftables as nftmod
from lvsfw.backends import nftcache
from lvsfw.backends.nftables import Nftables
from lvsfw.backends.nftdelta import Target
from lvsfw.director import Director
from lvsfw.enums import Family
from lvsfw.errors import CommandFailed
from lvsfw.rules import MarkRule, specify
from tests.netlab import empty_netns, run
from tests.test_nftables import kernel_ready

BUNDLES = [
    Bundle("web", "192.0.2.10", "tcp:80,443", 80),
    Bundle("ftp", "192.0.2.21", "tcp:21,10000-10100", 21),
    Bundle("dns", ["192.0.2.53", "2001:db8::53"], "udp:53 tcp:53", "0x35/0xff"),
]
CHANGED = [*BUNDLES[:2], Bundle("dns", ["192.0.2.53", "2001:db8::53"], "udp:53,5353", "0x35/0xff")]
KEY = ("boot-1", 4096, 7)


@pytest.fixture
def netns() -> Iterator[str]:
    kernel_ready()
    with empty_netns() as name:
        yield name


class Listings:
    """Counts the listings of table inet lvsfw (the cost the record saves)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = nftmod.Context.json

        def record(ctx: Any, command: dict[str, Any], argv: tuple[str, ...]) -> Any:
            if argv[-3:] == ("table", "inet", "lvsfw") and "list" in argv:
                self.count += 1
            return real(ctx, command, argv)

        monkeypatch.setattr(nftmod.Context, "json", record)


def _backend(netns: str, path: Path) -> Nftables:
    backend = Nftables(netns)
    backend.cache_path = str(path)
    return backend


def _nft(netns: str, *words: str) -> None:
    run(["ip", "netns", "exec", netns, "nft", *words])


def _applied(netns: str, tmp_path: Path, bundles: list[Bundle] = BUNDLES) -> Path:
    """``bundles`` applied by one backend object, which records its commit; the record."""
    path = tmp_path / "cache.nft"
    _backend(netns, path).apply(specify(bundles))
    assert path.is_file()
    return path


def _fresh_read(netns: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, int]:
    """What a new backend object (a later process) observes fast, and how many listings."""
    listings = Listings(monkeypatch)
    live = _backend(netns, path).observe(fast=True)
    return live, listings.count


def _rewrite(path: Path, edit: Any) -> None:
    """Rewrite the record with ``edit(header, body)`` applied, digest recomputed."""
    head, _, body = path.read_bytes().partition(b"\n")
    header, decoded = json.loads(head), json.loads(body)
    edit(header, decoded)
    text = json.dumps(decoded)
    header["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    path.write_text(json.dumps(header) + "\n" + text)


# -- trusted when nothing changed ----------------------------------------------------------


@pytest.mark.kernel
def test_a_new_backend_trusts_the_record_while_nothing_changed(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _applied(netns, tmp_path)
    spec = specify(BUNDLES)
    live, listings = _fresh_read(netns, path, monkeypatch)
    assert listings == 0 and live.cached
    assert live.rules == spec.normalized
    assert live.owners() == {r: n for r, n in spec.owners.items() if r in live.rules}
    backend = _backend(netns, path)
    assert backend.diff(spec, live) is None
    full = backend.observe()  # verify's read never uses the record
    assert not full.cached and full == live and full.owners() == live.owners()
    # a change planned on the record is the same delta a full read plans
    assert str(backend.diff(specify(CHANGED), live)) == str(backend.diff(specify(CHANGED), full))


@pytest.mark.kernel
def test_a_fresh_process_trusts_the_record_and_a_verify_still_reads(
    netns: str, tmp_path: Path
) -> None:
    path = _applied(netns, tmp_path)
    script = textwrap.dedent(
        f"""
        import json
        from lvsfw.backends import nftables as nftmod
        listed = []
        real = nftmod.Context.json
        def record(ctx, command, argv):
            listed.append("list" in argv and argv[-1] == "lvsfw")
            return real(ctx, command, argv)
        nftmod.Context.json = record
        backend = nftmod.Nftables({netns!r})
        backend.cache_path = {str(path)!r}
        fast = backend.observe(fast=True)
        fast_listed = sum(listed)
        full = backend.observe()
        print(json.dumps([fast.cached, fast_listed, full.cached, sum(listed), fast == full]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == [True, 0, False, 1, True]


@pytest.mark.kernel
def test_a_new_director_applies_nothing_without_listing_and_verify_reads(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def director() -> Director:
        d = Director("nftables", ipvs=False, netns=netns, state_file=str(tmp_path / "s.json"),
                     lock_dir=str(tmp_path))  # fmt: skip
        assert isinstance(d.firewall, Nftables)
        d.firewall.cache_path = d.state_file + ".nft"
        return d

    director().apply(BUNDLES)
    listings = Listings(monkeypatch)
    assert not director().apply(BUNDLES)
    assert listings.count == 0
    assert director().apply(CHANGED)  # one change planned on the record
    assert listings.count == 0
    assert director().verify(CHANGED).ok
    assert listings.count == 1


# -- any doubt: a full read, and the right answer --------------------------------------------


@pytest.mark.kernel
def test_a_foreign_commit_to_another_table_forces_a_full_read(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _applied(netns, tmp_path)
    _nft(netns, "add", "table", "ip", "someone-else")
    live, listings = _fresh_read(netns, path, monkeypatch)
    assert listings == 1 and not live.cached
    assert live.rules == specify(BUNDLES).normalized


@pytest.mark.kernel
def test_after_a_foreign_commit_the_full_read_is_recorded(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One foreign commit (a firewall reloaded at boot) costs one listing, not one per
    apply for ever: the full read, exactly lvsfw's table, is recorded for the next process,
    which plans the same delta on it as on a full read."""
    path = _applied(netns, tmp_path)
    _nft(netns, "add", "table", "ip", "someone-else")
    assert _fresh_read(netns, path, monkeypatch)[1] == 1
    live, listings = _fresh_read(netns, path, monkeypatch)
    assert listings == 0 and live.cached
    spec = specify(BUNDLES)
    assert live.rules == spec.normalized
    assert live.owners() == {r: n for r, n in spec.owners.items() if r in live.rules}
    backend = _backend(netns, path)
    full = backend.observe()
    assert str(backend.diff(specify(CHANGED), live)) == str(backend.diff(specify(CHANGED), full))


@pytest.mark.kernel
def test_a_table_lvsfw_would_not_write_is_never_recorded_from_a_read(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An element in a map lvsfw would not put it in (a single port in the interval map,
    by hand): the table is intact but a record would place it elsewhere, so every read
    lists it until lvsfw writes the table itself."""
    path = _applied(netns, tmp_path)
    _nft(netns, "add element inet lvsfw markrange4 { 192.0.2.99 . tcp . 99 : 0x00000063 }")
    for _ in range(2):
        live, listings = _fresh_read(netns, path, monkeypatch)
        assert listings == 1 and not live.cached
    assert any(r.first_port == 99 for r in live.rules)


@pytest.mark.kernel
def test_a_commit_during_the_listing_leaves_no_record(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generation moved between the read's start and its end (someone committed while
    the table was listed): nothing is recorded from that read."""
    path = _applied(netns, tmp_path)
    _nft(netns, "add", "table", "ip", "someone-else")
    real = nftmod.generation
    calls: list[int] = []

    def moving() -> Any:
        now = real()
        calls.append(1)
        return None if now is None else (now[0], now[1] + len(calls) - 1)

    monkeypatch.setattr(nftmod, "generation", moving)
    assert _fresh_read(netns, path, monkeypatch)[1] == 1
    assert len(calls) == 2  # before the listing, and after it
    monkeypatch.setattr(nftmod, "generation", real)
    assert _fresh_read(netns, path, monkeypatch)[1] == 1


@pytest.mark.kernel
def test_a_hand_edit_of_lvsfws_table_is_seen_and_repaired(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _applied(netns, tmp_path)
    _nft(netns, "delete element inet lvsfw mark4 { 192.0.2.10 . tcp . 80 }")
    live, listings = _fresh_read(netns, path, monkeypatch)
    assert listings == 1 and not live.cached
    spec = specify(BUNDLES)
    assert spec.normalized - live.rules == {r for r in spec.normalized if r.first_port == 80}
    backend = _backend(netns, path)
    backend.apply(spec)  # repairs, and records the repaired table
    assert backend.observe() == backend.observe(fast=True)
    assert _fresh_read(netns, path, monkeypatch)[0].rules == spec.normalized


@pytest.mark.parametrize(
    "damage",
    ["truncated", "flipped", "garbage", "empty", "version", "format", "boot", "row", "name",
     "float", "short-column", "extra-key"],
)  # fmt: skip
@pytest.mark.kernel
def test_a_damaged_or_foreign_version_record_is_a_full_read(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    path = _applied(netns, tmp_path)
    raw = path.read_bytes()
    edits = {
        "version": lambda h, b: h.update(version=2),
        "format": lambda h, b: h.update(format="something-else"),
        "boot": lambda h, b: h.update(boot="another-boot"),
        "row": lambda h, b: b["rules"][5].__setitem__(0, 0),  # mark 0
        "name": lambda h, b: b["names"].__setitem__(0, 'no "quotes"'),
        "float": lambda h, b: b["rules"][3].__setitem__(0, float(b["rules"][3][0])),
        "short-column": lambda h, b: b["rules"][2].pop(),
        "extra-key": lambda h, b: h.update(more=1),
    }
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":
        path.write_bytes(raw[:-10] + bytes([raw[-10] ^ 1]) + raw[-9:])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        _rewrite(path, edits[damage])
    live, listings = _fresh_read(netns, path, monkeypatch)
    assert listings == 1 and not live.cached
    assert live.rules == specify(BUNDLES).normalized


@pytest.mark.parametrize("kind", ["symlink", "foreign-owner", "group-writable", "directory"])
@pytest.mark.kernel
def test_an_untrusted_file_is_never_read(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    good = _applied(netns, tmp_path)
    path = tmp_path / "other.nft"
    if kind == "symlink":
        path.symlink_to(good)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(good.read_bytes())
        path.chmod(0o620 if kind == "group-writable" else 0o600)
        if kind == "foreign-owner":
            os.chown(path, 65534, 65534)
    live, listings = _fresh_read(netns, path, monkeypatch)
    assert listings == 1 and not live.cached
    assert live.rules == specify(BUNDLES).normalized


# -- a commit never leaves a record that lies ---------------------------------------------


@pytest.mark.kernel
def test_the_record_is_gone_while_a_commit_is_sent_and_after_it_fails(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _applied(netns, tmp_path)
    present: list[bool] = []
    real = nftmod.Context.json

    def sending(ctx: Any, command: dict[str, Any], argv: tuple[str, ...]) -> Any:
        if argv[-3:] == ("-j", "-f", "-") and "--check" not in argv:
            present.append(path.exists())
            raise CommandFailed(argv, 1, "injected")
        return real(ctx, command, argv)

    backend = _backend(netns, path)
    monkeypatch.setattr(nftmod.Context, "json", sending)
    with pytest.raises(CommandFailed):
        backend.apply(specify(CHANGED))
    monkeypatch.setattr(nftmod.Context, "json", real)
    assert present == [False] and not path.exists()
    live, listings = _fresh_read(netns, path, monkeypatch)
    assert listings == 1 and live.rules == specify(BUNDLES).normalized


@pytest.mark.kernel
def test_a_process_killed_after_its_commit_leaves_no_record(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _applied(netns, tmp_path)
    script = textwrap.dedent(
        f"""
        import os
        from lvsfw import Bundle
        from lvsfw.backends import nftables as nftmod
        from lvsfw.rules import specify
        real = nftmod.Context.json
        def killed(ctx, command, argv):
            out = real(ctx, command, argv)
            if argv[-3:] == ("-j", "-f", "-") and "--check" not in argv:
                os._exit(9)  # the commit went through; the process dies before recording
            return out
        nftmod.Context.json = killed
        backend = nftmod.Nftables({netns!r})
        backend.cache_path = {str(path)!r}
        backend.apply(specify([Bundle("web", "192.0.2.10", "tcp:80", 80)]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], check=False)
    assert done.returncode == 9
    assert not path.exists()
    live, listings = _fresh_read(netns, path, monkeypatch)
    assert listings == 1 and not live.cached
    assert {(r.vip.exploded, r.first_port) for r in live.rules} == {("192.0.2.10", 80)}


@pytest.mark.kernel
def test_an_undo_and_a_removal_leave_no_record(netns: str, tmp_path: Path) -> None:
    path = _applied(netns, tmp_path)
    backend = _backend(netns, path)
    change = backend.diff(specify(CHANGED), backend.observe(fast=True))
    assert change is not None
    backend.commit(change)
    assert path.exists()
    backend.commit(change.inverse)  # an undo: its result is not recorded
    assert not path.exists()
    backend.apply(specify(CHANGED))  # planned on a full read, then recorded again
    assert path.exists()
    backend.remove()
    assert not path.exists()


@pytest.mark.kernel
def test_without_a_cache_path_nothing_is_written(netns: str, tmp_path: Path) -> None:
    backend = Nftables(netns)
    backend.apply(specify(BUNDLES))
    assert backend.cache_path is None
    assert list(tmp_path.iterdir()) == []
    assert Nftables(netns).observe(fast=True).cached is False


# -- the file format (no kernel) ----------------------------------------------------------


def test_a_record_round_trips_reusing_known_rule_objects(tmp_path: Path) -> None:
    spec = specify(BUNDLES)
    target = Target.of(spec.normalized, spec.owners)
    path = str(tmp_path / "c.nft")
    assert nftcache.save(path, KEY, target)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = nftcache.load(path, KEY, spec.rules)
    assert loaded is not None
    assert loaded.rules == target.rules and loaded.owners() == target.owners()
    by_value = {r: r for r in spec.rules}
    assert all(by_value[r] is r for r in loaded.rules)  # the very objects
    fresh = nftcache.load(path, KEY)  # nothing known: every row made and checked
    assert fresh is not None and fresh.rules == target.rules
    assert nftcache.load(path, ("boot-1", 4096, 8)) is None  # the next generation
    assert nftcache.load(path, ("boot-1", 4097, 7)) is None  # another namespace
    assert nftcache.load(path, None) is None
    assert nftcache.load(str(tmp_path / "absent"), KEY) is None


def test_a_rule_whose_family_and_address_disagree_is_not_recorded(tmp_path: Path) -> None:
    rule = specify(BUNDLES[:1]).normalized
    odd = {MarkRule(Family.IPV6, r.vip, r.protocol, r.first_port, r.last_port, r.mark)
           for r in rule}  # fmt: skip
    path = str(tmp_path / "c.nft")
    assert not nftcache.save(path, KEY, Target.of(frozenset(odd)))
    assert not os.path.exists(path)


def test_an_unwritable_record_is_no_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    target = Target.of(specify(BUNDLES).normalized)
    assert not nftcache.save(str(blocked / "c.nft"), KEY, target)  # its directory is a file
    nftcache.discard(str(blocked / "c.nft"))


def test_an_empty_table_and_uncommented_rules_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "c.nft")
    assert nftcache.save(path, KEY, Target.of(frozenset()))
    empty = nftcache.load(path, KEY)
    assert empty is not None and empty.rules == frozenset() and empty.owners() == {}
    rules = specify(BUNDLES).normalized
    odd = sorted(rules)[0]
    target = Target.of(rules, {odd: "not a comment"})  # written without a comment
    assert nftcache.save(path, KEY, target)
    loaded = nftcache.load(path, KEY)
    assert loaded is not None and loaded.rules == rules and loaded.owners() == {}
