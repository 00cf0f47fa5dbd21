"""Issue 9, from a hostile review: deep TOML, injected file names, odd mappings, a zero lock
timeout, inverted thresholds and quadratic parsers. Each test fails on the code before it."""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvsfw import config, importers, markscan, registry
from lvsfw.config import ConfigError
from lvsfw.errors import LvsfwError, ValidationError
from lvsfw.lock import LockTimeout, lock_path, locked
from lvsfw.lvscf import _lvs_tree
from lvsfw.model import Bundle, FirewallMark, RealServer
from lvsfw.textscan import comment, lvs_tokens, nft_statements, strip_hash_comment
from tests.netlab import empty_netns
from tests.test_cli import invoke, one_error_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11 only
    import tomli as tomllib

NEWLINE_NAME = 'svc\n[director]\nfirewall = "iptables-legacy"\n'
KEEPALIVED = """\
virtual_server fwmark 80 {
    lb_algo wlc
    real_server 10.0.0.1 0 {
    }
}

virtual_server fwmark 81 {
    lb_algo rr
}
"""
RULES = (
    "table ip t {\n chain c {\n  type filter hook prerouting priority -150;\n"
    "  ip daddr 192.0.2.10 tcp dport 80 meta mark set 80\n }\n}\n"
)


# -- item 5: nesting that overflows the TOML parser ------------------------------------------


@pytest.mark.parametrize(
    "value", ["[" * 500 + "]" * 500, "{a=" * 500 + "1" + "}" * 500, "[{a=" * 400 + "1" + "}]" * 400]
)
def test_deeply_nested_toml_is_one_config_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"deep\.toml: .*nested too deeply"):
        config.loads(f"x = {value}\n", "deep.toml")
    path = tmp_path / "deep.toml"
    path.write_text(f"[[bundle]]\nname = 'w'\nvips = {value}\n")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        config.load(str(path))
    own = ["--state-file", str(tmp_path / "state.json")]  # a failed apply is recorded there
    for command in (["check"], ["apply", "--yes", *own], ["render"]):
        line = one_error_line(invoke(*command, str(path)))
        assert str(path) in line and "nested too deeply" in line


# -- item 7: nothing from a file name reaches the written TOML as live text ------------------


def test_import_file_name_with_newline_cannot_inject_toml(tmp_path: Path) -> None:
    source = tmp_path / NEWLINE_NAME
    source.write_text(KEEPALIVED)
    rules = tmp_path / ("rules\n[[bundle]]\nname = 'x'\n")
    rules.write_text(RULES)
    output = tmp_path / "out.toml"
    result = invoke("import", str(source), "--rules", str(rules), "-o", str(output))
    assert result.exit_code == 1  # mark 81 has no rule: left out, commented out
    warnings = result.stderr.splitlines()
    assert warnings and all(w.startswith("lvsfw: warning: ") for w in warnings)
    text = output.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert set(data) == {"bundle"}  # no [director] table
    assert [b["name"] for b in data["bundle"]] == ["mark80"]
    assert data["bundle"][0]["vips"] == ["192.0.2.10"]
    assert all(line.startswith("#") or "iptables-legacy" not in line for line in text.splitlines())
    assert "svc\\x0a[director]" in text  # the name is still shown, escaped
    assert str(config.loads(text).bundles[0].ports) == "tcp:80"


@given(st.text())
def test_comment_escapes_anything_into_one_valid_toml_comment(text: str) -> None:
    line = comment(text)
    assert len(f"# {line}".splitlines()) == 1 or not line
    assert tomllib.loads(f"# {line}\nx = 1\n") == {"x": 1}
    line.encode("utf-8")  # no lone surrogate left


def test_header_and_stub_notes_are_escaped() -> None:
    bundle = Bundle("w", "192.0.2.1", "tcp:80", 1)
    hostile = ["a\rb", "c\x00d", "e\u2028f", "g\udcffh", "[director]\nfirewall = 'x'"]
    text = config.dumps([bundle], header=hostile)
    assert tomllib.loads(text)["bundle"][0]["name"] == "w" and "director" not in tomllib.loads(text)
    text.encode("utf-8")
    imported = importers.import_text(KEEPALIVED, "k\n[director]\nipvs = false\n")
    assert imported.stubs
    written = imported.config_text(hostile)
    assert set(tomllib.loads(written)) == {"bundle"}


