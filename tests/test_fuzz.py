"""Fuzzers (issue 9): junk thrown at every parser lvsfw has must come back as an LvsfwError.

Random text, random bytes read as latin-1, random TOML-ish documents and random Python values
(dicts with non-str keys among them) go to config loading, every ``.parse`` of the model, the
model's constructors, every importer entry point and the rule scanners. Only
:class:`lvsfw.errors.LvsfwError` subclasses may escape: never TypeError, KeyError,
RecursionError, UnicodeError... Bounded by the hypothesis profile (``HYPOTHESIS_PROFILE=ci``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from lvsfw import config, importers, markscan
from lvsfw.config import BUNDLE_KEYS, DIRECTOR_KEYS, SERVER_KEYS
from lvsfw.errors import LvsfwError
from lvsfw.lvscf import parse_lvs_cf
from lvsfw.model import Bundle, FirewallMark, RealServer, VirtualService, parse_address

# -- generators ---------------------------------------------------------------------------

#: Pieces of the languages being parsed, so random text often gets past the first token.
WORDS = [
    "table", "inet", "ip", "ip6", "lvsfw", "chain", "set", "map", "elements", "=", "{", "}",
    ";", "\n", " ", "\t", '"', "#", "\\", ",", ":", ".", "/", "-", "meta", "mark", "set",
    "0x50", "80", "0", "-1", "99999999999", "ip daddr", "tcp dport", "th dport", "@s",
    "meta l4proto", "192.0.2.1", "2001:db8::1", "10.0.0.0/8", "-A", "-I", "PREROUTING",
    "-t", "mangle", "-d", "-p", "tcp", "udp", "sctp", "--dport", "--dports", "-j", "MARK",
    "SET", "--set-mark", "--set-xmark", "--or-mark", "--map-set", "--map-mark", "--match-set",
    "dst,dst", "-m", "set", "add", "create", "skbmark", "comment", "iptables", "!",
    "virtual", "server", "network", "nat", "direct", "fwmark", "address", "port", "protocol",
    "persistent", "pmask", "scheduler", "active", "weight", "virtual_server", "fwmark",
    "real_server", "lb_algo", "lb_kind", "DR", "NAT", "include", "group", "ip_family",
    "inet6", "persistence_timeout", "uthreshold", "lthreshold", "[[bundle]]", "[director]",
    "name", "vips", "ports", "real_servers", "firewall", "'", "[", "]", "\x00", "\u2028",
    "\r", "\x0c", "٣", "é",
]  # fmt: skip
texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(WORDS), max_size=80).map(" ".join),
    st.lists(st.sampled_from(WORDS), max_size=80).map("".join),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.sampled_from(["10.0.0.1", "2001:db8::1", "tcp:80", "wlc", "masq", "0x50/0xff", "24"]),
    st.binary(max_size=10),
)
#: Any Python value, dicts with non-str keys and deep nesting included.
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(scalars, st.sampled_from(list(SERVER_KEYS))), inner, max_size=4),
    ),
    max_leaves=20,
)
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["10.0.0.1", "2001:db8::1", "tcp:80,443", "udp:53", "wlc", "masq", "80"]),
    st.dates(),
    st.datetimes(),
    st.times(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from([*SERVER_KEYS, "x", "address"]), inner, max_size=4),
    ),
    max_leaves=15,
)


def _table(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from([*keys, "x", "Name"]), toml_values, max_size=8)


documents = st.fixed_dictionaries(
    {},
    optional={
        "director": st.one_of(_table(list(DIRECTOR_KEYS)), toml_values),
        "bundle": st.one_of(st.lists(_table(list(BUNDLE_KEYS)), max_size=3), toml_values),
        "junk": toml_values,
    },
).map(tomli_w.dumps)


def only_lvsfw_errors(call: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    """Run ``call``; any exception but an LvsfwError fails the test (with the input)."""
    with contextlib.suppress(LvsfwError):
        call(*args, **kwargs)


# -- config --------------------------------------------------------------------------------


@given(texts)
def test_config_text(text: str) -> None:
    only_lvsfw_errors(config.loads, text, "fuzz.toml")


@given(documents)
def test_config_documents(text: str) -> None:
    only_lvsfw_errors(config.loads, text, "fuzz.toml")


@given(st.integers(1, 1500), st.sampled_from(["[", "{a=", "[{a="]))
def test_config_nesting(depth: int, opener: str) -> None:
    closer = {"[": "]", "{a=": "}", "[{a=": "}]"}[opener]
    text = "x = " + opener * depth + "1" + closer * depth + "\n"
    only_lvsfw_errors(config.loads, "[[bundle]]\nvips = " + text[4:], "deep.toml")
    only_lvsfw_errors(config.loads, text, "deep.toml")


@given(st.binary(max_size=200))
def test_config_file_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "c.toml"
    path.write_bytes(data)
    only_lvsfw_errors(config.load, str(path))


# -- the model -----------------------------------------------------------------------------


@given(values)
def test_model_parse(value: object) -> None:
    only_lvsfw_errors(RealServer.parse, value)
    only_lvsfw_errors(FirewallMark.parse, value)
    only_lvsfw_errors(parse_address, "address", value)


@given(st.dictionaries(st.sampled_from([*SERVER_KEYS, "x"]), values, max_size=6))
def test_model_real_server_fields(fields: dict[str, Any]) -> None:
    """``.parse`` takes any mapping; the constructor any values of its own keywords (a
    missing or unknown keyword is a Python call error, not bad input)."""
    only_lvsfw_errors(RealServer.parse, fields)
    keywords = {k: v for k, v in fields.items() if k in SERVER_KEYS}
    only_lvsfw_errors(lambda: RealServer(**{"address": "10.0.0.1", **keywords}))


@given(st.dictionaries(st.sampled_from([*BUNDLE_KEYS, "x", "service"]), values, max_size=9))
def test_model_bundle_fields(fields: dict[str, Any]) -> None:
    required = {"name": "b", "vips": "192.0.2.1", "ports": "tcp:80", "mark": 1}
    only_lvsfw_errors(lambda: Bundle(**{**required, **fields}))
    model_keys = {"vips", "ports", "mark", "name", "x", "service"}
    service = {k: v for k, v in fields.items() if k not in model_keys}
    only_lvsfw_errors(lambda: VirtualService(**service))


# -- importers and scanners ----------------------------------------------------------------


@given(texts, st.sampled_from(["keepalived.conf", "lvs.cf", "x"]))
def test_importers_text(text: str, source: str) -> None:
    only_lvsfw_errors(parse_lvs_cf, text, source)
    only_lvsfw_errors(importers.parse_lvs_cf, text, source)
    only_lvsfw_errors(importers.parse_keepalived, text, source)
    for kind in ("auto", "lvs.cf", "keepalived"):
        only_lvsfw_errors(importers.import_text, text, source, kind)


@given(texts, texts)
def test_scanners(text: str, ipsets: str) -> None:
    only_lvsfw_errors(markscan.scan, text, "fuzz", ipsets=(ipsets, "ipsets"))
    only_lvsfw_errors(markscan.scan_nft, text, "fuzz", quiet_xt=True)
    only_lvsfw_errors(markscan.scan_iptables, text, "fuzz")


LVS_CF = "network = direct\nvirtual web {\n address = 192.0.2.10\n fwmark = 80\n}\n"
KEEPALIVED = "virtual_server fwmark 80 {\n lb_algo wlc\n real_server 10.0.0.1 0 {\n }\n}\n"


@given(texts, st.sampled_from([LVS_CF, KEEPALIVED]))
def test_import_with_junk_rules(rules: str, conf: str) -> None:
    """A valid service file with junk rules: the join must hold up too."""

    def run() -> None:
        found = markscan.scan(rules, "rules")
        importers.import_text(conf, "conf", "auto", found).config_text(["header"])

    only_lvsfw_errors(run)


OPENERS = ["{", "virtual x {\n", "virtual_server fwmark 1 {\n", "table inet t {\n chain c {\n"]


@given(st.lists(st.sampled_from(WORDS), max_size=60).map("".join), st.sampled_from(OPENERS))
def test_importers_inside_blocks(body: str, opener: str) -> None:
    text = opener + body + "\n}\n" * opener.count("{")
    for kind in ("lvs.cf", "keepalived"):
        only_lvsfw_errors(importers.import_text, text, "conf", kind)
    only_lvsfw_errors(markscan.scan, text, "rules")


def test_fuzz_inputs_reach_the_parsers(tmp_path: Path) -> None:
    """The generators are not vacuous: a valid document and files get through."""
    text = tomli_w.dumps(
        {"bundle": [{"name": "w", "vips": "192.0.2.1", "ports": "tcp:80", "mark": 1}]}
    )
    assert config.loads(text).bundles[0].name == "w"
    imported = importers.import_text(LVS_CF, "lvs.cf")
    assert [b.name for b in imported.bundles] == [] and imported.stubs
    (tmp_path / "c.toml").write_text(text)
    assert config.load(str(tmp_path / "c.toml")).bundles[0].name == "w"
