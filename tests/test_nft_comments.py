"""Bundle names on nftables (issue 10): every map element of table ``inet lvsfw`` carries its
bundle's name as its comment, written by the text render and every JSON transaction, read
back by the parsers and the live read, kept by the generation-keyed fast path, and shown by
``lvsfw show``. Names label rules; they never change what a rule is or how rules compare.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from lvsfw import Bundle
from lvsfw.backends import nftables as nftmod
from lvsfw.backends.nftables import Nftables
from lvsfw.backends.nftdelta import Target, deltas, rule_names
from lvsfw.director import Director
from lvsfw.ports import ports_text
from lvsfw.rules import MarkRule, Specification, normalize, specify
from tests import strategies
from tests.netlab import empty_netns, run
from tests.test_nftables import kernel_ready

LVSFW = Path(sys.executable).parent / "lvsfw"
WEB = Bundle("web", "192.0.2.10", "tcp:80,443", 80)
FTP = Bundle("ftp", "192.0.2.21", "tcp:21,10000-10100", 21)
DNS = Bundle("dns", ["192.0.2.53", "2001:db8::53"], "udp:53 tcp:53", "0x35/0xff")
BUNDLES = [WEB, FTP, DNS]
WWW = Bundle("www", "192.0.2.10", "tcp:80,443", 80)  # WEB renamed: the very same rules


def names_of(spec: Specification) -> dict[tuple[str, str, str], str]:
    """(vip, protocol, ports) -> bundle name of each of ``spec``'s (normalized) rules."""
    owners = Target.of(spec.rules, spec.owners).owners()
    return {
        (str(r.vip), str(r.protocol), ports_text(r.first_port, r.last_port)): n
        for r, n in owners.items()
    }


EXPECTED = {
    ("192.0.2.10", "tcp", "80"): "web",
    ("192.0.2.10", "tcp", "443"): "web",
    ("192.0.2.21", "tcp", "21"): "ftp",
    ("192.0.2.21", "tcp", "10000-10100"): "ftp",
    ("192.0.2.53", "udp", "53"): "dns",
    ("192.0.2.53", "tcp", "53"): "dns",
    ("2001:db8::53", "udp", "53"): "dns",
    ("2001:db8::53", "tcp", "53"): "dns",
}


def listed(tx: dict[str, Any]) -> dict[str, Any]:
    """A full-table transaction as the ``nft -j list`` output of what it creates."""
    return {"nftables": [c["add"] for c in tx["nftables"] if "add" in c]}


# -- rendering and parsing (pure) ------------------------------------------------------------


def test_render_comments_every_element_with_its_bundle() -> None:
    text = Nftables().render(BUNDLES)
    assert '192.0.2.10 . tcp . 80 comment "web" : 0x00000050' in text
    assert '192.0.2.21 . tcp . 10000-10100 comment "ftp" : 0x00000015' in text  # interval map
    assert '2001:db8::53 . udp . 53 comment "dns" : goto mark-00000035-000000ff' in text
    assert text.count(" comment ") == len(specify(BUNDLES).rules)


def test_render_json_wraps_each_key_with_its_comment() -> None:
    commands = Nftables().render_json(specify([WEB, FTP]))["nftables"]
    maps = {c["add"]["map"]["name"]: c["add"]["map"] for c in commands if "map" in c["add"]}
    assert maps["mark4"]["elem"] == [
        [{"elem": {"val": {"concat": ["192.0.2.21", "tcp", 21]}, "comment": "ftp"}}, 21],
        [{"elem": {"val": {"concat": ["192.0.2.10", "tcp", 80]}, "comment": "web"}}, 80],
        [{"elem": {"val": {"concat": ["192.0.2.10", "tcp", 443]}, "comment": "web"}}, 80],
    ]
    assert maps["markrange4"]["elem"] == [
        [
            {
                "elem": {
                    "val": {"concat": ["192.0.2.21", "tcp", {"range": [10000, 10100]}]},
                    "comment": "ftp",
                }
            },
            21,
        ]
    ]


