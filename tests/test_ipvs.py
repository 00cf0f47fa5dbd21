"""The IPVS backend: ipvsadm -S text (render, parse, round trip) and live diffs on a double."""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvsfw import registry
from lvsfw.backends import ipvs as ipvs_module
from lvsfw.backends.ipvs import Dump, Ipvs, canonical, parse_dump, parse_thresholds
from lvsfw.enums import Family, Scheduler
from lvsfw.errors import BackendUnavailable, CommandFailed, ConflictError, ParseError
from lvsfw.model import Bundle
from lvsfw.rules import FwmarkService, Specification, specify
from tests import fake_ipvsadm, strategies
from tests.contract import ServiceBackendContract

SEED = Bundle(
    "web",
    "192.0.2.10",
    "tcp:80,443",
    80,
    scheduler="wlc",
    persistence=300,
    real_servers=["10.0.0.11", {"address": "10.0.0.12", "weight": 2}],
)
SEED_TEXT = (
    "-A -f 80 -s wlc -p 300\n-a -f 80 -r 10.0.0.11:0 -g -w 1\n-a -f 80 -r 10.0.0.12:0 -g -w 2\n"
)


def render(*bundles: Bundle) -> str:
    return Ipvs().render(bundles)


def spec_of(*bundles: Bundle) -> frozenset[FwmarkService]:
    return frozenset(canonical(s) for s in specify(bundles).services)


# ------------------------------------------------------------------ render


def test_registry_knows_ipvs() -> None:
    assert registry.get("ipvs") is Ipvs


def test_seed_exact_text() -> None:
    assert render(SEED) == SEED_TEXT


def test_dual_stack_is_two_services_on_one_mark() -> None:
    bundle = Bundle(
        "ds",
        ["192.0.2.10", "2001:db8::10"],
        "tcp:80,443",
        80,
        persistence=300,
        real_servers=["10.0.0.11", "2001:db8::11"],
    )
    assert render(bundle) == (
        "-A -f 80 -s wlc -p 300\n"
        "-a -f 80 -r 10.0.0.11:0 -g -w 1\n"
        "-A -f 80 -6 -s wlc -p 300\n"
        "-a -f 80 -6 -r [2001:db8::11]:0 -g -w 1\n"
    )


@pytest.mark.parametrize("scheduler", list(Scheduler))
def test_every_scheduler(scheduler: Scheduler) -> None:
    bundle = Bundle("s", "192.0.2.1", "udp:53", 7, scheduler=scheduler)
    text = render(bundle)
    assert text == f"-A -f 7 -s {scheduler.value}\n"
    assert Ipvs().parse(text) == spec_of(bundle)


def test_masq_and_tunnel() -> None:
    bundle = Bundle(
        "m",
        "192.0.2.1",
        "tcp:80",
        5,
        real_servers=[
            {"address": "10.0.0.1", "forwarding": "masq", "weight": 0},
            {"address": "10.0.0.2", "forwarding": "tunnel", "weight": 65535},
        ],
    )
    assert render(bundle) == (
        "-A -f 5 -s wlc\n"
        "-a -f 5 -r 10.0.0.1:0 -m -w 0\n"
        "-a -f 5 -r 10.0.0.2:0 -i -w 65535 --tun-type ipip\n"
    )


def test_thresholds_only_when_set() -> None:
    bundle = Bundle(
        "t",
        "192.0.2.1",
        "tcp:80",
        5,
        real_servers=[
            {"address": "10.0.0.1", "upper_threshold": 100, "lower_threshold": 10},
            {"address": "10.0.0.2", "upper_threshold": 3},
            {"address": "10.0.0.3"},
        ],
    )
    assert render(bundle) == (
        "-A -f 5 -s wlc\n"
        "-a -f 5 -r 10.0.0.1:0 -g -w 1 -x 100 -y 10\n"
        "-a -f 5 -r 10.0.0.2:0 -g -w 1 -x 3\n"
        "-a -f 5 -r 10.0.0.3:0 -g -w 1\n"
    )
    assert Ipvs().parse(render(bundle)) == spec_of(bundle)


