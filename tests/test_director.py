"""The Director on real kernels: apply, change, verify, destroy, ownership, auto-detection,
concurrency and boot files, in throwaway network namespaces with the fake ``ipvsadm``.

Every namespace is created by a fixture and deleted afterwards, pass or fail; nothing here
touches the root namespace. The IPVS half runs against :mod:`tests.fake_ipvsadm` (this host
has no IPVS), whose JSON state plays the kernel's IPVS table.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest

from lvsfw import (
    BackendUnavailable,
    Bundle,
    CommandFailed,
    ConflictError,
    Director,
    LvsfwError,
    specify,
    state,
)
from lvsfw.backends.iptables import Iptables
from lvsfw.backends.ipvs import parse_dump
from lvsfw.backends.nftables import Nftables
from lvsfw.lock import LockTimeout
from lvsfw.netns import legacy_tables
from lvsfw.rules import normalize
from tests import fake_ipvsadm
from tests.netlab import (
    OWN,
    Lab,
    LabError,
    Probe,
    ensure_kernel,
    filter_nft,
    filter_xtables,
    require_kernel,
    run,
    state_diff,
    xtables_tools,
)

pytestmark = pytest.mark.kernel

FIREWALLS = ("nftables", "iptables-nft", "iptables-legacy")
ROOT = Path(__file__).resolve().parent.parent


def servers(*addresses: str, **fields: Any) -> list[dict[str, Any]]:
    """Real servers as mappings (``RealServer.parse`` accepts them)."""
    return [{"address": a, **fields} for a in addresses]


WEB = Bundle(
    "web", ["192.0.2.10", "2001:db8::10"], "tcp:80,443", 80, persistence=300,
    real_servers=servers("10.0.0.11", "10.0.0.12", "2001:db8:1::11"),
)  # fmt: skip
DNS = Bundle(
    "dns", ["192.0.2.53", "2001:db8::53"], "tcp:53 udp:53", 53, scheduler="rr",
    real_servers=servers("10.0.0.21", "2001:db8:1::21"),
)  # fmt: skip
FTP = Bundle(
    "ftp", "192.0.2.21", "tcp:21,10000-20000", 21, persistence=600,
    real_servers=servers("10.0.0.31"),
)  # fmt: skip
FTP6 = Bundle(
    "ftp6", "2001:db8::21", "tcp:21,10000-20000", "0x2100/0xff00", persistence=600,
    real_servers=servers("2001:db8:1::31"),
)  # fmt: skip
#: The starting set: dual stack, v4 only, v6 only with a masked mark, TCP and UDP.
BUNDLES = [WEB, DNS, FTP, FTP6]
#: web changed (a port, a real server, the scheduler), ftp removed, smtp added.
WEB2 = Bundle(
    "web", ["192.0.2.10", "2001:db8::10"], "tcp:80,443,8443", 80, persistence=300,
    scheduler="rr", real_servers=servers("10.0.0.11", "10.0.0.13", "2001:db8:1::11"),
)  # fmt: skip
SMTP = Bundle("smtp", "192.0.2.25", "tcp:25", 25, real_servers=servers("10.0.0.41"))
CHANGED = [WEB2, DNS, FTP6, SMTP]
SETS = {"bundles": BUNDLES, "changed": CHANGED, "empty": []}

#: A foreign IPVS table: an address:port service and a fwmark service lvsfw does not own.
FOREIGN_IPVS = """\
-A -t 198.51.100.1:80 -s rr
-a -t 198.51.100.1:80 -r 10.9.9.9:80 -m -w 1
-A -f 999 -s wlc
-a -f 999 -r 10.9.9.8:0 -g -w 2
"""
FOREIGN_NFT = """\
table inet foreign {
\tchain pre {
\t\ttype filter hook prerouting priority mangle - 5; policy accept;
\t\tip saddr 198.51.100.7 meta mark set 0x99
\t}
}
"""
FOREIGN_XT = {
    "ip": "*mangle\n-A PREROUTING -s 198.51.100.0/24 -m comment --comment foreign"
    " -j MARK --set-xmark 0x96/0xffffffff\nCOMMIT\n",
    "ip6": "*mangle\n-A PREROUTING -s 2001:db8:ffff::/48 -m comment --comment foreign"
    " -j MARK --set-xmark 0x96/0xffffffff\nCOMMIT\n",
}


FOREIGN_IPSET = (
    "create foreign4 hash:ip,port family inet hashsize 1024 maxelem 65536 skbinfo\n"
    "add foreign4 192.0.2.10,tcp:80 skbmark 0x96\n"
)
_SET_SIZES = re.compile(r" (?:hashsize|maxelem|bucketsize|initval) \S+")


def filter_ipset(text: str, own: re.Pattern[str] | None = None) -> str:
    """``ipset save`` lines, sorted (a hash set lists its members in no fixed order); with
    ``own``, without its lines; without, lvsfw's sets without their sizes (a set re-created
    by an undo holds the same members but may be sized otherwise)."""
    lines = [x for x in text.splitlines() if own is None or not own.search(x)]
    lines = [_SET_SIZES.sub("", x) if OWN.search(x) else x for x in lines]
    return "".join(f"{line}\n" for line in sorted(lines))


# -- namespaces, the fake ipvsadm, snapshots -----------------------------------------------


class Netns:
    """A throwaway network namespace ``lvsfw-t-<hex>`` (lo up); :meth:`close` deletes it."""

    def __init__(self) -> None:
        self.name = f"lvsfw-t-{secrets.token_hex(4)}"
        run(["ip", "netns", "add", self.name])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])

    def close(self) -> None:
        """Delete the namespace (idempotent)."""
        run(["ip", "netns", "delete", self.name], check=False)

    def exec(self, *argv: str, stdin: Optional[str] = None) -> str:
        """Run ``argv`` inside the namespace."""
        return run(["ip", "netns", "exec", self.name, *argv], stdin=stdin)

    def nft(self, script: str) -> None:
        """Load an nft script."""
        self.exec("nft", "-f", "-", stdin=script)

    def xt(self, flavour: str, ip: str, script: str) -> None:
        """``(ip|ip6)tables-<flavour>-restore --noflush`` of ``script``."""
        self.exec(f"{ip}tables-{flavour}-restore", "--noflush", stdin=script)

    def foreign(self) -> None:
        """Foreign rules in every packet filter (so mangle tables exist before lvsfw runs)."""
        self.nft(FOREIGN_NFT)
        for flavour in ("legacy", "nft"):
            for ip, script in FOREIGN_XT.items():
                self.xt(flavour, ip, script)
        self.exec("ipset", "restore", stdin=FOREIGN_IPSET)

    def filters(self, own: bool = True) -> dict[str, str]:
        """The packet-filter state (handles, no counters); ``own=False``: foreign state only."""
        pattern = None if own else OWN
        text = self.exec("nft", "-a", "-s", "list", "ruleset")
        snapshot = {"nft": filter_nft(text, tables=("lvsfw_observe",), own=pattern)}
        for flavour in ("legacy", "nft"):
            for ip in ("ip", "ip6"):
                saved = self.exec(f"{ip}tables-{flavour}-save", "-t", "mangle")
                snapshot[f"{ip}tables-{flavour}"] = filter_xtables(saved, own=pattern)
        snapshot["ipset"] = filter_ipset(self.exec("ipset", "save"), own=pattern)
        return snapshot


def kernel_ready() -> None:
    """Skip (or fail under LVSFW_REQUIRE_KERNEL=1) without root and every tool."""
    ensure_kernel((*xtables_tools("legacy"), *xtables_tools("nft"), "ipset"))


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh namespace with foreign rules in nft and both iptables flavours."""
    kernel_ready()
    try:
        ns = Netns()
    except LabError as exc:
        require_kernel(f"cannot create a network namespace: {exc}")
    try:
        ns.foreign()
        yield ns
    finally:
        ns.close()


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    """The fake ipvsadm, seeded with :data:`FOREIGN_IPVS`; returns the wrapper's path."""
    wrapper = fake_ipvsadm.install(tmp_path / "ipvs")
    subprocess.run([str(wrapper), "-R"], input=FOREIGN_IPVS, text=True, check=True)
    fake_ipvsadm.update(wrapper, log=[])
    return wrapper


