"""Health checks and failure settings (issue 11, the model and the render): validated in the
model, carried by the TOML, rendered into keepalived.conf and read back, and every rendered
config accepted by the real ``keepalived --config-test`` with no warning line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvsfw import Bundle, ConflictError, ValidationError, config, render, specify
from lvsfw.backends.keepalived import SCRIPT_SECURITY, Keepalived
from lvsfw.health import HealthCheck
from tests.netlab import require_kernel

WEB = {"name": "web", "vips": "192.0.2.10", "ports": "tcp:80,443", "mark": 80}
HTTP = {"check": "http", "path": "/healthz", "status": [200, 204]}


def web(**fields: Any) -> Bundle:
    fields.setdefault("real_servers", ["10.0.0.11", "10.0.0.12"])
    return Bundle(**WEB, **fields)


# -- the model ------------------------------------------------------------------------------


def test_connecting_checks_default_to_the_first_tcp_port() -> None:
    bundle = Bundle("dns", "192.0.2.53", "udp:53 tcp:53,853", 53, health={"check": "tcp"},
                    real_servers=["10.0.0.1"])  # fmt: skip
    assert bundle.service.health == HealthCheck("tcp", port=53)
    assert web(health={"check": "misc", "script": "/bin/true"}).service.health.port is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"ports": "udp:53", "health": {"check": "tcp"}}, "health.port"),
        ({"health": {"check": "ping"}}, "health.check"),
        ({"health": {"check": "misc"}}, "health.script"),
        ({"health": {"check": "misc", "script": "rm -rf /"}}, "health.script"),
        ({"health": {"check": "tcp", "script": "/bin/true"}}, "health.script"),
        ({"health": {"check": "http", "path": 'x"y'}}, "health.path"),
        ({"health": {"check": "http", "path": "/a}b"}}, "health.path"),  # would end the block
        ({"health": {"check": "http", "path": "/a#b"}}, "health.path"),  # a comment to keepalived
        ({"health": {"check": "http", "path": "/a!b"}}, "health.path"),
        ({"health": {"check": "http", "digest": "xyz"}}, "health.digest"),
        ({"health": {"check": "http", "status": [99]}}, "health.status"),
        ({"health": {"check": "tcp", "timeout": 0}}, "health.timeout"),
        ({"health": {"check": "tcp", "port": 0}}, "health.port"),
        ({"health": {"check": "tcp", "colour": 1}}, "health"),
        ({"sorry_server": {"address": "10.0.0.9", "port": 80}}, "sorry_server.port"),
        ({"sorry_server": "not-an-address"}, "sorry_server"),
        ({"quorum": 3}, "quorum"),  # two servers of weight 1
        ({"quorum": 2, "hysteresis": 2}, "hysteresis"),
        ({"delay_loop": 0}, "delay_loop"),
        ({"inhibit_on_failure": "yes"}, "inhibit_on_failure"),
        ({"alpha": 1}, "alpha"),
        ({"omega": "on"}, "omega"),
    ],
)
def test_bad_settings_name_their_field(fields: dict[str, Any], field: str) -> None:
    base = {**WEB, "real_servers": ["10.0.0.11", "10.0.0.12"], **fields}
    with pytest.raises(ValidationError) as raised:
        Bundle(**base)
    assert raised.value.field == field


def test_ipvs_never_sees_them_but_a_shared_mark_must_agree() -> None:
    plain, checked = web(), web(health=HTTP, delay_loop=3, quorum=1, inhibit_on_failure=True)
    assert plain.service == checked.service  # what ipvsadm compares
    assert render([plain], "ipvs") == render([checked], "ipvs")
    other = Bundle("web2", "192.0.2.20", "tcp:80", 80, real_servers=["10.0.0.11", "10.0.0.12"],
                   health={"check": "tcp"})  # fmt: skip
    with pytest.raises(ConflictError, match="health checks or failure settings"):
        specify([checked, other])


# -- TOML -------------------------------------------------------------------------------------


TOML = """\
[[bundle]]
name = "web"
vips = ["192.0.2.10"]
ports = "tcp:80,443"
mark = 80
health = { check = "http", path = "/healthz", port = 80, status = [200] }
delay_loop = 5
sorry_server = "10.0.0.99"
quorum = 1
inhibit_on_failure = true
alpha = true
omega = true
real_servers = ["10.0.0.11",
  { address = "10.0.0.12", health = { check = "misc", script = "/usr/bin/chk 80", timeout = 5 } }]