def test_persistence_netmask_v4_dotted_v6_prefix() -> None:
    bundle = Bundle(
        "n",
        ["192.0.2.1", "2001:db8::1"],
        "tcp:80",
        9,
        persistence=60,
        persistence_netmask=24,
        persistence_prefix=64,
    )
    assert render(bundle) == (
        "-A -f 9 -s wlc -p 60 -M 255.255.255.0\n"  # v4: a dotted netmask
        "-A -f 9 -6 -s wlc -p 60 -M 64\n"  # v6: a prefix length
    )
    assert Ipvs().parse(render(bundle)) == spec_of(bundle)


def test_netmask_needs_persistence_and_a_non_default_value() -> None:
    assert render(Bundle("n", "192.0.2.1", "tcp:80", 9, persistence_netmask=24)) == (
        "-A -f 9 -s wlc\n"
    )
    assert render(Bundle("n", "192.0.2.1", "tcp:80", 9, persistence=5, persistence_netmask=32)) == (
        "-A -f 9 -s wlc -p 5\n"
    )


def test_services_ordered_like_ipvsadm() -> None:
    a = Bundle("a", ["2001:db8::1", "192.0.2.1"], "tcp:80", 300)
    b = Bundle("b", "192.0.2.2", "tcp:80", 20)
    lines = render(a, b).splitlines()
    assert lines == ["-A -f 20 -s wlc", "-A -f 300 -s wlc", "-A -f 300 -6 -s wlc"]


# ------------------------------------------------------------------ parse


def test_round_trip_seed_equals_spec_exactly() -> None:
    spec = specify([SEED])
    assert Ipvs().parse(Ipvs().render_spec(spec)) == spec.services


class TestIpvsContract(ServiceBackendContract):
    backend_name = "ipvs"


@given(strategies.junk_text)
def test_junk_raises_only_parse_error(text: str) -> None:
    with contextlib.suppress(ParseError):
        parse_dump(text)