_FAKE_LOCK = threading.Lock()


def in_process(wrapper: Path) -> Callable[[Sequence[str]], str]:
    """A runner calling the fake ipvsadm's ``main`` in this process (no fork, no exec: 100
    times faster); it fails exactly as the program does (:class:`CommandFailed`)."""

    def runner(argv: Sequence[str]) -> str:
        out, err = io.StringIO(), io.StringIO()
        with _FAKE_LOCK, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            saved = os.environ.get("FAKE_IPVSADM_STATE")
            os.environ["FAKE_IPVSADM_STATE"] = str(wrapper.parent / "ipvs.json")
            try:
                rc = fake_ipvsadm.main(list(argv[1:]))
            finally:
                if saved is None:
                    del os.environ["FAKE_IPVSADM_STATE"]
                else:
                    os.environ["FAKE_IPVSADM_STATE"] = saved
        if rc != 0:
            raise CommandFailed(argv, rc, err.getvalue())
        return out.getvalue()

    return runner


def director(
    netns: Netns | str, fake: Path, firewall: str = "nftables", fast: bool = True, **kw: Any
) -> Director:
    """A Director on ``netns`` with its state file and lock next to the fake.

    ``fast``: ipvsadm calls go to the fake in-process; else through ``ip netns exec`` to the
    fake's wrapper program, as lvsfw runs the real one.
    """
    name = netns if isinstance(netns, str) else netns.name
    kw.setdefault("state_file", str(fake.parent.parent / "state.json"))
    kw.setdefault("lock_dir", str(fake.parent.parent))
    kw.setdefault("ipvsadm", str(fake))
    d = Director(firewall, netns=name, **kw)
    if fast and d.ipvs is not None:
        d.ipvs.runner = in_process(fake)
    return d


