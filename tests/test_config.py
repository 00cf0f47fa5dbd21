"""TOML configuration files: loading, errors naming file/line/field, and writing back."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from hypothesis import given

from lvsfw import Bundle, RealServer, config, specify
from lvsfw.config import ConfigError, DirectorSettings
from tests import strategies

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

ISSUE_EXAMPLE = """\
[director]
firewall = "nftables"
ipvs = true

[[bundle]]
name = "web"
vips = ["192.0.2.10", "2001:db8::10"]
ports = "tcp:80,443"
mark = 80
scheduler = "wlc"
persistence = 300
real_servers = ["10.0.0.11", { address = "10.0.0.12", weight = 2, forwarding = "masq" }]
"""


def test_the_issue_example_loads() -> None:
    cfg = config.loads(ISSUE_EXAMPLE, "web.toml")
    assert cfg.director == DirectorSettings(firewall="nftables", ipvs=True)
    assert cfg.bundles == (
        Bundle(
            "web",
            ["192.0.2.10", "2001:db8::10"],
            "tcp:80,443",
            80,
            scheduler="wlc",
            persistence=300,
            real_servers=[RealServer("10.0.0.11"), RealServer("10.0.0.12", 2, "masq")],
        ),
    )


@pytest.mark.parametrize("name", ["http_https", "ftp", "dns", "dual_stack"])
def test_each_example_config_equals_its_script(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    script = runpy.run_path(str(EXAMPLES / f"{name}.py"))
    capsys.readouterr()
    wanted = [v for v in script.values() if isinstance(v, Bundle)]
    assert list(config.load(str(EXAMPLES / f"{name}.toml")).bundles) == wanted


def test_ports_may_be_a_list_and_mark_a_masked_string() -> None:
    cfg = config.loads(
        '[[bundle]]\nname = "d"\nvips = "192.0.2.53"\nports = ["udp:53", "tcp:53"]\n'
        'mark = "0x3500/0xff00"\n'
    )
    assert str(cfg.bundles[0].ports) == "tcp:53 udp:53"
    assert (cfg.bundles[0].mark.value, cfg.bundles[0].mark.mask) == (0x3500, 0xFF00)


def test_an_empty_file_is_no_bundles() -> None:
    assert config.loads("") == config.Config((), DirectorSettings(), "<string>")


def test_flags_override_the_director_table() -> None:
    settings = DirectorSettings(firewall="nftables", ipvs=True, netns="a")
    merged = settings.merged(firewall="iptables-nft", ipvs=None, netns=None, state_file="/s")
    assert merged == DirectorSettings("iptables-nft", True, "a", "/s")
    assert settings.merged(ipvs=False).ipvs is False


BASE = ISSUE_EXAMPLE.splitlines()


def _with(line: int, text: str) -> str:
    """ISSUE_EXAMPLE with (1-based) ``line`` replaced by ``text``."""
    lines = list(BASE)
    lines[line - 1] = text
    return "\n".join(lines) + "\n"


BAD = [
    # (text, line, field/words the one-line message must contain)
    (_with(9, "mark = "), 9, "TOML syntax error"),
    (_with(9, "mark = 80\nmark = 81"), 10, "TOML syntax error"),
    (_with(1, "[director"), 1, "TOML syntax error"),
    (
        _with(11, "persistense = 300"),
        11,
        "bundle[0] (web).persistense: unknown key; did you mean 'persistence'?",
    ),
    (_with(3, "ipvs = 'yes'"), 3,
     "director.ipvs: 'yes' is not valid; expected true, false, \"ipvsadm\""),
    (_with(2, "firewal = 'nftables'"), 2, "director.firewal: unknown key"),
    (_with(9, "mark = true"), 9, "bundle[0] (web).mark: True is not valid"),
    (_with(9, "mark = 0"), 9, "bundle[0] (web).mark"),
    (_with(8, 'ports = "tcp:80,99999"'), 8, "bundle[0] (web).ports"),
    (_with(8, 'ports = "tcp:8o"'), 8, "bundle[0] (web).ports: cannot parse '8o'"),
    (_with(8, 'ports = "icmp:1"'), 8, "bundle[0] (web).ports"),
    (_with(7, 'vips = ["192.0.2.300"]'), 7, "bundle[0] (web).vips: '192.0.2.300' is not valid"),
    (_with(10, 'scheduler = "fast"'), 10, "bundle[0] (web).scheduler: 'fast' is not valid"),
    (_with(11, "persistence = 0"), 11, "bundle[0] (web).persistence"),
    (_with(11, 'persistence = "300"'), 11, "bundle[0] (web).persistence: '300' is not valid"),
    (_with(12, 'real_servers = ["10.0.0.x"]'), 12, "bundle[0] (web).real_servers[0]: '10.0.0.x'"),
    (
        _with(12, 'real_servers = [{ address = "10.0.0.1", weigth = 2 }]'),
        12,
        "real_servers[0].weigth: unknown key; did you mean 'weight'?",
    ),
    (
        _with(12, 'real_servers = [{ address = "10.0.0.1", weight = "2" }]'),
        12,
        "real_servers[0].weight: '2' is not valid",
    ),
    (_with(12, "real_servers = [{ weight = 2 }]"), 12, "needs an 'address' key"),
    (
        _with(12, 'real_servers = [{ address = "10.0.0.1", forwarding = "nat" }]'),
        12,
        "real_servers[0].forwarding: 'nat' is not valid",
    ),
    (
        _with(12, 'real_servers = "10.0.0.1"'),
        12,
        "bundle[0] (web).real_servers: '10.0.0.1' is not valid",
    ),
    (
        _with(7, 'vips = "192.0.2.10"').replace("10.0.0.11", "2001:db8::11"),
        12,
        "real_servers: '2001:db8::11' is not valid; expected an address of the bundle's VIP",
    ),
    (_with(6, 'nam = "web"'), 6, "bundle[0].nam: unknown key"),
    (_with(6, ""), 5, "bundle[0].name: missing (required)"),
    (ISSUE_EXAMPLE + "\n[extra]\nx = 1\n", 14, "(top level).extra: unknown key"),
    (
        ISSUE_EXAMPLE + '\n[[bundle]]\nname = "web2"\nvips = "192.0.2.10"\nports = "tcp:443"\n'
        "mark = 81\n",
        14,
        "bundle: conflict: bundles 'web' and 'web2' both claim 192.0.2.10",
    ),
    ("bundle = 3\n", 1, "use [[bundle]] tables"),
    ("director = 3\n", 1, "expected a [director] table"),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD)
def test_bad_files_give_one_line_naming_file_line_and_field(
    text: str, line: int, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config.loads(text, "lb.toml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"lb.toml:{line}:"), message
    assert words in message
    assert caught.value.path == "lb.toml"
    assert caught.value.line == line


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        config.load(str(tmp_path / "missing.toml"))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(str(binary))


@given(strategies.bundles(max_size=4))
def test_dumps_then_loads_gives_the_same_specification(bundles: list[Bundle]) -> None:
    text = config.dumps(bundles, DirectorSettings(firewall="iptables-nft", ipvs=False))
    cfg = config.loads(text)
    assert specify(cfg.bundles) == specify(bundles)
    assert [b.name for b in cfg.bundles] == [b.name for b in bundles]
    assert cfg.director == DirectorSettings(firewall="iptables-nft", ipvs=False)


def test_dump_writes_defaults_out_and_header_comments(tmp_path: Path) -> None:
    path = tmp_path / "out.toml"
    config.dump(str(path), config.load(str(EXAMPLES / "http_https.toml")).bundles)
    text = path.read_text()
    assert '"10.0.0.11",' in text and "weight = 2" in text
    assert "persistence_netmask" not in text and "[director]" not in text
    assert config.dumps([], header=["hello"]).startswith("# hello\n")
