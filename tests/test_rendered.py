"""Rendered output as named parts: each part is one tool's input, loaded as is by that tool.

The unit tests pin ``str()`` to the combined text ``render`` printed before parts existed and
check that the parts, parsed back, are the specification. The kernel tests pipe
``lvsfw render --part NAME`` (the installed console script) into the real tool inside a
throwaway network namespace, created and deleted by a fixture, and read the marks back with
the backend.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given

import lvsfw
from lvsfw import Bundle, ValidationError, registry, specify
from lvsfw import config as config_file
from lvsfw.backends.base import PacketFilter
from lvsfw.backends.iptables import Iptables, IptablesLegacy, IptablesNft
from lvsfw.rendered import Rendered
from lvsfw.rules import MarkRule, Specification, normalize
from tests import strategies
from tests.netlab import empty_netns, xtables_tools

LVSFW = Path(sys.executable).parent / "lvsfw"
IP = shutil.which("ip") or "/usr/sbin/ip"
#: Dual stack, single ports (ipset members) and ranges (chain rules), a masked mark.
BUNDLES = [
    Bundle("web", ["192.0.2.10", "2001:db8::10"], "tcp:80,443", 80),
    Bundle("ftp", "192.0.2.21", "tcp:21,10000-20000", 21),
    Bundle("dns6", "2001:db8::53", "udp:53 tcp:53,5300-5310", "0x5300/0xff00"),
]
V4_ONLY = [Bundle("smtp", "192.0.2.25", "tcp:25,2500-2510", 25)]
CONFIG = """\
[[bundle]]
name = "web"
vips = ["192.0.2.10", "2001:db8::10"]
ports = "tcp:80,443"
mark = 80

[[bundle]]
name = "ftp"
vips = ["192.0.2.21"]
ports = "tcp:21,10000-20000"
mark = 21

[[bundle]]
name = "dns6"
vips = ["2001:db8::53"]
ports = "udp:53 tcp:53,5300-5310"
mark = "0x5300/0xff00"
"""
V4_CONFIG = """\
[[bundle]]
name = "smtp"
vips = ["192.0.2.25"]
ports = "tcp:25,2500-2510"
mark = 25
"""
IPTABLES_PARTS = ("ipset", "iptables", "ip6tables")


def before_parts(backend: Iptables, spec: Specification) -> str:
    """The iptables backends' ``render_spec`` as it was before parts (the oracle for str())."""
    families = [f for f in lvsfw.Family if any(r.family == f for r in spec.rules)]
    headers = {lvsfw.Family.IPV4: "# iptables", lvsfw.Family.IPV6: "# ip6tables"}
    parts = [
        "# lvsfw mangle rules: load the ipset section with ipset restore -exist, then each"
        " section once with iptables-restore --noflush (ip6tables-restore for ip6tables)"
    ]
    sets = backend.ipset_text(spec)
    parts += [f"# ipset\n{sets.rstrip()}"] if sets else []
    parts += [f"{headers[f]}\n{backend.family_text(spec, f)}" for f in families]
    return "\n".join(parts) + ("" if families else "\n")


# -- the value ------------------------------------------------------------------------------


def test_names_part_and_unknown_part() -> None:
    rendered = Rendered((("a", "one\n"), ("b", "")), "combined\n")
    assert rendered.names == ("a", "b")
    assert rendered.part("a") == "one\n" and rendered.part("b") == ""
    assert str(rendered) == "combined\n"
    assert str(Rendered.single("nft", "x\n")) == "x\n"
    with pytest.raises(ValidationError) as caught:
        rendered.part("c")
    assert caught.value.field == "part" and caught.value.value == "c"
    assert "one of a, b" in str(caught.value)