_HANDLE = re.compile(r"\s*# handle \d+")
_ELEMENTS = re.compile(r"elements = \{([^}]*)\}")


def canonical(text: str) -> str:
    """A listing without handles, elements sorted: what nft cannot keep across an undo (a
    re-created object gets a new handle; an interval map lists elements in insertion order)."""
    text = _HANDLE.sub("", text)
    text = _ELEMENTS.sub(
        lambda m: "elements = { " + ", ".join(sorted(e.strip() for e in m[1].split(","))) + " }",
        text,
    )
    return text


def snapshot(ns: Netns, fake: Path, d: Director) -> dict[str, Any]:
    """Everything an apply may change: foreign filter state byte for byte (handles included),
    the whole filter state up to handles and element order, the IPVS table, the state file."""
    state_text = Path(d.state_file).read_text() if os.path.exists(d.state_file) else None
    whole = {f"{k} (own)": canonical(v) for k, v in ns.filters().items()}
    return {
        **ns.filters(own=False), **whole, "ipvs": fake_ipvsadm.table(fake), "state": state_text,
    }  # fmt: skip


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Equal snapshots, with a readable diff when not."""
    text = {k: str(v) for k, v in before.items()}
    assert before == after, state_diff(text, {k: str(v) for k, v in after.items()})


def ipvs_services(fake: Path) -> frozenset[Any]:
    """The fwmark services lvsfw can model in the fake's table."""
    return parse_dump(fake_ipvsadm.table(fake)).services


def wanted_services(bundles: list[Bundle]) -> frozenset[Any]:
    """The fake's services after applying ``bundles``: theirs plus the foreign mark 999."""
    foreign = {s for s in parse_dump(FOREIGN_IPVS).services}
    return frozenset(specify(bundles).services | foreign)


def log(fake: Path) -> list[list[str]]:
    """Every successful mutating ipvsadm call so far."""
    calls: list[list[str]] = fake_ipvsadm.state_of(fake)["log"]
    return calls


