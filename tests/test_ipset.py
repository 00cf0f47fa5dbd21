"""ipset classification of the iptables backends: set text, parsing, load plans, and live
behaviour (foreign sets untouched, O(change) writes, swap of whole sets, removal order)."""

from __future__ import annotations

import ipaddress

import pytest

from lvsfw import Bundle, specify
from lvsfw.backends import ipset
from lvsfw.backends.iptables import Iptables, IptablesLegacy
from lvsfw.command import run
from lvsfw.enums import Family, Protocol
from lvsfw.errors import BackendUnavailable, ParseError
from lvsfw.rules import MarkRule
from tests.test_iptables import Recorder, live  # noqa: F401 -- the fixture

V4 = ipaddress.ip_address("192.0.2.10")
NAME = "lvsfw4-legacy"
SAVED = f"""create foreign hash:ip family inet hashsize 1024 maxelem 65536
add foreign 192.0.2.1
create {NAME} hash:ip,port family inet hashsize 1024 maxelem 65536 comment skbinfo bucketsize 12
add {NAME} 192.0.2.10,tcp:80 comment "web" skbmark 0x50
add {NAME} 192.0.2.10,udp:53 skbmark 0x500/0xff00
"""


def test_parse_sets_reads_owned_sets_only() -> None:
    sets = ipset.parse_sets(SAVED.splitlines(), [NAME])
    assert list(sets) == [NAME]
    state = sets[NAME]
    assert state.problem(Family.IPV4) is None
    assert state.problem(Family.IPV6) is not None
    assert state.room() == 65536
    assert state.members == {
        (V4, Protocol.TCP, 80): (0x50, 0xFFFFFFFF, "web"),
        (V4, Protocol.UDP, 53): (0x500, 0xFF00, ""),
    }
    assert state.rules(Family.IPV4) == {
        MarkRule(Family.IPV4, V4, Protocol.TCP, 80, 80, 0x50),
        MarkRule(Family.IPV4, V4, Protocol.UDP, 53, 53, 0x500, 0xFF00),
    }


@pytest.mark.parametrize(
    "member",
    [
        "192.0.2.10,tcp:80",  # no skbmark
        "192.0.2.10,tcp:80 skbmark 0x0",
        "192.0.2.10,tcp:80 skbmark 0x3/0x1",
        "192.0.2.10,icmp:8 skbmark 0x1",
        "192.0.2.10,tcp:0 skbmark 0x1",
        "192.0.2.10,tcp:80 skbmark 0x1 timeout 5",
        "nonsense,tcp:80 skbmark 0x1",
        '192.0.2.10,tcp:80 comment "x skbmark 0x1',
    ],
)
def test_parse_sets_rejects_members_lvsfw_did_not_write(member: str) -> None:
    lines = [f"add {NAME} {member}"]
    with pytest.raises(ParseError):
        ipset.parse_sets(lines, [NAME])
    assert ipset.parse_sets(lines, [NAME], strict=False)[NAME].unknown == (lines[0],)
    assert ipset.parse_sets(lines, ["other"]) == {}  # a foreign set is never parsed


def test_member_text_matches_ipset_save() -> None:
    mapped = ipaddress.ip_address("::ffff:192.0.2.1")
    assert ipset.member_text((mapped, Protocol.SCTP, 9)) == "::ffff:192.0.2.1,sctp:9"
    line = ipset.add_line(NAME, (V4, Protocol.UDP, 53), (0x500, 0xFF00, ""))
    assert line == f"add {NAME} 192.0.2.10,udp:53 skbmark 0x500/0xff00"


def test_create_line_sizes_to_the_content() -> None:
    assert "hashsize 1024 maxelem 65536 " in ipset.create_line(NAME, Family.IPV4, 10)
    big = ipset.create_line(NAME, Family.IPV6, 40000)
    assert "family inet6 hashsize 65536 maxelem 131072 comment skbinfo" in big


def members(count: int, mark: int = 1) -> dict[ipset.Key, ipset.Value]:
    base = int(V4)
    return {
        (ipaddress.ip_address(base + i), Protocol.TCP, 80): (mark, 0xFFFFFFFF, f"b{i}")
        for i in range(count)
    }


def live_set(content: dict[ipset.Key, ipset.Value], header: str = "") -> ipset.SetState:
    words = header or "hash:ip,port family inet hashsize 1024 maxelem 65536 comment skbinfo"
    return ipset.SetState(NAME, tuple(words.split()), content)


def test_load_lines_small_change_is_del_and_add_only() -> None:
    have = members(1000)
    want = dict(have)
    gone = next(iter(want))
    del want[gone]
    new = (ipaddress.ip_address("198.51.100.1"), Protocol.UDP, 53)
    want[new] = (7, 0xFFFFFFFF, "new")
    changed = next(iter(want))
    want[changed] = (9, 0xFFFFFFFF, "b1")
    lines = ipset.load_lines(NAME, Family.IPV4, want, live_set(have), {NAME})
    assert sorted(lines) == sorted([
        f"del {NAME} {ipset.member_text(gone)}",
        f'add {NAME} 198.51.100.1,udp:53 comment "new" skbmark 0x7',
        f'add {NAME} {ipset.member_text(changed)} comment "b1" skbmark 0x9',
    ])  # fmt: skip
    assert ipset.load_lines(NAME, Family.IPV4, have, live_set(have), {NAME}) == []


