"""The nftables backend: exact rendering, parsing back (text and JSON), and a live kernel.

Kernel tests (``-m kernel``) run in throwaway namespaces ``lvsfw-t-<random>`` only; they skip
when not root or libnftables is missing, and fail instead under ``LVSFW_REQUIRE_KERNEL=1``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvsfw import Bundle, CommandFailed, Family, ParseError, Protocol, specify
from lvsfw.backends import nftables as nftmod
from lvsfw.backends import nftsyntax
from lvsfw.backends.nftables import LiveState, Nftables
from lvsfw.errors import BackendUnavailable
from lvsfw.rules import MarkRule, Specification, normalize
from tests import strategies
from tests.contract import PacketFilterContract
from tests.netlab import Lab, Probe, ensure_kernel, require_kernel, run

WEB = Bundle("web", "192.0.2.10", "tcp:80,443", 80)
FTP = Bundle("ftp", "192.0.2.21", "tcp:21,10000-20000", 21, persistence=300)

# Single ports: plain hash maps (no flags); port ranges: interval maps.
MAP_HEADS = {
    "mark4": "type ipv4_addr . inet_proto . inet_service : mark",
    "markrange4": "type ipv4_addr . inet_proto . inet_service : mark\n\t\tflags interval",
    "masked4": "type ipv4_addr . inet_proto . inet_service : verdict",
    "maskedrange4": "type ipv4_addr . inet_proto . inet_service : verdict\n\t\tflags interval",
    "mark6": "type ipv6_addr . inet_proto . inet_service : mark",
    "markrange6": "type ipv6_addr . inet_proto . inet_service : mark\n\t\tflags interval",
    "masked6": "type ipv6_addr . inet_proto . inet_service : verdict",
    "maskedrange6": "type ipv6_addr . inet_proto . inet_service : verdict\n\t\tflags interval",
}
PREROUTING = """\
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tmeta mark set ip daddr . meta l4proto . th dport map @mark4 accept
\t\tmeta mark set ip daddr . meta l4proto . th dport map @markrange4 accept
\t\tip daddr . meta l4proto . th dport vmap @masked4
\t\tip daddr . meta l4proto . th dport vmap @maskedrange4
\t\tmeta mark set ip6 daddr . meta l4proto . th dport map @mark6 accept
\t\tmeta mark set ip6 daddr . meta l4proto . th dport map @markrange6 accept
\t\tip6 daddr . meta l4proto . th dport vmap @masked6
\t\tip6 daddr . meta l4proto . th dport vmap @maskedrange6
\t}"""


def expected(elements: dict[str, list[str]], chains: dict[str, str] | None = None) -> str:
    """The script nft itself prints for these map elements and mark chains."""
    blocks = []
    for name, head in MAP_HEADS.items():
        block = f"\tmap {name} {{\n\t\t{head}\n"
        if elements.get(name):
            block += "\t\telements = { " + ",\n\t\t\t     ".join(elements[name]) + " }\n"
        blocks.append(block + "\t}")
    blocks += [f"\tchain {n} {{\n\t\t{rule}\n\t}}" for n, rule in sorted((chains or {}).items())]
    return "table inet lvsfw {\n" + "\n\n".join([*blocks, PREROUTING]) + "\n}\n"


class TestNftablesContract(PacketFilterContract):
    """The shared render -> parse contract (tests/contract.py)."""

    backend_name = "nftables"


# -- rendering -------------------------------------------------------------------------------


def test_seed_renders_exact_script() -> None:
    elements = {
        "mark4": [
            '192.0.2.10 . tcp . 80 comment "web" : 0x00000050',
            '192.0.2.10 . tcp . 443 comment "web" : 0x00000050',
        ]
    }
    assert Nftables().render([WEB]) == expected(elements)


def test_ftp_range_renders_an_interval() -> None:
    elements = {
        "mark4": ['192.0.2.21 . tcp . 21 comment "ftp" : 0x00000015'],
        "markrange4": ['192.0.2.21 . tcp . 10000-20000 comment "ftp" : 0x00000015'],
    }
    assert Nftables().render([FTP]) == expected(elements)


def test_ipv6_udp_sctp_render_in_their_maps() -> None:
    dual = Bundle("dns", ["2001:db8::53", "192.0.2.53"], "udp:53 sctp:2905-2906 tcp:53", 0x35)
    elements = {
        # a hash map lists by key bytes, little-endian: port (bytes swapped), protocol, address
        "mark4": [
            '192.0.2.53 . tcp . 53 comment "dns" : 0x00000035',
            '192.0.2.53 . udp . 53 comment "dns" : 0x00000035',
        ],
        "markrange4": ['192.0.2.53 . sctp . 2905-2906 comment "dns" : 0x00000035'],
        "mark6": [
            '2001:db8::53 . tcp . 53 comment "dns" : 0x00000035',
            '2001:db8::53 . udp . 53 comment "dns" : 0x00000035',
        ],
        "markrange6": ['2001:db8::53 . sctp . 2905-2906 comment "dns" : 0x00000035'],
    }
    assert Nftables().render([dual]) == expected(elements)


def test_masked_marks_jump_to_a_chain_that_keeps_the_other_bits() -> None:
    low = Bundle("low", ["192.0.2.30", "2001:db8::30"], "udp:53", "0x51/0xff")
    exact = Bundle("exact", "192.0.2.31", "tcp:80", "0x5/0x5")
    elements = {
        "masked4": [
            '192.0.2.30 . udp . 53 comment "low" : goto mark-00000051-000000ff',
            '192.0.2.31 . tcp . 80 comment "exact" : goto mark-00000005-00000005',
        ],
        "masked6": ['2001:db8::30 . udp . 53 comment "low" : goto mark-00000051-000000ff'],
    }
    chains = {
        # nft folds the mark's bits into the AND operand: & (~0xff | 0x51) | 0x51
        "mark-00000051-000000ff": "meta mark set meta mark & 0xffffff51 | 0x00000051",
        # mask == mark: nothing to clear, only OR
        "mark-00000005-00000005": "meta mark set meta mark | 0x00000005",
    }
    assert Nftables().render([low, exact]) == expected(elements, chains)
    rules = Nftables().parse(Nftables().render([low, exact]))
    assert {(r.mark, r.mask) for r in rules} == {(0x51, 0xFF), (0x5, 0x5)}


def test_render_json_seed() -> None:
    tx = Nftables().render_json(specify([WEB]))
    commands = tx["nftables"]
    assert commands[0] == {"add": {"table": {"family": "inet", "name": "lvsfw"}}}
    maps = {c["add"]["map"]["name"]: c["add"]["map"] for c in commands if "map" in c["add"]}
    assert maps["mark4"]["elem"] == [
        [{"elem": {"val": {"concat": ["192.0.2.10", "tcp", 80]}, "comment": "web"}}, 80],
        [{"elem": {"val": {"concat": ["192.0.2.10", "tcp", 443]}, "comment": "web"}}, 80],
    ]
    assert maps["mark4"]["type"] == ["ipv4_addr", "inet_proto", "inet_service"]
    assert "flags" not in maps["mark4"]
    assert maps["markrange4"]["flags"] == ["interval"]
    assert "elem" not in maps["mark6"]
    chain = next(c["add"]["chain"] for c in commands if "chain" in c["add"])
    assert (chain["hook"], chain["prio"], chain["type"], chain["policy"]) == (
        "prerouting",
        -150,
        "filter",
        "accept",
    )
    assert sum("rule" in c["add"] for c in commands) == 8  # one lookup per map
    replace = Nftables().render_json(specify([WEB]), replace=True)["nftables"]
    assert [next(iter(c)) for c in replace[:3]] == ["add", "delete", "add"]


def test_render_json_range_and_mask() -> None:
    tx = Nftables().render_json(specify([FTP, Bundle("m", "192.0.2.9", "udp:9", "0x100/0xf00")]))
    text = json.dumps(tx)
    assert '{"concat": ["192.0.2.21", "tcp", {"range": [10000, 20000]}]}, "comment": "ftp"}' in text
    assert '{"goto": {"target": "mark-00000100-00000f00"}}' in text
    rule = f'{{"|": [{{"&": [{{"meta": {{"key": "mark"}}}}, {0xFFFFF1FF}]}}, 256]}}'
    assert rule in text  # 0xfffff1ff | 0x100: keep all bits but 0xf00, then set 0x100


# -- parsing ---------------------------------------------------------------------------------

LISTED = """\
# Warning: a comment nft never prints, with { braces } and "quotes
table ip filter {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 22 comment "ssh { not a block" accept
\t}
}
table inet lvsfw { # handle 7
\tmap mark4 { # handle 3
\t\ttype ipv4_addr . inet_proto . inet_service : mark
\t\tflags interval
\t\telements = { 192.0.2.10 . 6 . 80 : 80,
\t\t\t     192.0.2.10 . tcp . 443 : 0x00000050 }
\t}
\tmap masked6 {
\t\ttype ipv6_addr . inet_proto . inet_service : verdict
\t\tflags interval
\t\telements = { 2001:db8:: . udp . 1-9 : goto mark-00000007-0000000f }
\t}
\tchain mark-00000007-0000000f { meta mark set meta mark & 0xfffffff7 | 0x00000007; }
\tchain prerouting {
\t\ttype filter hook prerouting priority -150; policy accept;
\t}
}
"""


def test_parse_listing_with_handles_numbers_and_foreign_tables() -> None:
    v4 = ipaddress.ip_address("192.0.2.10")
    v6 = ipaddress.ip_address("2001:db8::")
    assert Nftables().parse(LISTED) == {
        MarkRule(Family.IPV4, v4, Protocol.TCP, 80, 80, 80),
        MarkRule(Family.IPV4, v4, Protocol.TCP, 443, 443, 80),
        MarkRule(Family.IPV6, v6, Protocol.UDP, 1, 9, 7, 0xF),
    }


def test_parse_without_own_table_is_empty() -> None:
    assert Nftables().parse("") == frozenset()
    assert Nftables().parse("table inet foreign {\n\tchain c {\n\t}\n}\n") == frozenset()


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "table inet lvsfw {",
        "}",
        "table inet lvsfw { map mark4 { elements = { 1.2.3.4 . tcp . 80 } } }",
        "table inet lvsfw { map mark4 { elements = { 1.2.3.4 . tcp . 0 : 1 } } }",
        "table inet lvsfw { map mark4 { elements = { 1.2.3.4 . icmp . 80 : 1 } } }",
        "table inet lvsfw { map mark4 { elements = { 1.2.3.400 . tcp . 80 : 1 } } }",
        "table inet lvsfw { map mark4 { elements = { 1.2.3.4 . tcp . 90-80 : 1 } } }",
        "table inet lvsfw { map masked4 { elements = { 1.2.3.4 . tcp . 80 : goto nowhere } } }",
        'table inet lvsfw { map mark4 { comment "unterminated } }',
        "table inet lvsfw { map mark4 { elements = { 1.2.3.4 . tcp . 80 : 0x1ffffffff } } }",
    ],
)
def test_parse_junk_raises_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        Nftables().parse(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(st.one_of(json_values, json_values.map(lambda v: {"nftables": v})))
def test_parse_json_junk_raises_only_parse_error(obj: Any) -> None:
    with contextlib.suppress(ParseError):
        Nftables().parse_json(obj)


@given(strategies.bundles())
def test_render_json_elements_parse_back(bundles: list[Bundle]) -> None:
    """The JSON sent, read back as if listed, is the specification too."""
    spec = specify(bundles)
    listed = [c["add"] for c in Nftables().render_json(spec)["nftables"]]
    assert normalize(Nftables().parse_json({"nftables": listed})) == normalize(spec.rules)


def test_available_reports_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(name: str) -> None:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(nftmod.importlib, "import_module", broken)
    with pytest.raises(BackendUnavailable, match="apt-get install libnftables1"):
        Nftables.available()


# -- the live kernel -------------------------------------------------------------------------

FOREIGN = """\
table ip filter {
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tip saddr 198.51.100.0/24 meta mark set 0x00000099
\t}
}
table inet foreign {
\tmap ports {
\t\ttype inet_service : mark
\t\telements = { 80 : 0x00000001 }
\t}
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tmeta mark set tcp dport map @ports
\t}
}
"""


def _nft(netns: str, *argv: str, stdin: str | None = None) -> str:
    return run(["ip", "netns", "exec", netns, "nft", *argv], stdin=stdin)


def foreign_state(netns: str) -> list[str]:
    return [_nft(netns, "list", "table", *t.split()) for t in ("ip filter", "inet foreign")]


def kernel_ready() -> None:
    """Skip (fail under LVSFW_REQUIRE_KERNEL=1) unless root with ip, nft and libnftables."""
    ensure_kernel()
    try:
        Nftables.available()
    except BackendUnavailable as exc:
        require_kernel(str(exc))


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace holding foreign tables; always deleted afterwards."""
    kernel_ready()
    name = f"lvsfw-t-{secrets.token_hex(4)}"
    run(["ip", "netns", "add", name])
    try:
        _nft(name, "-f", "-", stdin=FOREIGN)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)  # noqa: S607