class Writes:
    """Counts the kernel writes of a Director: packet-filter apply/remove and mutating ipvsadm."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, d: Director) -> None:
        self.calls: list[str] = []
        for verb in ("apply", "remove"):
            self._wrap(monkeypatch, d.firewall, verb, verb)
        assert d.ipvs is not None
        ipvs_run = d.ipvs.run

        def spy(args: Any, stdin: Optional[str] = None) -> str:
            if args[0] not in ("-S", "-L"):
                self.calls.append("ipvsadm " + " ".join(args))
            return ipvs_run(args, stdin)

        monkeypatch.setattr(d.ipvs, "run", spy)

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, obj: object, attr: str, label: str) -> None:
        original = getattr(obj, attr)

        def spy(*args: Any) -> Any:
            self.calls.append(label)
            return original(*args)

        monkeypatch.setattr(obj, attr, spy)


# -- apply, change, verify, destroy with real packets ------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """One client/director lab for the packet tests (each test destroys what it applied)."""
    kernel_ready()
    vips = sorted({str(v) for b in [*BUNDLES, *CHANGED] for v in b.vips})
    try:
        with Lab(vips=vips, prefix="lvsfw-t") as built:
            yield built
    except (PermissionError, LabError) as exc:
        require_kernel(f"cannot build the network lab: {exc}")


PROBED = [
    Probe(4, "tcp", "192.0.2.10", 80), Probe(4, "tcp", "192.0.2.10", 443),
    Probe(6, "tcp", "2001:db8::10", 443), Probe(4, "tcp", "192.0.2.10", 8443),
    Probe(4, "udp", "192.0.2.53", 53), Probe(6, "tcp", "2001:db8::53", 53),
    Probe(4, "tcp", "192.0.2.21", 15000), Probe(6, "tcp", "2001:db8::21", 21),
    Probe(4, "tcp", "192.0.2.25", 25), Probe(4, "tcp", "192.0.2.10", 81),
]  # fmt: skip


def expected_marks(bundles: list[Bundle]) -> dict[Probe, frozenset[int]]:
    """The mark each probe must carry under ``bundles`` (0: unmarked)."""
    rules = specify(bundles).rules
    marks = {}
    for probe in PROBED:
        mark = 0
        for r in rules:
            same = str(r.vip) == probe.address and r.protocol == probe.protocol
            if same and r.first_port <= probe.port <= r.last_port:
                mark = r.mark
        marks[probe] = frozenset({mark})
    return marks


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_apply_change_verify_destroy(
    lab: Lab, fake: Path, firewall: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = Netns.__new__(Netns)
    ns.name = lab.director
    if not any("foreign" in v for v in ns.filters().values()):
        ns.foreign()
    before = ns.filters()
    d = director(lab.director, fake, firewall, fast=firewall != "nftables")
    assert lab.probe(PROBED) == expected_marks([])

    done = d.apply(BUNDLES)
    assert done and d.verify(BUNDLES).ok, d.verify(BUNDLES)
    assert lab.probe(PROBED) == expected_marks(BUNDLES)
    assert ipvs_services(fake) == wanted_services(BUNDLES)

    # one bundle changed: the plan names only web's rules and service
    changed = [WEB2 if b is WEB else b for b in BUNDLES]
    plan = d.plan(changed)
    assert {str(r.vip) for r in plan.add_rules | plan.remove_rules} == {
        "192.0.2.10",
        "2001:db8::10",
    }
    assert {(s.mark) for s in plan.change_services} == {80}
    assert not plan.add_services and not plan.remove_services
    assert "8443" in str(plan) and "ipvs: change fwmark 80" in str(plan)
    d.apply(changed)
    assert d.verify(changed).ok
    assert lab.probe(PROBED) == expected_marks(changed)

    # the same again: no kernel write at all, and an empty plan
    handles, calls = ns.filters(), len(log(fake))
    writes = Writes(monkeypatch, d)
    again = d.apply(changed)
    assert not again and str(again) == "no changes" and writes.calls == []
    assert ns.filters() == handles and len(log(fake)) == calls

    d.destroy()
    monkeypatch.undo()
    assert_same(before, ns.filters())
    assert fake_ipvsadm.table(fake) == FOREIGN_IPVS.replace(" -a", "-a")
    assert lab.probe(PROBED) == expected_marks([])
    assert not d.plan([])


def test_netns_must_exist(tmp_path: Path, fake: Path) -> None:
    missing = f"lvsfw-t-{secrets.token_hex(4)}"
    with pytest.raises(LvsfwError, match="does not exist"):
        Director("nftables", netns=missing, ipvsadm=str(fake), lock_dir=str(tmp_path))
    assert not list(tmp_path.glob("*.lock")) and log(fake) == []


def test_netns_deleted_before_apply(netns: Netns, fake: Path) -> None:
    d = director(netns, fake, fast=False)
    netns.close()
    with pytest.raises(LvsfwError, match="does not exist"):
        d.apply(BUNDLES)
    assert log(fake) == [] and not os.path.exists(d.state_file)


# -- ownership and removal ----------------------------------------------------------------


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_foreign_service_on_a_wanted_mark_is_refused(
    netns: Netns, fake: Path, firewall: str
) -> None:
    d = director(netns, fake, firewall)
    before = snapshot(netns, fake, d)
    taken = Bundle("taken", "192.0.2.99", "tcp:99", 999, real_servers=servers("10.9.9.8"))
    with pytest.raises(ConflictError, match=r"fwmark 999 .* not lvsfw's"):
        d.apply([WEB, taken])
    with pytest.raises(ConflictError):
        d.plan([taken])
    assert_same(before, snapshot(netns, fake, d))
    assert log(fake) == []


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_bundle_removed_from_the_list_leaves_the_kernel(
    netns: Netns, fake: Path, firewall: str
) -> None:
    d = director(netns, fake, firewall)
    d.apply(BUNDLES)
    rest = [b for b in BUNDLES if b is not FTP]
    plan = d.apply(rest)
    assert {r.mark for r in plan.remove_rules} == {21} and not plan.add_rules
    assert {s.mark for s in plan.remove_services} == {21}
    assert normalize(d.firewall.read()) == normalize(specify(rest).rules)
    assert ipvs_services(fake) == wanted_services(rest)
    assert d.verify(rest).ok
    d.apply([])
    assert d.firewall.read() == frozenset() and ipvs_services(fake) == wanted_services([])
    assert netns.filters(own=False) == netns.filters()  # nothing of lvsfw's left


# -- incremental --------------------------------------------------------------------------

MANY = [
    Bundle(f"b{i}", [f"192.0.2.{100 + i}", f"2001:db8::{100 + i:x}"], "tcp:80,443 udp:53",
           1000 + i, real_servers=servers(f"10.1.0.{i}", f"2001:db8:2::{i:x}"))
    for i in range(20)
]  # fmt: skip


@pytest.mark.parametrize("firewall", ["iptables-nft", "iptables-legacy"])
def test_iptables_is_read_once_per_plan_apply_and_verify(
    netns: Netns, fake: Path, firewall: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per plan, apply and verify: each ``*-save`` once, ``ipset list -n`` once, the owned
    sets' listing at most once; a change is dry-run (``--test``) before anything is written."""
    calls: list[tuple[str, str]] = []  # (kind, program)
    real = Iptables._run

    def run(self: Iptables, argv: list[str], stdin: Optional[str] = None) -> str:
        listing = argv[0].endswith("-save") or argv[1:] == ["list", "-n"]
        listing |= argv[1:] == ["restore"] and (stdin or "").startswith("list ")
        kind = "read" if listing else "test" if "--test" in argv else "write"
        calls.append((kind, " ".join(argv[:2])))
        return real(self, argv, stdin)

    monkeypatch.setattr(Iptables, "_run", run)
    d = director(netns, fake, firewall)
    steps = [(d.apply, BUNDLES), (d.plan, CHANGED), (d.verify, CHANGED), (d.apply, CHANGED)]
    for call, bundles in [*steps, (d.apply, CHANGED)]:  # the last apply changes nothing
        calls.clear()
        call(bundles)
        reads = [program for kind, program in calls if kind == "read"]
        assert len(reads) == len(set(reads)) and len(reads) >= 3, calls
        kinds = [kind for kind, _ in calls]
        if "write" in kinds:
            assert "test" in kinds[: kinds.index("write")], calls
    assert kinds == ["read"] * len(kinds)