def test_load_lines_whole_set_is_swapped_in_or_renamed() -> None:
    want = members(3)
    fresh = ipset.load_lines(NAME, Family.IPV4, want, None, set())
    assert fresh[0].startswith(f"create {NAME}-new hash:ip,port family inet")
    assert fresh[-1] == f"rename {NAME}-new {NAME}"
    assert len(fresh) == 5
    big = ipset.load_lines(NAME, Family.IPV4, members(1000, 2), live_set(members(1000)), {NAME})
    assert big[-2:] == [f"swap {NAME}-new {NAME}", f"destroy {NAME}-new"]
    old = "hash:ip,port family inet hashsize 1024 maxelem 65536 skbinfo"  # no comment
    lines = ipset.load_lines(NAME, Family.IPV4, want, live_set({}, old), {NAME})
    assert lines[-2:] == [f"swap {NAME}-new {NAME}", f"destroy {NAME}-new"]
    small = "hash:ip,port family inet hashsize 1024 maxelem 2 comment skbinfo"
    lines = ipset.load_lines(NAME, Family.IPV4, want, live_set({}, small), {NAME})
    assert "maxelem 65536" in lines[0]


def test_available_requires_ipset_and_kernel_support(monkeypatch: pytest.MonkeyPatch) -> None:
    real = __import__("shutil").which
    monkeypatch.setattr("shutil.which", lambda n, path=None: None if n == "ipset" else real(n))
    with pytest.raises(BackendUnavailable, match="apt-get install ipset"):
        IptablesLegacy.available()
    monkeypatch.setattr("shutil.which", lambda n, path=None: f"/usr/sbin/{n}")
    monkeypatch.setattr("lvsfw.backends.ipset._module", lambda name: name == "ip_set")
    monkeypatch.setattr("builtins.open", _no_file)
    with pytest.raises(BackendUnavailable, match="xt_set"):
        IptablesLegacy.available()


def _no_file(*args: object, **kwargs: object) -> object:
    raise OSError("absent")


# --- live -----------------------------------------------------------------------------------

FOREIGN_SETS = "create lvsfw4 hash:ip family inet\nadd lvsfw4 192.0.2.99\ncreate keep hash:net\n"


def sets_text(backend: Iptables) -> str:
    return run(["ipset", "save"], netns=backend.netns)


def foreign_sets(text: str) -> list[str]:
    return [x for x in text.splitlines() if "-legacy" not in x and "-nft" not in x]


def many(count: int, extra: str = "") -> list[Bundle]:
    base = int(ipaddress.ip_address("10.64.0.0"))
    return [
        Bundle(
            f"b{i}",
            str(ipaddress.ip_address(base + i)),
            f"tcp:80,443{extra if i == 7 else ''}",
            i + 1,
        )
        for i in range(count)
    ]


@pytest.mark.kernel
def test_live_sets_change_by_member_and_leave_foreign_sets(
    live: Iptables,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run(["ipset", "restore"], netns=live.netns, stdin=FOREIGN_SETS)
    before = foreign_sets(sets_text(live))
    live.apply(specify(many(300)))
    assert live.read() == specify(many(300)).rules
    recorder = Recorder(monkeypatch)
    changed = specify(many(300, ",8443"))
    live.apply(changed)
    writes = recorder.writes()
    assert [c[0] for c in writes] == ["ipset"]  # the chain is untouched
    assert [c for c in recorder.calls if c[0].endswith("-save")] != []
    assert len(recorder.calls) == 5  # 2 saves, ipset list -n, ipset listing, 1 write
    assert live.read() == changed.rules
    assert live.snapshot().owners[next(r for r in changed.rules if r.first_port == 8443)] == "b7"
    # a large change swaps a whole new copy in
    recorder.calls.clear()
    remarked = specify([Bundle(b.name, b.vips, "tcp:80,443", b.mark.value + 1000)
                        for b in many(300)])  # fmt: skip
    live.apply(remarked)
    assert live.read() == remarked.rules
    assert f"{live.set_names[Family.IPV4]}-new" not in live.set_list()
    live.remove()
    assert foreign_sets(sets_text(live)) == before


@pytest.mark.kernel
def test_live_damaged_set_is_found_and_repaired(live: Iptables) -> None:  # noqa: F811
    spec = specify([Bundle("web", ["192.0.2.10", "2001:db8::10"], "tcp:80,443 tcp:9-10", 80)])
    live.apply(spec)
    name = live.set_names[Family.IPV6]
    run(["ipset", "del", name, "2001:db8::10,tcp:443"], netns=live.netns)
    assert len(live.read()) == len(spec.rules) - 1
    live.apply(spec)
    assert live.read() == spec.rules
    run(["ipset", "add", name, "2001:db8::10,udp:1", "skbprio", "1:2"], netns=live.netns)
    assert live.read() == spec.rules  # the member it cannot read is drift, not a crash
    assert any("unexpected" in f.detail for f in live.findings(spec))
    live.apply(spec)
    assert live.read() == spec.rules and not live.findings(spec)
    # the chain no longer classifies through the set: found, repaired
    text = f"*mangle\n-D LVSFW-PREROUTING -m set --match-set {name} dst,dst -j SET --map-set {name} dst,dst --map-mark\nCOMMIT\n"  # noqa: E501
    run([live.binaries[Family.IPV6][0], "--noflush"], netns=live.netns, stdin=text)
    assert any("does not classify" in f.detail for f in live.findings(spec))
    live.apply(spec)
    assert live.read() == spec.rules and not live.findings(spec)
    live.remove()
    assert live.read() == frozenset() and name not in live.set_list()