# -- item 8: mappings with keys that are not strings -------------------------------------------


def test_real_server_parse_names_unknown_keys_of_any_type() -> None:
    with pytest.raises(ValidationError) as caught:
        RealServer.parse({"address": "10.0.0.1", "x": 1, 2: 3})
    assert caught.value.field == "real server"
    assert "'x'" in caught.value.allowed and "2" in caught.value.allowed
    for value in ({2: 3}, {None: 1, "address": "10.0.0.1"}, {("a",): 1}, {b"address": "10.0.0.1"}):
        with pytest.raises(ValidationError):
            RealServer.parse(value)
    for junk in (None, [], {}, 1.5, b"10.0.0.1", object()):
        with pytest.raises(ValidationError):
            RealServer.parse(junk)
        with pytest.raises(ValidationError):
            FirewallMark.parse(junk)


# -- item 10: --lock-timeout 0 fails at once ------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "-0.5", "nan", "-inf"])
def test_lock_timeout_must_be_zero_or_more(tmp_path: Path, value: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text("")
    line = one_error_line(invoke("plan", str(path), "--lock-timeout", value))
    assert "--lock-timeout" in line and "0: fail at once" in line


@pytest.fixture
def namespace() -> Iterator[str]:
    """A throwaway, empty network namespace ``lvsfw-t-<hex>`` (as in tests/test_cli.py)."""
    with empty_netns() as name:
        yield name


@pytest.mark.kernel
def test_lock_timeout_zero_fails_at_once_when_the_lock_is_held(
    namespace: str, tmp_path: Path
) -> None:
    netns = namespace
    conf = tmp_path / "c.toml"
    conf.write_text('[[bundle]]\nname = "w"\nvips = "192.0.2.1"\nports = "tcp:80"\nmark = 1\n')
    flags = ["--netns", netns, "--no-ipvs", "--lock-dir", str(tmp_path)]
    flags += ["--state-file", str(tmp_path / "state.json"), "--lock-timeout", "0"]
    with locked(lock_path(netns, str(tmp_path)), timeout=1):
        for command in (["apply", str(conf), "--yes"], ["destroy", "--yes"]):
            started = time.monotonic()
            line = one_error_line(invoke(*command, *flags))
            assert time.monotonic() - started < 1.0, command
            assert "another lvsfw apply has held it" in line
    applied = invoke("apply", str(conf), "--yes", *flags)  # free again: 0 does not mean "never"
    assert applied.exit_code == 0, applied.stderr


def test_lock_timeout_zero_reaches_the_director(monkeypatch: pytest.MonkeyPatch) -> None:
    """No kernel needed: the Director is built with 0, not the 60 s default."""
    from lvsfw import assemble

    seen: dict[str, Any] = {}

    class Director:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.update(kwargs)
            raise LockTimeout("stop here")

    monkeypatch.setattr(assemble, "Director", Director)  # the one builder of the command
    line = one_error_line(invoke("destroy", "--yes", "--lock-timeout", "0", "--no-ipvs"))
    assert line == "lvsfw: stop here" and seen["lock_timeout"] == 0.0
    one_error_line(invoke("destroy", "--yes", "--no-ipvs"))
    assert seen["lock_timeout"] == 60.0


# -- item 11: thresholds the kernel refuses ----------------------------------------------


def test_lower_threshold_above_upper_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        RealServer("10.0.0.1", upper_threshold=10, lower_threshold=11)
    assert (caught.value.field, caught.value.value) == ("lower_threshold", 11)
    with pytest.raises(ValidationError, match=r"lower_threshold: 5 .*no upper_threshold"):
        RealServer("10.0.0.1", lower_threshold=5)
    assert RealServer("10.0.0.1", upper_threshold=10, lower_threshold=10).lower_threshold == 10
    assert RealServer("10.0.0.1", upper_threshold=10).lower_threshold == 0
    text = (
        '[[bundle]]\nname = "w"\nvips = "192.0.2.1"\nports = "tcp:80"\nmark = 1\n'
        'real_servers = [{ address = "10.0.0.1", upper_threshold = 3, lower_threshold = 4 }]\n'
    )
    with pytest.raises(ConfigError) as error:
        config.loads(text, "t.toml")
    message = str(error.value)
    assert message.startswith("t.toml:6: bundle[0] (w).real_servers[0].lower_threshold: 4 ")
    assert "at most upper_threshold (3)" in message


# -- linear parsers -----------------------------------------------------------------------


class _TooSlow(Exception):
    pass


def _alarm(signum: int, frame: Optional[FrameType]) -> None:
    raise _TooSlow


def _seconds(work: Callable[[], object], budget: float) -> float:
    """Wall time of ``work``, interrupted (as a failure) after ``budget`` seconds."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, budget)
    started = time.perf_counter()
    try:
        work()
    except _TooSlow:
        pytest.fail(f"took more than {budget:.1f} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return time.perf_counter() - started


def _scales_linearly(make: Callable[[int], Callable[[], object]], small: int) -> None:
    """10x the input takes at most ~20x the time (plus a floor for timer noise)."""
    _seconds(make(small // 10), 60)  # warm caches
    base = min(_seconds(make(small), 60) for _ in range(2))
    budget = 20 * max(base, 0.01) + 0.5
    _seconds(make(small * 10), budget)


def _listing(count: int) -> tuple[str, str]:
    from benchmarks.workload import make_bundles

    bundles = make_bundles(count)
    return (
        registry.get("keepalived")().render(bundles),
        registry.get("nftables")().render(bundles),
    )


def test_import_of_lvsfws_own_listing_is_linear() -> None:
    """``lvsfw import --rules`` of the nft listing: 500 vs 5,000 VIPs (was 9 s vs > 10 min)."""

    def make(count: int) -> Callable[[], object]:
        conf, rules = _listing(count)

        def work() -> None:
            found = markscan.scan(rules, "rules")
            assert len(importers.import_text(conf, "k", "keepalived", found).bundles) == count

        return work

    _scales_linearly(make, 500)


PATHOLOGICAL: dict[str, Callable[[int], str]] = {
    "nft anonymous set": lambda n: "table ip t {\nchain c {\nip daddr { " + "1.2.3.4, " * n + "}",
    "nft many anonymous sets": lambda n: "table ip t {\n chain c {\n x" + " { a }" * n,
    "nft unclosed tables": lambda n: "table ip t {\n" * n,
    "blank lines": lambda n: "\n" * (n * 10) + "x",
    "blanks": lambda n: " " * (n * 10) + "x",
    "lvs.cf quotes": lambda n: 'x = "\\' + '"\\' * n,
    "lvs.cf hashes": lambda n: '#"' * n,
    "lvs.cf lines": lambda n: "server x\n" * n + "{\n}\n",
    "iptables lines": lambda n: "-A PREROUTING -d 10.0.0.1 -p tcp --dport 80 -j MARK\n" * n,
    "keepalived ports": lambda n: (
        "virtual_server fwmark 1 {\n" + " real_server 10.0.0.1 80 {\n }\n" * n + "}\n"
    ),
    "keepalived includes": lambda n: "include x\n\n\n" * n,
    "toml headers": lambda n: "[" + " " * (n * 10) + "\n",
    "toml bundles": lambda n: '[[bundle]]\nname = "b"\n' * n,
}


@pytest.mark.parametrize("shape", list(PATHOLOGICAL))
def test_hostile_shapes_are_read_in_linear_time(shape: str) -> None:
    def make(count: int) -> Callable[[], object]:
        text = PATHOLOGICAL[shape](count)

        def work() -> None:
            for call in (
                lambda: markscan.scan(text, "r"),
                lambda: importers.parse_lvs_cf(text, "l"),
                lambda: importers.parse_keepalived(text, "k"),
                lambda: config.loads(text, "c"),
            ):
                with contextlib.suppress(LvsfwError):
                    call()

        return work

    _scales_linearly(make, 2000)


def test_many_bundles_of_one_name_are_named_in_linear_time() -> None:
    names = importers._Names()
    assert [names.unique("web") for _ in range(3)] == ["web", "web-2", "web-3"]
    names.taken.add("api-2")
    assert [names.unique("api") for _ in range(2)] == ["api", "api-3"]
    long = "x" * 28
    assert names.unique(long) == long and names.unique(long) == "x" * 26 + "-2"
    _scales_linearly(lambda n: lambda: [importers._Names().unique("b") for _ in range(n)], 2000)


# -- the linear readers agree with the simple ones they replace -----------------------------


def _reference_statements(text: str) -> Iterator[tuple[tuple[str, ...], int, str]]:
    """lvsfw 0.x's per-character nft reader (quadratic: re-joins its buffer per character)."""
    container = re.compile(r"^(table|chain|set|map|flowtable)\b")
    path: list[str] = []
    current: list[str] = []
    line = start = 1
    anon, quoted, in_comment = 0, False, False

    def flush() -> Iterator[tuple[tuple[str, ...], int, str]]:
        statement = " ".join("".join(current).split())
        current.clear()
        if statement:
            yield tuple(path), start, statement

    for char in text:
        if char == "\n":
            line, in_comment = line + 1, False
        if in_comment:
            continue
        if not "".join(current).strip():
            start = line
        if quoted or char == '"':
            quoted = quoted != (char == '"')
            current.append(char)
        elif char == "#":
            in_comment = True
        elif char == "{" and not anon and container.match("".join(current).strip()):
            path.append(" ".join("".join(current).split()))
            current.clear()
        elif char == "{":
            anon += 1
            current.append(char)
        elif char == "}" and anon:
            anon -= 1
            current.append(char)
        elif char == "}":
            yield from flush()
            path = path[:-1]
        elif char in ";\n" and not anon:
            yield from flush()
        else:
            current.append(" " if char == "\n" else char)
    yield from flush()


PIECES = [
    "table ", "chain ", "set ", "map ", "flowtable ", "tablex", "{", "}", ";", "\n", '"', "#",
    " ", "\t", "\x0c", "x", "a b", "=", "\\", '\\"', "server", "virtual ", "\u00a0",
]  # fmt: skip
snippets = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@given(snippets)
def test_nft_statements_agree_with_the_reference(text: str) -> None:
    assert list(nft_statements(text)) == list(_reference_statements(text))


@given(st.one_of(snippets, st.text(max_size=40)))
def test_lvs_tokens_agree_with_the_old_regular_expressions(line: str) -> None:
    line = line.splitlines()[0] if line.splitlines() else ""
    old_comment = re.sub(r'#(?=(?:[^"]*"[^"]*")*[^"]*$).*', "", line)
    assert strip_hash_comment(line) == old_comment
    old_tokens = re.findall(r'"(?:\\.|[^"\\])*"|[{}=]|[^\s{}="]+', old_comment)
    assert lvs_tokens(old_comment) == old_tokens


def test_lvs_tree_looks_ahead_past_blank_lines() -> None:
    (node,) = _lvs_tree('virtual web\n\n\n{\n fwmark = 80 # "x"\n}\n', "l")
    assert node.words == ("virtual", "web") and node.children is not None
    assert node.children[0].words == ("fwmark", "=", "80")


def test_keepalived_lines_and_warnings_are_where_they_were() -> None:
    text = "\n\ninclude a.conf\n" + KEEPALIVED.replace("10.0.0.1 0", "10.0.0.1 8080")
    sources, warnings = importers.parse_keepalived(text, "k")
    assert [s.where for s in sources] == ["k:4", "k:10"]
    assert warnings[0].startswith("k:3: 'include a.conf' is not imported")
    assert warnings[1].startswith("k:6: real server port 8080 dropped")


def test_own_table_rules_keep_their_order_and_line() -> None:
    bundles = [Bundle("a", ["192.0.2.2", "2001:db8::1"], "tcp:80,443 udp:53", 2),
               Bundle("b", "192.0.2.1", "tcp:1-100", 1)]  # fmt: skip
    text = "\n# x\n" + registry.get("nftables")().render(bundles)
    found = markscan.scan_nft(text, "r").rules
    assert {r.where for r in found} == {"r:3"}
    keys = [(r.family.value, int(r.vip), r.protocol.value, r.first_port) for r in found]
    assert keys == sorted(keys) and len(found) == 7