def test_one_change_among_many_writes_only_that_bundle(netns: Netns, fake: Path) -> None:
    d = director(netns, fake)
    d.apply(MANY)
    assert isinstance(d.firewall, Nftables)
    calls = len(log(fake))
    b7 = MANY[7]
    changed = Bundle(
        "b7", b7.vips, "tcp:80,443,8080 udp:53", b7.mark,
        real_servers=servers("10.1.0.7", "10.1.0.77", "2001:db8:2::7", weight=3),
    )  # fmt: skip
    d.apply([changed if b is b7 else b for b in MANY])
    tx = json.dumps(d.firewall.last_transaction)
    assert "192.0.2.107" in tx and "8080" in tx
    for other in {str(v) for b in MANY if b is not b7 for v in b.vips}:
        assert f'"{other}"' not in tx
    assert '"table"' not in tx.replace('"table": "lvsfw"', "")  # elements, not the table
    new = log(fake)[calls:]
    assert new and all(call[call.index("-f") + 1] == "1007" for call in new), new


# -- firewall="auto" ----------------------------------------------------------------------


def test_auto_detection(tmp_path: Path, fake: Path) -> None:
    kernel_ready()
    cases = {
        "nothing": ("nftables", None),
        "legacy": ("iptables-legacy", ("legacy", FOREIGN_XT["ip"])),
        "nft-mangle": ("iptables-nft", ("nft", FOREIGN_XT["ip6"])),
        "own-table": ("nftables", None),
    }
    for case, (expected, rules) in cases.items():
        ns = Netns()
        try:
            if rules is not None:
                ns.xt(rules[0], "ip" if rules[0] == "legacy" else "ip6", rules[1])
            if case == "own-table":
                Director("nftables", netns=ns.name, ipvs=False, lock_dir=str(tmp_path),
                         state_file=str(tmp_path / "s.json")).apply(BUNDLES)  # fmt: skip
            tables = legacy_tables(ns.name)
            d = Director("auto", netns=ns.name, ipvsadm=str(fake), lock_dir=str(tmp_path))
            assert d.firewall.name == expected, case
            assert legacy_tables(ns.name) == tables, "detection must not create x_tables"
            if case == "legacy":  # ...and then iptables-nft mangle as well: refused
                ns.nft("table ip mangle {\n}\n")
                with pytest.raises(ConflictError, match="both iptables-legacy and nftables"):
                    Director("auto", netns=ns.name, ipvsadm=str(fake), lock_dir=str(tmp_path))
        finally:
            ns.close()