"""


def test_toml_carries_everything_and_round_trips() -> None:
    (bundle,) = config.loads(TOML).bundles
    vs = bundle.service
    assert vs.health == HealthCheck("http", port=80, path="/healthz")
    assert (vs.delay_loop, str(vs.sorry_server.address), vs.quorum) == (5, "10.0.0.99", 1)
    assert vs.inhibit_on_failure and vs.alpha and vs.omega
    assert vs.real_servers[1].health == HealthCheck("misc", script="/usr/bin/chk 80", timeout=5)
    (again,) = config.loads(config.dumps([bundle])).bundles
    assert again.service.keepalived_fields == vs.keepalived_fields  # eq ignores them: compare


def test_toml_errors_point_at_the_line() -> None:
    bad = TOML.replace('path = "/healthz"', 'path = "healthz"')
    with pytest.raises(config.ConfigError, match=r":6: .*health.path"):
        config.loads(bad, "t.toml")


# -- keepalived.conf ---------------------------------------------------------------------------


def effective(bundle_or_service: Any) -> list[Any]:
    """Each real server's check (its own, else the service's) and the service settings."""
    vs = getattr(bundle_or_service, "service", bundle_or_service)
    checks = [(str(s.address), s.health or vs.health) for s in vs.real_servers]
    return [checks, vs.delay_loop, vs.sorry_server, vs.quorum, vs.hysteresis,
            vs.inhibit_on_failure, vs.alpha, vs.omega]  # fmt: skip


def test_render_then_parse_gives_the_checks_back() -> None:
    (bundle,) = config.loads(TOML).bundles
    text = Keepalived().render([bundle])
    assert "HTTP_GET {" in text and "connect_port 80" in text and "MISC_CHECK {" in text
    assert 'misc_path "/usr/bin/chk 80"' in text and "sorry_server 10.0.0.99 0" in text
    (service,) = Keepalived().parse(text)
    assert effective(service.service) == effective(bundle)


def keepalived_test(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """``keepalived --config-test`` of ``text`` (the real binary; required in CI)."""
    binary = shutil.which("keepalived") or shutil.which("keepalived", path="/usr/sbin:/sbin")
    if binary is None:
        require_kernel("keepalived is not installed (./scripts/bootstrap installs it)")
        pytest.skip("keepalived is not installed")
    path = tmp_path / "keepalived.conf"
    path.write_text(text, encoding="utf-8")
    return subprocess.run([binary, "--config-test", "-f", str(path)], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip


def test_keepalived_refuses_what_it_warns_about(tmp_path: Path) -> None:
    """The test can fail: a config keepalived warns about exits non-zero with the warning."""
    warned = keepalived_test(tmp_path, "virtual_server fwmark 5 {\n    lb_kind DR\n}\n")
    assert warned.returncode != 0 and "no real servers" in warned.stdout + warned.stderr


DIGEST = "0123456789abcdef0123456789abcdef"
SCRIPTS = ["/bin/true", "/usr/local/bin/check 80"]
CHECKS = st.one_of(
    st.builds(dict, check=st.just("tcp"), timeout=st.none() | st.integers(1, 30)),
    st.builds(dict, check=st.sampled_from(["http", "https"]),
              path=st.sampled_from(["/", "/healthz", "/status?full=1"]),
              status=st.lists(st.sampled_from([200, 204, 301, 401]), min_size=1, max_size=3),
              digest=st.none() | st.just(DIGEST), retry=st.none() | st.integers(0, 5),
              delay_before_retry=st.none() | st.integers(1, 9)),
    st.builds(dict, check=st.just("misc"), script=st.sampled_from(SCRIPTS),
              timeout=st.none() | st.integers(1, 9), dynamic=st.booleans()),
)  # fmt: skip


@st.composite
def checked_bundles(draw: st.DrawFn) -> list[Bundle]:
    count = draw(st.integers(1, 4))
    bundles = []
    for i in range(count):
        dual = draw(st.booleans())
        servers: list[Any] = [f"10.0.{i}.{n}" for n in range(1, draw(st.integers(2, 3)))]
        servers += [f"2001:db8:{i}::{n}" for n in (1, 2)] if dual else []
        if draw(st.booleans()):
            servers[0] = {"address": servers[0], "health": draw(CHECKS), "weight": 2}
        fields: dict[str, Any] = {"health": draw(st.none() | CHECKS)}
        if draw(st.booleans()):
            fields["sorry_server"] = f"10.0.{i}.99"
        if draw(st.booleans()):
            fields.update(quorum=1, hysteresis=0)
        fields["delay_loop"] = draw(st.none() | st.integers(1, 30))
        fields["inhibit_on_failure"] = draw(st.booleans())
        fields["alpha"], fields["omega"] = draw(st.booleans()), draw(st.booleans())
        vips = [f"192.0.2.{i + 1}"] + ([f"2001:db8::{i + 1}"] if dual else [])
        bundles.append(Bundle(f"b{i}", vips, f"tcp:{8000 + i},443 udp:53", 100 + i,
                              real_servers=servers, **fields))  # fmt: skip
    return bundles


@settings(max_examples=60, deadline=None)
@given(checked_bundles())
def test_every_render_passes_keepalived_config_test_without_a_warning(
    tmp_path_factory: pytest.TempPathFactory, bundles: list[Bundle]
) -> None:
    text = Keepalived().render(bundles)
    # check scripts need the including file's global_defs to allow them (docs/keepalived.md)
    done = keepalived_test(tmp_path_factory.mktemp("ka"), SCRIPT_SECURITY + text)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
        text + done.stdout + done.stderr
    )
    parsed = {(s.family, s.mark): s for s in Keepalived().parse(text)}
    for bundle in bundles:
        for family in bundle.families:
            assert effective(parsed[(family, bundle.mark.value)].service)[0] == [
                (str(s.address), s.health or bundle.service.health)
                for s in bundle.service.for_family(family).real_servers
            ]