def test_a_specification_without_owners_renders_without_comments() -> None:
    spec = specify(BUNDLES)
    bare = Specification(spec.rules)
    assert " comment " not in Nftables().render_spec(bare)
    assert '"comment"' not in json.dumps(Nftables().render_json(bare))
    assert Nftables().parse(Nftables().render_spec(bare)) == normalize(spec.rules)


def test_parse_spec_reads_the_names_of_text_and_json() -> None:
    backend, spec = Nftables(), specify(BUNDLES)
    for parsed in (
        backend.parse_spec(backend.render_spec(spec)),
        backend.parse_json_spec(listed(backend.render_json(spec))),
    ):
        assert parsed.rules == normalize(spec.rules)
        assert names_of(parsed) == EXPECTED
    assert backend.parse(backend.render_spec(spec)) == normalize(spec.rules)


LISTED = """\
table inet lvsfw {
\tmap mark4 {
\t\ttype ipv4_addr . inet_proto . inet_service : mark
\t\telements = { 192.0.2.11 . udp . 53 : 0x00000051,
\t\t\t     192.0.2.10 . tcp . 80 comment "a, b: {c} # d" : 0x00000050 }
\t}
\tmap masked6 {
\t\ttype ipv6_addr . inet_proto . inet_service : verdict
\t\telements = { 2001:db8::1 . tcp . 80 comment "v6" : goto mark-00000010-000000ff }
\t}
\tchain mark-00000010-000000ff {
\t\tmeta mark set meta mark & 0xffffff10 | 0x00000010
\t}
}
"""


def test_parse_listing_keeps_any_comment_text_and_uncommented_elements() -> None:
    parsed = Nftables().parse_spec(LISTED)
    by_port = {(str(r.vip), r.first_port): parsed.owners.get(r) for r in parsed.rules}
    assert by_port == {
        ("192.0.2.11", 53): None,
        ("192.0.2.10", 80): "a, b: {c} # d",  # commas, colons, braces, hash inside quotes
        ("2001:db8::1", 80): "v6",
    }


def test_a_merged_range_is_named_after_its_lowest_ports() -> None:
    low = Bundle("low", "192.0.2.40", "tcp:81", 40)
    high = Bundle("high", "192.0.2.40", "tcp:82-90", 40)
    spec = specify([high, low])
    (merged,) = normalize(spec.rules)
    assert (merged.first_port, merged.last_port) == (81, 90)
    assert rule_names(normalize(spec.rules), spec.owners)[merged] == "low"
    assert 'tcp . 81-90 comment "low"' in Nftables().render_spec(spec)


@given(strategies.bundles(max_size=6))
@settings(max_examples=60, deadline=None)
def test_names_round_trip_through_text_and_json(bundles: list[Bundle]) -> None:
    backend, spec = Nftables(), specify(bundles, check=False)
    want = Target.of(spec.rules, spec.owners).owners()
    assert backend.parse_spec(backend.render_spec(spec)).owners == want
    assert backend.parse_json_spec(listed(backend.render_json(spec))).owners == want


# -- transactions (pure) ---------------------------------------------------------------------


def elements_of(tx: dict[str, Any], verb: str) -> list[Any]:
    return [e for c in tx["nftables"] if verb in c and "element" in c[verb] for e in
            c[verb]["element"]["elem"]]  # fmt: skip


def test_a_rename_replaces_only_the_renamed_elements_and_leaves_rules_equal() -> None:
    have, want = Target.of(specify(BUNDLES).rules, specify(BUNDLES).owners), None
    renamed = specify([WWW, FTP, DNS])
    assert renamed == specify(BUNDLES)  # names are not part of a specification's equality
    want = Target.of(renamed.rules, renamed.owners)
    assert want.rules == have.rules
    both = deltas(have, want)
    assert both is not None
    forward, backward = both
    assert elements_of(forward, "delete") == [
        {"concat": ["192.0.2.10", "tcp", 80]},
        {"concat": ["192.0.2.10", "tcp", 443]},
    ]
    assert [e[0]["elem"]["comment"] for e in elements_of(forward, "add")] == ["www", "www"]
    assert [e[0]["elem"]["comment"] for e in elements_of(backward, "add")] == ["web", "web"]
    assert deltas(want, Target.of(renamed.rules, dict(renamed.owners))) is None  # equal copy