@pytest.mark.parametrize(
    "text",
    [
        "-a -f 80 -r 10.0.0.1:0 -g -w 1\n",  # real server before its service
        "-A -f 80 -s wlc\n-A -f 80 -s rr\n",  # twice
        "-A -f 80 -s nosuch\n",
        "-A -f 0 -s wlc\n",
        "-A -f 4294967296 -s wlc\n",
        "-A -f x -s wlc\n",
        "-A -f 80 -s wlc -M 255.255.255.0\n",  # -M without -p
        "-A -f 80 -s wlc -p 0\n",
        "-A -f 80 -s wlc -Q 1\n",
        "-A -f 80 -s wlc -g\n",
        "-A -f 80 -s\n",
        "-L -n\n",
        "-A -f 80\n-a -f 80 -r 10.0.0.1:0 -g -w 65536\n",
        "-A -f 80\n-a -f 80 -r 10.0.0.1:0 -g -m -w 1\n",
        "-A -f 80\n-a -f 80 -r 10.0.0.1 -g -w 1\n",
        "-A -f 80\n-a -f 80 -r [nonsense]:0 -g -w 1\n",
        "-A -f 80\n-a -f 80 -r 10.0.0.1:0 -w 1\n-a -f 80 -r 10.0.0.1:0 -w 2\n",
        "-A -f 80 -6 -s wlc -p 3 -M 129\n",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_dump(text)


LIVE_DUMP = """\
-A -t 192.0.2.1:80 -s wlc
-a -t 192.0.2.1:80 -r 10.0.0.1:80 -m -w 1
-A -u [2001:db8::1]:53 -s rr
-A -f 80 -s wlc -p 300
-a -f 80 -r 10.0.0.11:0 -g -w 1
-a -f 80 -r 10.0.0.12:0 -i -w 2 --tun-type ipip
-A -f 81 -s sh --pe sip
-A -f 82 -s sh -b sh-port,sh-fallback
-A -f 83 -s wlc
-a -f 83 -r 10.0.0.1:0 -i -w 1 --tun-type gue --tun-port 6080 --tun-nocsum
-A -f 84 -s wlc -p 60 -M 255.0.255.0
-A -f 85 -s wlc
-a -f 85 -r 10.0.0.1:8080 -m -w 1
-A -f -1294967296 -6 -s rr -p 20 -M 64
-a -f -1294967296 -6 -r [2001:db8::1]:0 -g -w 1
"""


def test_parse_live_dump_separates_foreign_and_unmodelled() -> None:
    dump = parse_dump(LIVE_DUMP)
    assert dump.foreign == ("-A -t 192.0.2.1:80 -s wlc", "-A -u [2001:db8::1]:53 -s rr")
    assert set(dump.unmodelled) == {(Family.IPV4, m) for m in (81, 82, 83, 84, 85)}
    assert "--pe" in dump.unmodelled[(Family.IPV4, 81)]
    assert "gue" in dump.unmodelled[(Family.IPV4, 83)]
    by_key = {(s.family, s.mark): s for s in dump.services}
    assert set(by_key) == {(Family.IPV4, 80), (Family.IPV6, 3000000000)}  # %d-printed mark
    v6 = by_key[(Family.IPV6, 3000000000)].service
    assert (v6.scheduler, v6.persistence, v6.persistence_prefix) == (Scheduler.RR, 20, 64)
    assert [s.weight for s in by_key[(Family.IPV4, 80)].service.real_servers] == [1, 2]


def test_parse_thresholds_listing() -> None:
    text = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn \n"
        "  -> RemoteAddress:Port\n"
        "TCP  192.0.2.1:80 wlc\n"
        "  -> 10.0.0.1:80                  7          7          0          0\n"
        "FWM  80 wlc persistent 300\n"
        "  -> 10.0.0.11:0                  100        10         0          0\n"
        "FWM  80 IPv6 wlc\n"
        "  -> [2001:db8::11]:0             0          3          4          0\n"
    )
    assert parse_thresholds(text) == {
        (Family.IPV4, 80): {ipaddress.ip_address("10.0.0.11"): (100, 10)},
        (Family.IPV6, 80): {ipaddress.ip_address("2001:db8::11"): (0, 3)},
    }
    with pytest.raises(ParseError):
        parse_thresholds("FWM  x wlc\n")


# ------------------------------------------------------------------ live, on the double


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    return fake_ipvsadm.install(tmp_path / "fake")


def backend(fake: Path) -> Ipvs:
    return Ipvs(ipvsadm=str(fake))


def seed(fake: Path, text: str) -> None:
    """Load ``text`` (ipvsadm -R lines) into the double without counting calls."""
    for line in text.splitlines():
        opts = fake_ipvsadm.parse_args(line.split())
        state = fake_ipvsadm.state_of(fake)
        fake_ipvsadm.execute(opts, state["services"], "")
        fake_ipvsadm.update(fake, services=state["services"])


FOREIGN = "-A -t 192.0.2.1:80 -s wlc\n-a -t 192.0.2.1:80 -r 10.0.0.1:80 -m -w 1\n-A -f 99 -s rr\n"


def test_apply_seed_on_empty_table(fake: Path) -> None:
    ipvs = backend(fake)
    undo = ipvs.apply(specify([SEED]), owned={80})
    assert fake_ipvsadm.table(fake) == SEED_TEXT
    assert ipvs.read() == specify([SEED]).services
    assert ipvs.plan(specify([SEED]), owned={80}) == []
    ipvs.undo(undo)
    assert fake_ipvsadm.table(fake) == ""


def test_thresholds_read_back_through_listing(fake: Path) -> None:
    bundle = Bundle(
        "t", "192.0.2.1", "tcp:80", 5, real_servers=[{"address": "10.0.0.1", "upper_threshold": 9}]
    )
    ipvs = backend(fake)
    ipvs.apply(specify([bundle]), owned=set())
    assert "-x" not in fake_ipvsadm.table(fake)  # ipvsadm -S never prints thresholds
    assert ipvs.read() == spec_of(bundle)
    assert ipvs.plan(specify([bundle]), owned={5}) == []


OLD = Bundle(
    "web",
    ["192.0.2.10", "2001:db8::10"],
    "tcp:80,443",
    80,
    persistence=300,
    real_servers=["10.0.0.11", "10.0.0.12", "2001:db8::11"],
)
NEW = Bundle(
    "web",
    "192.0.2.10",
    "tcp:80,443",
    80,
    scheduler="rr",
    real_servers=[{"address": "10.0.0.12", "weight": 5, "forwarding": "masq"}, "10.0.0.13"],
)
GONE = Bundle("old", "192.0.2.20", "udp:53", 53, real_servers=["10.0.0.53"])
NEW_ARGV = [
    ["-E", "-f", "80", "-s", "rr"],
    ["-a", "-f", "80", "-r", "10.0.0.13:0", "-g", "-w", "1"],
    ["-e", "-f", "80", "-r", "10.0.0.12:0", "-m", "-w", "5", "-x", "0", "-y", "0"],
    ["-d", "-f", "80", "-r", "10.0.0.11:0"],
    ["-D", "-f", "53"],
    ["-D", "-f", "80", "-6"],
]


def prepare(fake: Path) -> str:
    """A table with OLD and GONE (lvsfw's) plus foreign services; returns its -S text."""
    seed(fake, FOREIGN)
    backend(fake).apply(specify([OLD, GONE]), owned=set())
    return fake_ipvsadm.table(fake)


def test_plan_is_a_minimal_diff(fake: Path) -> None:
    prepare(fake)
    plan = backend(fake).plan(specify([NEW]), owned={80, (Family.IPV4, 53)})
    assert [argv[1:] for argv in plan] == NEW_ARGV
    assert all(argv[0] == str(fake) for argv in plan)


def test_plan_from_snapshot_is_pure() -> None:
    def refuse(argv: Any) -> str:
        raise AssertionError(argv)

    live = parse_dump(Ipvs().render([OLD, GONE]))
    plan = Ipvs(runner=refuse).plan([canonical(s) for s in specify([NEW]).services], {80, 53}, live)
    assert [argv[1:] for argv in plan] == NEW_ARGV


def test_apply_edits_and_deletes_only_owned(fake: Path) -> None:
    before = prepare(fake)
    ipvs = backend(fake)
    undo = ipvs.apply(specify([NEW]), owned={80, 53})
    after = fake_ipvsadm.table(fake)
    assert "-A -t 192.0.2.1:80 -s wlc" in after and "-A -f 99 -s rr" in after  # foreign kept
    assert ipvs.read() == spec_of(NEW) | parse_dump("-A -f 99 -s rr\n").services
    ipvs.undo(undo)
    assert fake_ipvsadm.table(fake) == before


def test_unowned_services_not_in_spec_are_left_alone(fake: Path) -> None:
    before = prepare(fake)
    assert backend(fake).apply(specify([OLD]), owned={80}) == []  # 53 not owned: kept
    assert fake_ipvsadm.table(fake) == before


def test_foreign_service_on_a_wanted_mark_is_a_conflict(fake: Path) -> None:
    seed(fake, FOREIGN)
    taken = Bundle("x", "192.0.2.5", "tcp:80", 99)
    with pytest.raises(ConflictError, match="fwmark 99"):
        backend(fake).apply(specify([taken]), owned={80})
    assert fake_ipvsadm.state_of(fake)["calls"] == 0


def test_unmodelled_service_is_a_conflict_even_when_owned(fake: Path) -> None:
    seed(fake, "-A -f 81 -s sh -p 30\n-a -f 81 -r 10.0.0.1:0 -i -w 1\n")
    state = fake_ipvsadm.state_of(fake)
    state["services"][0]["dests"][0]["tun"] = "gue"
    fake_ipvsadm.update(fake, services=state["services"])
    with pytest.raises(ConflictError, match="gue"):
        backend(fake).remove({81})


def test_remove_deletes_owned_services(fake: Path) -> None:
    before = prepare(fake)
    ipvs = backend(fake)
    undo = ipvs.remove({80, 53})
    assert fake_ipvsadm.table(fake) == (
        "-A -t 192.0.2.1:80 -s wlc\n-a -t 192.0.2.1:80 -r 10.0.0.1:80 -m -w 1\n-A -f 99 -s rr\n"
    )
    ipvs.undo(undo)
    assert fake_ipvsadm.table(fake) == before


def test_failure_at_every_step_leaves_the_table_as_before(fake: Path) -> None:
    before = prepare(fake)
    steps = len(NEW_ARGV)
    for n in range(1, steps + 1):
        calls = fake_ipvsadm.state_of(fake)["calls"]
        fake_ipvsadm.update(fake, fail_at=calls + n, fail_stderr="Invalid operation")
        with pytest.raises(CommandFailed) as info:
            backend(fake).apply(specify([NEW]), owned={80, 53})
        assert info.value.argv[1:] == tuple(NEW_ARGV[n - 1])
        assert "Invalid operation" in info.value.stderr
        assert fake_ipvsadm.table(fake) == before, f"step {n}"
    fake_ipvsadm.update(fake, fail_at=None)
    backend(fake).apply(specify([NEW]), owned={80, 53})
    assert backend(fake).read() == spec_of(NEW) | parse_dump("-A -f 99 -s rr\n").services


def test_failed_rollback_is_noted_on_the_error(fake: Path) -> None:
    prepare(fake)
    calls = fake_ipvsadm.state_of(fake)["calls"]
    fake_ipvsadm.update(fake, fail_at=calls + 2)  # the first undo call would be calls + 3
    ipvs = backend(fake)
    original = ipvs.run

    def flaky(args: Any, stdin: str | None = None) -> str:
        if list(args[:1]) == ["-E"] and "wlc" in args:
            raise CommandFailed(["ipvsadm", *args], 255, "No such service")
        return original(args, stdin)

    ipvs.run = flaky  # type: ignore[method-assign]
    with pytest.raises(CommandFailed) as info:
        ipvs.apply(specify([NEW]), owned={80, 53})
    assert any("rollback step failed" in note for note in info.value.__notes__)


def test_ipvsadm_missing(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="not found; apt-get install ipvsadm"):
        Ipvs(ipvsadm=str(tmp_path / "ipvsadm")).read()


def test_kernel_without_ipvs(fake: Path) -> None:
    fake_ipvsadm.update(fake, absent=True)
    with pytest.raises(BackendUnavailable, match="modprobe ip_vs"):
        backend(fake).read()


@pytest.mark.skipif(shutil.which("ipvsadm", path="/usr/sbin:/sbin") is None, reason="no ipvsadm")
def test_real_ipvsadm_on_a_kernel_without_ipvs() -> None:
    """This host's kernel has no IPVS: the real ipvsadm must map to BackendUnavailable."""
    try:
        Ipvs().read()
    except BackendUnavailable as exc:
        assert "modprobe ip_vs" in str(exc)
    except CommandFailed as exc:  # e.g. not root on a kernel with IPVS
        pytest.skip(f"ipvsadm usable here: {exc}")
    else:
        pytest.skip("this kernel has IPVS")


def test_kernel_rejection_carries_argv_and_stderr(fake: Path) -> None:
    fake_ipvsadm.update(fake, fail_at=1, fail_stderr="Memory allocation problem", fail_rc=255)
    with pytest.raises(CommandFailed) as info:
        backend(fake).apply(specify([SEED]), owned=set())
    assert info.value.argv == (str(fake), "-A", "-f", "80", "-s", "wlc", "-p", "300")
    assert info.value.rc == 255
    assert "Memory allocation problem" in info.value.stderr
    assert fake_ipvsadm.table(fake) == ""


def test_netns_goes_to_command_run(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    def fake_run(argv: list[str], **kwargs: Any) -> str:
        seen.append({"argv": argv, **kwargs})
        return ""

    monkeypatch.setattr(ipvs_module, "run", fake_run)
    assert Ipvs(netns="lb").read() == frozenset()
    assert [s["argv"] for s in seen] == [
        ["ipvsadm", "-S", "-n"],
        ["ipvsadm", "-L", "-n", "--thresholds"],
    ]
    assert {s["netns"] for s in seen} == {"lb"}
    assert {s["install_hint"] for s in seen} == {"apt-get install ipvsadm"}


def test_runner_is_injectable() -> None:
    calls: list[list[str]] = []

    def runner(argv: Any) -> str:
        calls.append(list(argv))
        return SEED_TEXT if "-S" in argv else ""

    ipvs = Ipvs(ipvsadm="/opt/ipvsadm", runner=runner)
    assert ipvs.read() == specify([SEED]).services
    assert calls[0] == ["/opt/ipvsadm", "-S", "-n"]


@given(st.data())
def test_apply_reaches_any_spec_from_any_spec(data: st.DataObject) -> None:
    """From a random live table to another random spec: the plan applied to a snapshot
    (the double's logic, in-process) yields exactly the target."""
    first = specify(data.draw(strategies.bundles(max_size=3, masks=False)))
    second = specify(data.draw(strategies.bundles(max_size=3, masks=False)))
    services: list[dict[str, Any]] = []
    for line in Ipvs().render_spec(first).splitlines():
        fake_ipvsadm.execute(fake_ipvsadm.parse_args(_clip(line.split())), services, "")
    live = parse_dump(fake_ipvsadm.save(services))
    owned = {(s.family, s.mark) for s in first.services}
    try:
        plan = Ipvs().plan(second, owned, live=_with_thresholds(live, first))
    except ConflictError:  # pragma: no cover - owned covers every live service
        raise
    for argv in plan:
        fake_ipvsadm.execute(fake_ipvsadm.parse_args(_clip(argv[1:])), services, "")
    assert parse_dump(fake_ipvsadm.save(services)).services == {
        attrs.evolve(s, service=_no_thresholds(s.service)) for s in map(canonical, second.services)
    }


def _clip(argv: list[str]) -> list[str]:
    """The double (like ipvsadm) takes thresholds up to INT_MAX; the model allows 2**32-1."""
    return [
        str(min(int(a), 2**31 - 1)) if i and argv[i - 1] in {"-x", "-y"} else a
        for i, a in enumerate(argv)
    ]


def _with_thresholds(live: Dump, spec: Specification) -> Dump:
    """``live`` with the thresholds ipvsadm -S does not print (what read() merges in)."""
    wanted = {(s.family, s.mark): s for s in map(canonical, spec.services)}
    return attrs.evolve(live, services=frozenset(wanted[(s.family, s.mark)] for s in live.services))


def _no_thresholds(vs: Any) -> Any:
    servers = [attrs.evolve(s, upper_threshold=0, lower_threshold=0) for s in vs.real_servers]
    return attrs.evolve(vs, real_servers=servers)


def test_missing_scheduler_module_is_named() -> None:
    """A kernel without ip_vs_twos: the error keeps ipvsadm's words and names the module."""

    def runner(argv: Sequence[str]) -> str:
        if "-A" in argv:
            raise CommandFailed(argv, 255, "Scheduler or persistence engine not found\n")
        return ""

    bundle = Bundle("b", "192.0.2.1", "tcp:80", 71, scheduler="twos")
    with pytest.raises(CommandFailed) as info:
        Ipvs(runner=runner).apply(specify([bundle]), {71})
    assert "persistence engine not found" in str(info.value)
    assert any("ip_vs_twos" in note for note in info.value.__notes__)