class Writes:
    """Records the transactions sent to libnftables (JSON, or the whole table's script)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[Union[dict[str, Any], str]] = []
        real = nftmod.Context.send

        def record(ctx: Any, command: Union[dict[str, Any], str], argv: tuple[str, ...]) -> None:
            self.sent.append(command)
            real(ctx, command, argv)

        monkeypatch.setattr(nftmod.Context, "send", record)


@pytest.mark.kernel
def test_live_apply_read_diff_remove(netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = foreign_state(netns)
    backend = Nftables(netns)
    writes = Writes(monkeypatch)
    assert backend.read() == frozenset()
    assert backend.live_state() == LiveState(False)

    spec = specify([WEB, FTP])
    backend.apply(spec)
    assert backend.read() == normalize(spec.rules)
    assert backend.live_state().intact
    assert _nft(netns, "list", "table", "inet", "lvsfw") == backend.render_spec(spec)
    # the whole table as the script nft -f reads (libnftables loads it faster than JSON)
    assert len(writes.sent) == 1 and writes.sent[0] == backend.render_spec(spec)

    backend.apply(spec)  # same again: nothing is written
    assert len(writes.sent) == 1 and backend.last_transaction is None

    web2 = Bundle("web", "192.0.2.10", "tcp:80,8443", 80)  # 443 -> 8443
    backend.apply(specify([web2, FTP]))
    assert writes.sent[-1] == {
        "nftables": [
            {"delete": nftsyntax.table_object("element", name="mark4", elem=[
                {"concat": ["192.0.2.10", "tcp", 443]}])},
            {"add": nftsyntax.table_object("element", name="mark4", elem=[
                [{"elem": {"val": {"concat": ["192.0.2.10", "tcp", 8443]},
                           "comment": "web"}}, 80]])},
        ]
    }  # fmt: skip
    assert backend.read() == normalize(specify([web2, FTP]).rules)
    assert foreign_state(netns) == before

    backend.remove()
    assert backend.read() == frozenset()
    backend.remove()  # absent: a no-op
    assert len(writes.sent) == 3  # create, one diff, one delete
    assert foreign_state(netns) == before


@pytest.mark.kernel
def test_live_masked_marks_come_and_go_with_their_chains(netns: str) -> None:
    backend = Nftables(netns)
    masked = Bundle("dns", ["192.0.2.53", "2001:db8::53"], "udp:53", "0x51/0xff")
    backend.apply(specify([WEB, masked]))
    assert backend.read() == normalize(specify([WEB, masked]).rules)
    assert backend.live_state().chains == {"mark-00000051-000000ff": (0x51, 0xFF)}
    remasked = Bundle("dns", ["192.0.2.53", "2001:db8::53"], "udp:53", "0x52/0xff")
    backend.apply(specify([WEB, remasked]))
    sent = json.dumps(backend.last_transaction)
    assert "192.0.2.10" not in sent  # WEB untouched
    assert backend.live_state().chains == {"mark-00000052-000000ff": (0x52, 0xFF)}
    backend.apply(specify([WEB]))
    assert backend.live_state().chains == {}
    assert backend.live_state().intact


@pytest.mark.kernel
def test_live_check_rejects_without_change(netns: str) -> None:
    backend = Nftables(netns)
    backend.validate(specify([WEB]))  # the table is absent: still only a dry run
    assert backend.live_state() == LiveState(False)
    backend.apply(specify([WEB]))
    listing = _nft(netns, "list", "ruleset")
    backend.validate(specify([WEB, FTP]))  # valid: accepted, not applied
    vip = ipaddress.ip_address("192.0.2.10")
    overlapping = frozenset(
        {
            MarkRule(Family.IPV4, vip, Protocol.TCP, 80, 90, 1),
            MarkRule(Family.IPV4, vip, Protocol.TCP, 85, 95, 2),
        }
    )
    with pytest.raises(CommandFailed) as failed:
        backend.validate(Specification(overlapping, frozenset()))
    assert failed.value.rc != 0 and failed.value.stderr
    assert "--check" in failed.value.argv and netns in failed.value.argv
    assert _nft(netns, "list", "ruleset") == listing


@pytest.mark.kernel
def test_live_drift_is_reported_and_repaired(netns: str) -> None:
    before = foreign_state(netns)
    backend = Nftables(netns)
    spec = specify([WEB])
    backend.apply(spec)
    _nft(netns, "add", "rule", "inet", "lvsfw", "prerouting", "meta", "mark", "set", "7")
    _nft(netns, "add", "set", "inet", "lvsfw", "extra", "{ type ipv4_addr; }")
    state = backend.live_state()
    assert not state.intact and state.rules == normalize(spec.rules)
    assert any("prerouting" in p for p in state.problems)
    assert any("extra" in p for p in state.problems)
    backend.apply(spec)  # replaces the table in one transaction
    assert backend.live_state().intact
    assert _nft(netns, "list", "table", "inet", "lvsfw") == backend.render_spec(spec)
    _nft(netns, "flush", "chain", "inet", "lvsfw", "prerouting")
    assert not backend.live_state().intact
    backend.apply(spec)
    assert backend.live_state().intact
    assert foreign_state(netns) == before


@pytest.mark.kernel
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=strategies.bundles(max_size=3), second=strategies.bundles(max_size=3))
def test_live_any_spec_round_trips_and_diffs(
    netns: str, first: list[Bundle], second: list[Bundle]
) -> None:
    backend = Nftables(netns)
    for bundles in (first, second):
        spec = specify(bundles)
        backend.apply(spec)
        state = backend.live_state()
        assert state.intact, state.problems
        assert normalize(state.rules) == normalize(spec.rules)
        backend.apply(spec)
        assert backend.last_transaction is None
    backend.remove()


PREMARK = """\
table inet premark {
\tchain pre {
\t\ttype filter hook prerouting priority mangle - 5; policy accept;
\t\tudp dport { 53, 54, 80 } meta mark set 0xabcd00ff
\t}
}
"""


@pytest.mark.kernel
def test_live_packets_masked_mark_keeps_bits_outside_the_mask() -> None:
    kernel_ready()
    vips = ["192.0.2.10", "192.0.2.53", "2001:db8::53"]
    with Lab(vips=vips, prefix="lvsfw-t") as lab:
        lab.nft(PREMARK)  # every probe arrives carrying 0xabcd00ff
        backend = Nftables(lab.director)
        full = Bundle("full", "192.0.2.10", "udp:80", 0x50)
        masked = Bundle("dns", ["192.0.2.53", "2001:db8::53"], "udp:53", "0x51/0xff")
        backend.apply(specify([full, masked]))
        probes = {
            Probe(4, "udp", "192.0.2.10", 80): 0x50,  # full mask: the whole mark
            Probe(4, "udp", "192.0.2.53", 53): 0xABCD0051,  # only the low byte changes
            Probe(6, "udp", "2001:db8::53", 53): 0xABCD0051,
            Probe(4, "udp", "192.0.2.53", 54): 0xABCD00FF,  # not bundled: untouched
        }
        seen = lab.probe(probes)
        assert seen == {p: frozenset({m}) for p, m in probes.items()}