# -- concurrency --------------------------------------------------------------------------


def test_threads_serialize_on_the_lock(netns: Netns, fake: Path) -> None:
    first, second = director(netns, fake), director(netns, fake)
    events: list[str] = []
    holding = threading.Event()

    def slow(step: str) -> None:
        events.append(f"first {step}")
        if step == "marks":
            holding.set()
            time.sleep(0.5)

    first.step_hook = slow
    second.step_hook = lambda step: events.append(f"second {step}")
    worker = threading.Thread(target=first.apply, args=(BUNDLES,))
    worker.start()
    assert holding.wait(10)
    impatient = director(netns, fake, lock_timeout=0.1)
    started = time.monotonic()
    with pytest.raises(LockTimeout, match="another lvsfw apply has held it"):
        impatient.apply(CHANGED)
    assert time.monotonic() - started < 0.4
    second.apply(CHANGED)  # waits for the first, then wins: the later apply's state
    worker.join()
    firsts = [i for i, e in enumerate(events) if e.startswith("first")]
    seconds = [i for i, e in enumerate(events) if e.startswith("second")]
    assert max(firsts) < min(seconds), events
    assert second.verify(CHANGED).ok and ipvs_services(fake) == wanted_services(CHANGED)


CHILD = """
import json, os, signal, sys, time
sys.path.insert(0, {root!r})
from lvsfw import Director
from tests.test_director import SETS
args = json.loads(sys.argv[1])
d = Director(args["firewall"], netns=args["netns"], ipvsadm=args["ipvsadm"],
             state_file=args["state_file"], lock_dir=args["lock_dir"])
def hook(step):
    if step == args.get("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if step == args.get("hold"):
        open(args["marker"], "w").close()
        time.sleep(args["seconds"])
d.step_hook = hook
d.apply(SETS[args["bundles"]])
"""