def test_a_change_writes_the_new_elements_with_their_comments() -> None:
    before = specify(BUNDLES)
    after = specify([WEB, FTP, Bundle("dns", ["192.0.2.53", "2001:db8::53"], "udp:53,5353",
                                      "0x35/0xff")])  # fmt: skip
    both = deltas(Target.of(before.rules, before.owners), Target.of(after.rules, after.owners))
    assert both is not None
    added = elements_of(both[0], "add")
    assert {e[0]["elem"]["comment"] for e in added} == {"dns"}
    assert {json.dumps(e[0]["elem"]["val"]) for e in added} == {
        '{"concat": ["192.0.2.53", "udp", 5353]}',
        '{"concat": ["2001:db8::53", "udp", 5353]}',
    }
    assert {json.dumps(e) for e in elements_of(both[1], "delete")} == {
        json.dumps(e[0]["elem"]["val"]) for e in added
    }


# -- the kernel ------------------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    kernel_ready()
    with empty_netns() as name:
        yield name


def director(netns: str, tmp_path: Path) -> Director:
    return Director("nftables", ipvs=None, netns=netns, state_file=str(tmp_path / "state.json"),
                    lock_dir=str(tmp_path))  # fmt: skip


def show(netns: str, tmp_path: Path) -> dict[tuple[str, str, str], Any]:
    """``lvsfw show --json`` through the real console script: key -> bundle name."""
    if not LVSFW.exists():
        pytest.fail(f"{LVSFW} is missing: pip install -e .")
    done = subprocess.run(
        [str(LVSFW), "show", "--json", "--netns", netns, "--state-file",
         str(tmp_path / "state.json"), "--no-ipvs", "--lock-dir", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["firewall"] == "nftables"
    return {(r["vip"], r["protocol"], r["ports"]): r["bundle"] for r in shown["rules"]}


def listing(netns: str, *json_flag: str) -> str:
    return run(["ip", "netns", "exec", netns, "nft", *json_flag, "list", "table", "inet", "lvsfw"])


@pytest.mark.kernel
def test_show_names_every_rule_and_nft_lists_the_comments(netns: str, tmp_path: Path) -> None:
    d = director(netns, tmp_path)
    d.apply(BUNDLES)
    assert show(netns, tmp_path) == EXPECTED
    text = listing(netns)
    assert '192.0.2.10 . tcp . 80 comment "web" : 0x00000050' in text
    assert '192.0.2.21 . tcp . 10000-10100 comment "ftp" : 0x00000015' in text
    assert names_of(Nftables().parse_spec(text)) == EXPECTED  # nft's own text, read back
    assert names_of(Nftables().parse_json_spec(json.loads(listing(netns, "-j")))) == EXPECTED
    fresh = Nftables(netns)  # no cache: a full read
    assert not fresh.observe().cached and names_of(fresh.snapshot()) == EXPECTED
    assert d.verify(BUNDLES).ok


@pytest.mark.kernel
def test_the_fast_path_keeps_the_names_it_wrote(netns: str, tmp_path: Path) -> None:
    d = director(netns, tmp_path)
    d.apply(BUNDLES)
    firewall = d.firewall
    assert isinstance(firewall, Nftables)
    live = firewall.observe(fast=True)
    assert live.cached  # nothing committed since lvsfw's own commit: no listing
    assert names_of(firewall.snapshot(live)) == EXPECTED
    assert firewall.snapshot(live).owners == firewall.snapshot(firewall.observe()).owners


@pytest.mark.kernel
def test_a_renamed_bundle_shows_its_new_name_after_apply(netns: str, tmp_path: Path) -> None:
    backend = Nftables(netns)
    backend.apply(specify(BUNDLES))
    backend.apply(specify([WWW, FTP, DNS]))  # the same rules, one bundle renamed
    tx = json.dumps(backend.last_transaction)
    assert '"comment": "www"' in tx and "192.0.2.21" not in tx and "192.0.2.53" not in tx
    assert 'comment "www"' in listing(netns) and 'comment "web"' not in listing(netns)
    backend.apply(specify([WWW, FTP, DNS]))
    assert backend.last_transaction is None  # named as wanted: nothing to write

    d = director(netns, tmp_path)  # with another change in the same apply, the Director too
    d.apply([WEB, FTP, Bundle("dns", ["192.0.2.53", "2001:db8::53"], "udp:53", "0x35/0xff")])
    shown = show(netns, tmp_path)
    assert shown[("192.0.2.10", "tcp", "80")] == "web"
    assert ("192.0.2.53", "tcp", "53") not in shown


@pytest.mark.kernel
def test_a_pure_rename_through_the_director(netns: str, tmp_path: Path) -> None:
    """Same rules, a new bundle name: the plan says it rewrites, apply writes the new
    comments, and the next apply has nothing to do."""
    d = director(netns, tmp_path)
    d.apply(BUNDLES)
    assert not d.plan(BUNDLES)
    planned = d.plan([WWW, FTP, DNS])
    assert planned and "rewrite" in str(planned) and not planned.add_rules
    d.apply([WWW, FTP, DNS])
    assert show(netns, tmp_path)[("192.0.2.10", "tcp", "80")] == "www"
    assert not d.plan([WWW, FTP, DNS])


@pytest.mark.kernel
def test_one_change_sends_only_the_changed_elements_with_their_names(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = [Bundle(f"b{i}", f"198.51.100.{i}", "tcp:80,443", 100 + i) for i in range(40)]
    d = director(netns, tmp_path)
    d.apply(many)
    sent: list[dict[str, Any]] = []
    real = nftmod.Context.json

    def record(ctx: Any, command: dict[str, Any], argv: tuple[str, ...]) -> Any:
        if argv[-3:] == ("-j", "-f", "-") and "--check" not in argv:
            sent.append(command)
        return real(ctx, command, argv)

    monkeypatch.setattr(nftmod.Context, "json", record)
    changed = list(many)
    changed[7] = Bundle("b7", "198.51.100.7", "tcp:80,443,8080", 107)
    d.apply(changed)
    assert len(sent) == 1
    assert sent[0]["nftables"] == [
        {"add": {"element": {"family": "inet", "table": "lvsfw", "name": "mark4", "elem": [
            [{"elem": {"val": {"concat": ["198.51.100.7", "tcp", 8080]}, "comment": "b7"}},
             107]]}}}
    ]  # fmt: skip
    assert show(netns, tmp_path)[("198.51.100.7", "tcp", "8080")] == "b7"


@pytest.mark.kernel
def test_undo_puts_the_old_names_back(netns: str, tmp_path: Path) -> None:
    backend = Nftables(netns)
    backend.apply(specify(BUNDLES))
    before = listing(netns)
    change = backend.diff(specify([WWW, FTP, DNS]), backend.observe())
    assert change is not None
    backend.commit(change)
    assert 'comment "www"' in listing(netns)
    backend.commit(change.inverse)
    assert listing(netns) == before
    assert names_of(backend.snapshot()) == EXPECTED


def test_rules_compare_without_their_names() -> None:
    a = Nftables().parse_spec(Nftables().render(BUNDLES))
    b = Nftables().parse_spec(Nftables().render([WWW, FTP, DNS]))
    assert a == b and a.rules == b.rules and a.owners != b.owners
    rule = next(iter(a.rules))
    assert isinstance(rule, MarkRule) and not hasattr(rule, "name")