@pytest.mark.parametrize("parts", [(), (("a", "x"), ("a", "y"))])
def test_parts_are_named_once_and_never_empty(parts: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(ValidationError, match="parts"):
        Rendered(parts)


@pytest.mark.parametrize(
    ("backend", "names"),
    [
        ("iptables-legacy", IPTABLES_PARTS),
        ("iptables-nft", IPTABLES_PARTS),
        ("nftables", ("nft",)),
        ("ipvs", ("ipvsadm",)),
        ("keepalived", ("keepalived",)),
    ],
)
def test_part_names_per_backend(backend: str, names: tuple[str, ...]) -> None:
    rendered = lvsfw.render_parts(BUNDLES, backend)
    assert rendered.names == names
    assert str(rendered) == lvsfw.render(BUNDLES, backend)
    if len(names) == 1:
        assert rendered.part(names[0]) == lvsfw.render(BUNDLES, backend)


@given(strategies.bundles())
def test_str_is_the_combined_text_of_before(bundles: list[Bundle]) -> None:
    spec = specify(bundles)
    for backend in (IptablesLegacy(), IptablesNft()):
        rendered = backend.render_parts(spec)
        assert str(rendered) == backend.render_spec(spec) == before_parts(backend, spec)
        for name, text in rendered.parts:  # every non-empty part, under its header
            assert not text or f"# {name}\n{text}" in str(rendered)


@given(strategies.bundles())
def test_parts_parse_back_to_the_spec(bundles: list[Bundle]) -> None:
    spec = specify(bundles)
    for backend in (IptablesLegacy(), IptablesNft()):
        rendered = backend.render_parts(spec)
        whole = "".join(rendered.part(n) for n in IPTABLES_PARTS)
        assert backend.parse(whole) == normalize(spec.rules)
        for family, name in zip(lvsfw.Family, IPTABLES_PARTS[1:]):
            wanted = any(r.family == family for r in spec.rules)
            assert bool(rendered.part(name)) == wanted  # empty: nothing of that family


def test_exact_parts_of_one_bundle() -> None:
    rendered = IptablesLegacy().render_parts(specify(V4_ONLY))
    assert rendered.part("ipset").splitlines() == [
        "create lvsfw4-legacy hash:ip,port family inet hashsize 1024 maxelem 65536 comment skbinfo",
        'add lvsfw4-legacy 192.0.2.25,tcp:25 comment "smtp" skbmark 0x19',
    ]
    assert rendered.part("iptables").startswith("*mangle\n:LVSFW-PREROUTING - [0:0]\n")
    assert rendered.part("iptables").endswith("\nCOMMIT\n")
    assert "--dport 2500:2510" in rendered.part("iptables")
    assert rendered.part("ip6tables") == ""


# -- the command ----------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The config of :data:`BUNDLES`."""
    path = tmp_path / "lb.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def lvsfw_command(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``lvsfw`` console script, run as a program."""
    return subprocess.run(
        [str(LVSFW), *args], capture_output=True, text=True, check=False, timeout=60
    )


def test_config_matches_bundles(config: Path) -> None:
    assert config_file.load(str(config)).bundles == tuple(BUNDLES)


def test_cli_prints_one_part_exactly(config: Path) -> None:
    for backend in ("iptables-legacy", "nftables"):
        rendered = lvsfw.render_parts(BUNDLES, backend)
        for name in rendered.names:
            done = lvsfw_command("render", str(config), "--backend", backend, "--part", name)
            assert done.returncode == 0, done.stderr
            assert done.stdout == rendered.part(name)
    whole = lvsfw_command("render", str(config), "--backend", "iptables-nft")
    assert whole.stdout == lvsfw.render(BUNDLES, "iptables-nft")
    done = lvsfw_command(
        "render", str(config), "-b", "iptables-nft", "--part", "ip6tables", "--json"
    )
    rendered = lvsfw.render_parts(BUNDLES, "iptables-nft")
    assert json.loads(done.stdout) == {
        "backend": "iptables-nft",
        "part": "ip6tables",
        "text": rendered.part("ip6tables"),
    }


def test_cli_unknown_part_is_one_line_naming_the_parts(config: Path) -> None:
    done = lvsfw_command("render", str(config), "-b", "iptables-legacy", "--part", "nft")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("lvsfw: part: 'nft'")
    assert "ipset, iptables, ip6tables" in done.stderr


def test_cli_help_names_the_loading_commands() -> None:
    done = lvsfw_command("render", "--help")
    assert done.returncode == 0
    for loader in (
        "ipset -exist restore",
        "iptables-legacy-restore --noflush",
        "ip6tables-legacy-restore --noflush",
        "nft -f -",
        "ipvsadm -R",
    ):
        assert loader in done.stdout


# -- loaded by the real tools ---------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace ``lvsfw-t-<hex>``, deleted afterwards, pass or fail."""
    with empty_netns((*xtables_tools("legacy"), *xtables_tools("nft"), "ipset")) as name:
        yield name


def pipe(config: Path, backend: str, part: str, netns: str, *tool: str) -> None:
    """``lvsfw render CONFIG --backend BACKEND --part PART | ip netns exec NETNS TOOL...``."""
    render = subprocess.Popen(
        [str(LVSFW), "render", str(config), "--backend", backend, "--part", part],
        stdout=subprocess.PIPE,
    )
    assert render.stdout is not None
    load = subprocess.run(
        [IP, "netns", "exec", netns, *tool],
        stdin=render.stdout,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    render.stdout.close()
    assert render.wait(timeout=60) == 0
    assert load.returncode == 0, f"{' '.join(tool)} refused part {part}: {load.stderr}"


def read(backend: str, netns: str) -> frozenset[MarkRule]:
    """The marks ``backend`` reads back in ``netns``."""
    filter_ = registry.get(backend)(netns=netns)
    assert isinstance(filter_, PacketFilter)
    return filter_.read()


@pytest.mark.kernel
@pytest.mark.parametrize("flavour", ["legacy", "nft"])
@pytest.mark.parametrize(
    ("text", "bundles"),
    [pytest.param(CONFIG, BUNDLES, id="dual-stack"), pytest.param(V4_CONFIG, V4_ONLY, id="v4")],
)
def test_iptables_parts_load_with_their_tools(
    netns: str, tmp_path: Path, flavour: str, text: str, bundles: list[Bundle]
) -> None:
    config = tmp_path / "lb.toml"
    config.write_text(text, encoding="utf-8")
    backend = f"iptables-{flavour}"
    pipe(config, backend, "ipset", netns, "ipset", "-exist", "restore")
    pipe(config, backend, "iptables", netns, f"iptables-{flavour}-restore", "--noflush")
    pipe(config, backend, "ip6tables", netns, f"ip6tables-{flavour}-restore", "--noflush")
    assert normalize(read(backend, netns)) == normalize(specify(bundles).rules)


@pytest.mark.kernel
def test_nft_part_loads_with_nft(netns: str, config: Path) -> None:
    pipe(config, "nftables", "nft", netns, "nft", "-f", "-")
    assert normalize(read("nftables", netns)) == normalize(specify(BUNDLES).rules)