def child(d: Director, bundles: str, **args: Any) -> subprocess.Popen[str]:
    """Start ``Director.apply(SETS[bundles])`` in another process with ``d``'s settings."""
    assert d.netns is not None and d.ipvs is not None
    settings = {
        "firewall": d.firewall.name, "netns": d.netns, "ipvsadm": d.ipvs.ipvsadm,
        "state_file": d.state_file, "lock_dir": os.path.dirname(d.lock_path),
        "bundles": bundles, **args,
    }  # fmt: skip
    code = CHILD.format(root=str(ROOT))
    argv = [sys.executable, "-c", code, json.dumps(settings)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_processes_serialize_on_the_lock(netns: Netns, fake: Path, tmp_path: Path) -> None:
    d = director(netns, fake, "iptables-legacy")
    marker = tmp_path / "holding"
    proc = child(d, "bundles", hold="marks", marker=str(marker), seconds=1.0)
    deadline = time.monotonic() + 20
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    with pytest.raises(LockTimeout):
        director(netns, fake, "iptables-legacy", lock_timeout=0.1).apply(CHANGED)
    d.apply(CHANGED)  # the later one: waits for the process, then its state wins
    assert proc.wait(30) == 0, proc.communicate()
    assert d.verify(CHANGED).ok and ipvs_services(fake) == wanted_services(CHANGED)
    assert normalize(d.firewall.read()) == normalize(specify(CHANGED).rules)


# -- boot files ---------------------------------------------------------------------------


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_saved_boot_files_restore_the_spec(tmp_path: Path, fake: Path, firewall: str) -> None:
    kernel_ready()
    spec = specify(BUNDLES)
    ns = Netns()
    try:
        d = director(ns, fake, firewall)
        paths = d.save(BUNDLES, str(tmp_path / "boot"))
        names = sorted(os.path.basename(p) for p in paths)
        assert "lvsfw.ipvs" in names and len(names) >= 2
        assert firewall == "nftables" or "lvsfw.ipset" in names
        # the ipset file first: the iptables rules name its sets
        for path in sorted(paths, key=lambda p: not p.endswith("lvsfw.ipset")):
            text = Path(path).read_text()
            name = os.path.basename(path)
            if name == "lvsfw.ipvs":
                subprocess.run([str(fake), "-R"], input=text, text=True, check=True)
            elif firewall == "nftables":
                ns.exec("nft", "-f", path)
            elif name == "lvsfw.ipset":
                ns.exec("ipset", "-exist", "restore", "-file", path)
            else:
                assert isinstance(d.firewall, Iptables)
                ip = "ip6" if name.endswith("v6") else "ip"
                ns.xt(firewall.split("-")[1], ip, text)
        assert normalize(d.firewall.read()) == normalize(spec.rules)
        assert ipvs_services(fake) == wanted_services(BUNDLES)
        assert not d.firewall.findings(spec)
    finally:
        ns.close()


def test_destroy_without_ipvs_keeps_owned_services_recorded(netns: Netns, fake: Path) -> None:
    """Marks-only destroy leaves IPVS alone, and lvsfw still knows those services are its."""
    director(netns, fake).apply(BUNDLES)
    owned = state.load(str(fake.parent.parent / "state.json")).services
    assert owned
    director(netns, fake, ipvs=False).destroy()
    assert state.load(str(fake.parent.parent / "state.json")).services == owned
    director(netns, fake).destroy()  # the full destroy can still remove them
    assert fake_ipvsadm.table(fake) == FOREIGN_IPVS.replace(" -a", "-a")


def test_unusable_firewall_is_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The backend says why it cannot run (and what to install) when the Director is made."""
    from lvsfw.backends.iptables import IptablesNft

    missing = {f: ("lvsfw-no-such-restore", "lvsfw-no-such-save") for f in IptablesNft.binaries}
    monkeypatch.setattr(IptablesNft, "binaries", missing)
    with pytest.raises(BackendUnavailable, match="lvsfw-no-such-restore not found; apt-get"):
        Director("iptables-nft", ipvs=False, state_file=str(tmp_path / "s.json"),
                 lock_dir=str(tmp_path))  # fmt: skip
