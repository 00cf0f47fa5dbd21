"""The iptables-restore backends: exact text, parsing, and live rule-level tests in namespaces."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvsfw import Bundle, specify
from lvsfw.backends.iptables import (
    CHAIN,
    Iptables,
    IptablesLegacy,
    IptablesNft,
    address_text,
    parse_state,
    rule_lines,
)
from lvsfw.command import run
from lvsfw.enums import Family, Protocol
from lvsfw.errors import BackendUnavailable, CommandFailed, ParseError
from lvsfw.rules import MarkRule, normalize
from tests import strategies
from tests.contract import PacketFilterContract

MODULE = "lvsfw.backends.iptables"
FLAVOURS = [IptablesLegacy, IptablesNft]
WEB = Bundle("web", "192.0.2.10", "tcp:80,443", 80)
HEAD = (
    "# lvsfw mangle rules: load the ipset section with ipset restore -exist, then each"
    " section once with iptables-restore --noflush (ip6tables-restore for ip6tables)"
)
SET4 = (
    "-A LVSFW-PREROUTING -m set --match-set lvsfw4-legacy dst,dst"
    " -j SET --map-set lvsfw4-legacy dst,dst --map-mark"
)
RULE = "-A LVSFW-PREROUTING -d 192.0.2.10/32 -p tcp"
JUMP_LINE = "-A PREROUTING -m comment --comment lvsfw -j LVSFW-PREROUTING"


# The contract's @given tests are shared by several subclasses: hypothesis then flags
# "differing executors". Re-wrapping them per flavour keeps one executor per test object.
_SEPARATE = settings(suppress_health_check=[HealthCheck.differing_executors])


class _Contract(PacketFilterContract):
    @_SEPARATE
    @given(strategies.bundles())
    def test_render_parse_round_trip(self, bundles: list[Bundle]) -> None:
        inner = PacketFilterContract.test_render_parse_round_trip.hypothesis.inner_test  # type: ignore[attr-defined]
        inner(self, bundles)

    @_SEPARATE
    @given(strategies.junk_text)
    def test_parse_junk_raises_only_lvsfw_errors(self, text: str) -> None:
        contract = PacketFilterContract.test_parse_junk_raises_only_lvsfw_errors
        contract.hypothesis.inner_test(self, text)  # type: ignore[attr-defined]


class TestIptablesLegacyContract(_Contract):
    backend_name = "iptables-legacy"


class TestIptablesNftContract(_Contract):
    backend_name = "iptables-nft"


def own_lines(bundles: list[Bundle], family: Family = Family.IPV4) -> list[str]:
    return rule_lines(specify(bundles), family)


# --- exact rendered text -------------------------------------------------------------------


def test_seed_text() -> None:
    text = IptablesLegacy().render([WEB])
    assert text.splitlines() == [
        HEAD,
        "# ipset",
        "create lvsfw4-legacy hash:ip,port family inet hashsize 1024 maxelem 65536 comment skbinfo",
        'add lvsfw4-legacy 192.0.2.10,tcp:80 comment "web" skbmark 0x50',
        'add lvsfw4-legacy 192.0.2.10,tcp:443 comment "web" skbmark 0x50',
        "# iptables",
        "*mangle",
        ":LVSFW-PREROUTING - [0:0]",
        SET4,
        "-A LVSFW-PREROUTING -m set --match-set lvsfw4-legacy dst,dst -j RETURN",
        JUMP_LINE,
        "COMMIT",
    ]
    assert IptablesNft().render([WEB]) == text.replace("-legacy", "-nft")


def test_ftp_range_text() -> None:
    ftp = Bundle("ftp", "192.0.2.10", "tcp:21,10000-20000", 21, persistence=300)
    assert own_lines([ftp]) == [
        f'{RULE} -m multiport --dports 21,10000:20000 -m comment --comment "lvsfw:ftp"'
        " -j MARK --set-xmark 0x15/0xffffffff"
    ]


def test_single_ports_and_ranges_use_protocol_match() -> None:
    bundles = [
        Bundle("dns", "192.0.2.10", "udp:53", 53),
        Bundle("s", "192.0.2.10", "sctp:100-200", "0x5/0xff"),
    ]
    tail = "-m comment --comment"
    assert own_lines(bundles) == [
        f'-A {CHAIN} -d 192.0.2.10/32 -p sctp -m sctp --dport 100:200 {tail} "lvsfw:s"'
        " -j MARK --set-xmark 0x5/0xff",
        f'-A {CHAIN} -d 192.0.2.10/32 -p udp -m udp --dport 53 {tail} "lvsfw:dns"'
        " -j MARK --set-xmark 0x35/0xffffffff",
    ]


def test_more_than_fifteen_slots_split() -> None:
    ports = ",".join(str(p) for p in range(1000, 1040, 2))  # 20 single ports
    lines = own_lines([Bundle("many", "192.0.2.10", f"tcp:{ports}", 7)])
    dports = [line.split("--dports ")[1].split()[0].split(",") for line in lines]
    assert [len(d) for d in dports] == [15, 5]
    ranges = ",".join(f"{p}-{p + 5}" for p in range(2000, 2100, 10))  # 10 ranges: 20 slots
    lines = own_lines([Bundle("r", "192.0.2.10", f"tcp:1,{ranges}", 7)])
    dports = [line.split("--dports ")[1].split()[0].split(",") for line in lines]
    assert dports[0] == ["1", *[f"{p}:{p + 5}" for p in range(2000, 2070, 10)]]  # 1 + 7*2
    assert dports[1] == [f"{p}:{p + 5}" for p in range(2070, 2100, 10)]


def test_ipv6_section_and_masked_mark() -> None:
    bundle = Bundle("dual", ["192.0.2.10", "2001:db8::10"], "tcp:443", "0x100/0xff00")
    text = IptablesNft().render([bundle])
    sets, chains = text.split("# iptables\n")
    v4, v6 = chains.split("# ip6tables\n")
    assert 'add lvsfw6-nft 2001:db8::10,tcp:443 comment "dual" skbmark 0x100/0xff00' in sets
    assert "add lvsfw4-nft 192.0.2.10,tcp:443" in sets
    assert "2001:db8" not in v4
    assert v6.splitlines() == [
        "*mangle",
        ":LVSFW-PREROUTING - [0:0]",
        SET4.replace("lvsfw4-legacy", "lvsfw6-nft"),
        "-A LVSFW-PREROUTING -m set --match-set lvsfw6-nft dst,dst -j RETURN",
        JUMP_LINE,
        "COMMIT",
    ]
    ranges = IptablesNft().render([Bundle("r", "2001:db8::10", "tcp:1-9", "0x100/0xff00")])
    assert "# ipset" not in ranges and "--match-set" not in ranges
    assert f"-A {CHAIN} -d 2001:db8::10/128 -p tcp -m tcp --dport 1:9 -m comment" in ranges


def test_v6_only_and_empty() -> None:
    text = IptablesLegacy().render([Bundle("v6", "2001:db8::1", "udp:53", 1)])
    assert "# iptables\n" not in text
    assert "# ip6tables\n*mangle" in text
    empty = IptablesLegacy().render_spec(specify([]))
    assert IptablesLegacy().parse(empty) == frozenset()


@given(strategies.bundles())
def test_lines_fit_multiport(bundles: list[Bundle]) -> None:
    spec = specify(bundles)
    for family in Family:
        for line in rule_lines(spec, family):
            if "--dports" in line:
                entries = line.split("--dports ")[1].split()[0].split(",")
                assert sum(2 if ":" in e else 1 for e in entries) <= 15
                assert len(entries) > 1


@given(strategies.bundles())
def test_family_texts_round_trip(bundles: list[Bundle]) -> None:
    spec = specify(bundles)
    backend = IptablesLegacy()
    for family in Family:
        text = backend.family_text(spec, family)
        state = parse_state(text)
        rules = backend.parse(backend.ipset_text(spec) + text)
        assert normalize(rules) == normalize(r for r in spec.rules if r.family == family)
        assert state.rules == {r for r in rules if r.first_port != r.last_port}
        assert state.jumps == 1
        assert state.chain_present


@pytest.mark.parametrize(
    ("address", "text"),
    [
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("::192.0.2.1", "::192.0.2.1"),
        ("::b13", "::b13"),
        ("::1", "::1"),
        ("2001:db8::10", "2001:db8::10"),
        ("192.0.2.1", "192.0.2.1"),
    ],
)
def test_address_text_matches_inet_ntop(address: str, text: str) -> None:
    assert address_text(ipaddress.ip_address(address)) == text


# --- parsing --------------------------------------------------------------------------------

SAVED = f"""# Generated by iptables-save v1.8.9
*filter
:INPUT ACCEPT [0:0]
:{CHAIN} - [0:0]
-A {CHAIN} -j ACCEPT
COMMIT
*mangle
:PREROUTING ACCEPT [10:20]
:FOREIGN - [0:0]
:{CHAIN} - [0:0]
-A PREROUTING -i lo -j MARK --set-xmark 0x7/0xffffffff
{JUMP_LINE}
-A PREROUTING -j FOREIGN
-A FOREIGN -d 192.0.2.10/32 -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x9/0xffffffff
[3:4] -A {CHAIN} -d 192.0.2.10/32 -p udp -m multiport --dports 5,7:9 -m comment \
--comment "lvsfw:x" -j MARK --set-mark 0x5/0xf0
COMMIT
"""


def test_parse_save_ignores_foreign() -> None:
    state = parse_state(SAVED)
    vip = Bundle("x", "192.0.2.10", "udp:5", 1).vips[0]
    rule = MarkRule(Family.IPV4, vip, Protocol.UDP, 5, 5, 5, 0xF5)  # set-mark V/M: V|M
    assert state.rules == {rule, MarkRule(Family.IPV4, vip, Protocol.UDP, 7, 9, 5, 0xF5)}
    assert state.chain_present
    assert state.jumps == 1
    assert state.prerouting[0] == "-A PREROUTING -i lo -j MARK --set-xmark 0x7/0xffffffff"
    assert state.foreign_before_jump == state.prerouting[:1]
    assert state.entries[0][1] == "lvsfw:x"


def test_foreign_lines_never_fail_parsing() -> None:
    odd = "-m comment --comment it's -j ACCEPT"
    text = (
        f"*filter\n-A INPUT {odd}\nCOMMIT\n"
        f"*mangle\n-A PREROUTING {odd}\n-A X {odd}\n{JUMP_LINE}\nCOMMIT\n"
    )
    state = parse_state(text)
    assert state.jumps == 1
    assert state.foreign_before_jump == (f"-A PREROUTING {odd}",)


@pytest.mark.parametrize(
    "tail",
    [
        "-p tcp -m tcp --dport 80 -m comment --comment x -j ACCEPT",
        "! -d 192.0.2.10/32 -p tcp -m tcp --dport 80 -m comment --comment x -j MARK --set-mark 1",
        "-d 192.0.2.0/24 -p tcp -m tcp --dport 80 -m comment --comment x -j MARK --set-mark 1",
        "-d 192.0.2.1 -p tcp -m tcp --dport 80 -i eth0 -m comment --comment x -j MARK --set-mark 1",
        "-d 192.0.2.1 -p tcp -m multiport --dport 80 -m comment --comment x -j MARK --set-mark 1",
        "-d 192.0.2.1 -p tcp -m udp --dport 80 -m comment --comment x -j MARK --set-mark 1",
        "-d 192.0.2.1 -p tcp -m tcp --dport 0 -m comment --comment x -j MARK --set-mark 1",
        "-d 192.0.2.1 -p tcp -m tcp --dport 9:8 -m comment --comment x -j MARK --set-mark 1",
        "-d 192.0.2.1 -p icmp -m tcp --dport 8 -m comment --comment x -j MARK --set-mark 1",
        "-d 192.0.2.1 -p tcp -m tcp --dport 8 -m comment --comment x -j MARK --set-xmark 0x3/0x1",
        "-d 192.0.2.1 -p tcp -m tcp --dport 8 -m comment --comment x -j MARK --set-xmark 0",
        "-d 192.0.2.1 -p tcp -m tcp --dport 8 -j MARK --set-xmark 0x1",
        "-d 192.0.2.1 -p tcp -m tcp --dport 8 -m comment --comment x -j MARK",
        "-d 192.0.2.1 -d 192.0.2.2 -p tcp -m tcp --dport 8 -j MARK --set-xmark 0x1",
        '-d 192.0.2.1 -p tcp -m tcp --dport 8 -m comment --comment "x -j MARK --set-xmark 1',
    ],
)
def test_parse_rejects_unexpected_own_rules(tail: str) -> None:
    text = f"*mangle\n:{CHAIN} - [0:0]\n-A {CHAIN} {tail}\nCOMMIT\n"
    with pytest.raises(ParseError):
        IptablesLegacy().parse(text)
    if '"x' not in tail:
        assert parse_state(text, strict=False).unknown == (f"-A {CHAIN} {tail}",)


@pytest.mark.parametrize("text", ["hello\n", "-A PREROUTING -j ACCEPT\n", f"*mangle\n-I {CHAIN} 1"])
def test_parse_rejects_non_save_text(text: str) -> None:
    with pytest.raises(ParseError):
        IptablesLegacy().parse(text)


@given(
    strategies.bundles(max_size=2),
    st.lists(st.sampled_from(["!", "-i", "lo", "-m", "tcp", "--dport", "1:", "'", "-j"])),
    st.randoms(use_true_random=False),
)
def test_mutated_rules_raise_parse_error_only(
    bundles: list[Bundle], junk: list[str], rnd: random.Random
) -> None:
    text = IptablesLegacy().render(bundles)
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(f"-A {CHAIN}"))
    words = lines[index].split(" ")
    for word in junk:
        words.insert(rnd.randrange(2, len(words) + 1), word)
    lines[index] = " ".join(words)
    with contextlib.suppress(ParseError):
        IptablesLegacy().parse("\n".join(lines))


def test_available_names_missing_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name, path=None: None)
    with pytest.raises(BackendUnavailable, match="apt-get install iptables"):
        IptablesNft.available()


# --- live, rule-level, in throwaway namespaces ----------------------------------------------

FOREIGN = """*mangle
:FOREIGN - [0:0]
-A PREROUTING -i lo -j MARK --set-xmark 0x7/0xffffffff
-A PREROUTING -p tcp -m tcp --dport 22 -j FOREIGN
-A FOREIGN -j ACCEPT
-A OUTPUT -j MARK --set-xmark 0x3/0xff
COMMIT
*filter
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
"""


def _ready(cls: type[Iptables]) -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) not found"
    try:
        cls.available()
    except BackendUnavailable as exc:
        return str(exc)
    return None


@pytest.fixture(params=FLAVOURS, ids=lambda c: c.name)
def live(request: pytest.FixtureRequest) -> Iterator[Iptables]:
    """A backend of each flavour bound to a fresh namespace holding foreign rules."""
    cls: type[Iptables] = request.param
    reason = _ready(cls)
    if reason is not None:
        if os.environ.get("LVSFW_REQUIRE_KERNEL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    netns = f"lvsfw-t-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)  # noqa: S607
    try:
        backend = cls(netns=netns)
        for family in Family:
            restore = cls.binaries[family][0]
            run([restore, "-w", "--noflush"], netns=netns, stdin=FOREIGN)
        yield backend
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=True)  # noqa: S607


def snapshot(backend: Iptables, family: Family) -> list[str]:
    """Every table of ``family`` as iptables-save prints it, comments dropped."""
    program = backend.binaries[family][1]
    text = run([program], netns=backend.netns)
    return [line for line in text.splitlines() if not line.startswith("#")]


def foreign(lines: list[str]) -> list[str]:
    return [line for line in lines if CHAIN not in line]


class Recorder:
    """Wraps ``run`` to record which programs were called."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[str]] = []
        real = run

        def record(argv: list[str], **kwargs: object) -> str:
            self.calls.append(list(argv))
            return real(argv, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(f"{MODULE}.run", record)

    def writes(self) -> list[list[str]]:
        """Restores and ipset writes (``ipset restore`` without ``-exist`` only lists)."""
        return [
            c
            for c in self.calls
            if (c[0].endswith("-restore") and "--test" not in c) or c[:2] == ["ipset", "-exist"]
        ]


def bundles_v1() -> list[Bundle]:
    ports = "tcp:" + ",".join(str(p) for p in range(3000, 3040, 2))
    return [
        Bundle("web", ["192.0.2.10", "2001:db8::10"], "tcp:80,443", 80),
        Bundle("ftp", "192.0.2.11", "tcp:21,10000-20000", 21, persistence=300),
        Bundle("dns", ["192.0.2.12", "2001:db8::12"], "udp:53 tcp:53", "0x500/0xff00"),
        Bundle("sig", "2001:db8::13", "sctp:2905,3000-3010", 2905),
        Bundle("many", "192.0.2.14", ports, 9),
    ]


@pytest.mark.kernel
def test_live_apply_idempotent_change_remove(
    live: Iptables, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {f: snapshot(live, f) for f in Family}
    spec = specify(bundles_v1())
    live.validate(spec)
    live.apply(spec)
    assert normalize(live.read()) == normalize(spec.rules)
    for family in Family:
        state = live.state(family, strict=True)
        assert state.jumps == 1
        assert state.foreign_before_jump == tuple(
            line for line in before[family] if line.startswith("-A PREROUTING")
        )
        assert foreign(snapshot(live, family)) == foreign(before[family])
    # iptables-save prints back exactly what lvsfw renders
    for family in Family:
        saved = [line for line in snapshot(live, family) if line.startswith(f"-A {CHAIN}")]
        assert saved == live.chain_lines(spec, family, with_set=True)

    recorder = Recorder(monkeypatch)
    live.apply(spec)
    assert recorder.writes() == []

    changed = specify([bundles_v1()[1], Bundle("dns", "192.0.2.12", "udp:53,5353", 53)])
    recorder.calls.clear()
    live.apply(changed)
    # v4 set edited (its chain is unchanged), v6 chain removed, then the v6 set destroyed
    assert [c[0] for c in recorder.writes()] == ["ipset", live.binaries[Family.IPV6][0], "ipset"]
    assert len([c for c in recorder.calls if c[0].endswith("-save")]) == 2
    assert normalize(live.read()) == normalize(changed.rules)
    assert not live.state(Family.IPV6).chain_present
    assert live.state(Family.IPV4).jumps == 1

    live.remove()
    for family in Family:
        assert snapshot(live, family) == before[family]
    recorder.calls.clear()
    live.remove()
    assert recorder.writes() == []
    assert live.read() == frozenset()
    assert not live.set_list() & set(live.set_names.values())


@pytest.mark.kernel
def test_live_repairs_tampering(live: Iptables) -> None:
    spec = specify([WEB, Bundle("v6", "2001:db8::1", "udp:53", 53)])
    live.apply(spec)
    for family in Family:
        tamper = f"*mangle\n-A {CHAIN} -j ACCEPT\n{JUMP_LINE}\nCOMMIT\n"
        run([live.binaries[family][0], "-w", "--noflush"], netns=live.netns, stdin=tamper)
        state = live.state(family)
        assert state.unknown == (f"-A {CHAIN} -j ACCEPT",)
        assert state.jumps == 2
    # what lvsfw does not understand in its own chain is drift to repair, not a crash
    assert normalize(live.read()) == normalize(spec.rules)
    assert any(f"-A {CHAIN} -j ACCEPT" in f.detail for f in live.findings(spec))
    live.apply(spec)
    assert normalize(live.read()) == normalize(spec.rules)
    assert not any("unexpected" in f.detail for f in live.findings(spec))
    assert all(live.state(f).jumps == 1 for f in Family)
    # own chain emptied behind lvsfw's back: the next apply refills it
    run([live.binaries[Family.IPV4][0], "-w", "--noflush"], netns=live.netns,
            stdin=f"*mangle\n-F {CHAIN}\nCOMMIT\n")  # fmt: skip
    assert live.state(Family.IPV4).rules == frozenset()
    live.apply(spec)
    assert normalize(live.read()) == normalize(spec.rules)
    live.remove()
    assert all(not live.state(f).chain_present for f in Family)


@pytest.mark.kernel
def test_live_check_reports_tool_stderr(live: Iptables, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = [f"-A {CHAIN} -d 192.0.2.1/32 -p tcp -m tcp --dport 70000 -j MARK --set-mark 1"]
    monkeypatch.setattr(f"{MODULE}.rule_lines", lambda spec, family, ranges_only: bad)
    with pytest.raises(CommandFailed, match="70000") as info:
        live.validate(specify([WEB]))
    assert "Error occurred at line" in info.value.stderr


@pytest.mark.kernel
def test_live_failing_family_changes_nothing_there_and_reapply_converges(
    live: Iptables, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No separate --test: each family's restore is atomic; the Director's undo (or the next
    apply) puts the other family right."""
    before = {f: snapshot(live, f) for f in Family}
    spec = specify([Bundle("dual", ["192.0.2.1", "2001:db8::1"], "tcp:80", 1)])
    with monkeypatch.context() as patch:
        broken = {**live.binaries, Family.IPV6: ("false", live.binaries[Family.IPV6][1])}
        patch.setattr(live, "binaries", broken)
        with pytest.raises(CommandFailed):
            live.apply(spec)
    assert snapshot(live, Family.IPV6) == before[Family.IPV6]
    live.apply(spec)
    assert live.read() == spec.rules


@pytest.mark.kernel
@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bundles=strategies.bundles(max_size=3))
def test_live_random_specs_round_trip(
    live: Iptables, monkeypatch: pytest.MonkeyPatch, bundles: list[Bundle]
) -> None:
    """The kernel accepts every generated spec, reads it back, and a re-apply writes nothing."""
    spec = specify(bundles)
    live.apply(spec)
    assert normalize(live.read()) == normalize(spec.rules)
    for family in Family:
        saved = [line for line in live.save(family).splitlines() if line.startswith("-A LVSFW")]
        with_set = any(r.family == family and r.first_port == r.last_port for r in spec.rules)
        assert saved == live.chain_lines(spec, family, with_set)  # save prints what lvsfw renders
    with monkeypatch.context() as patch:
        recorder = Recorder(patch)
        live.apply(spec)
        assert recorder.writes() == []
