"""A throwaway two-namespace network lab for kernel tests: client -> veth -> director.

``Lab`` creates ``lvsfw-<random>-cli`` and ``lvsfw-<random>-dir`` joined by a veth pair (IPv4 and
IPv6, static neighbours, no DAD), routes the VIP networks from the client to the director, puts
VIPs on the director's ``lo``, sends real TCP SYNs, UDP datagrams and SCTP INITs from the client,
and observes in the director which firewall mark every probe packet carried.

The observer is its own table ``inet lvsfw_observe``: a prerouting chain at priority mangle + 10
(after every mangle-priority marker) adds ``daddr . l4proto . dport . mark`` of each client packet
to a dynamic set, so the lab reads the *actual* mark of each probe, not a guess checked by one
counter per candidate mark.

Nothing here touches the root namespace: every link, address, route and rule is created inside
the lab's namespaces, and ``close()`` (also ``__exit__``) deletes both namespaces.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import pytest

REQUIRE_ENV = "LVSFW_REQUIRE_KERNEL"
OBSERVER_TABLE = "lvsfw_observe"
OWN = re.compile("lvsfw", re.IGNORECASE)
BASE_TOOLS = ("ip", "nft", "sysctl")
FLAVOURS = ("legacy", "nft")
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
_NUMBERS = {number: name for name, number in PROTOCOLS.items()}
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ENV = {"PATH": _PATH, "LC_ALL": "C"}


def require_kernel(reason: str) -> NoReturn:
    """Skip the test for ``reason``; fail instead when ``LVSFW_REQUIRE_KERNEL=1``."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 makes this a failure)", pytrace=False)
    pytest.skip(reason)


def kernel_problem(tools: Iterable[str] = ()) -> str | None:
    """Why kernel tests cannot run here (not root, a tool missing), or None."""
    if os.geteuid() != 0:
        return "kernel tests need root (network namespaces, nftables, iptables)"
    missing = [t for t in (*BASE_TOOLS, *tools) if shutil.which(t, path=_PATH) is None]
    if missing:
        return f"kernel tests need {', '.join(missing)}: apt-get install iproute2 nftables iptables"
    return None


def xtables_tools(flavour: str) -> tuple[str, ...]:
    """The programs of one iptables flavour (``legacy`` or ``nft``), IPv4 and IPv6."""
    suffixes = ("", "-save", "-restore")
    return tuple(f"{ip}tables-{flavour}{end}" for ip in ("ip", "ip6") for end in suffixes)


def ensure_kernel(tools: Iterable[str] = ()) -> None:
    """``require_kernel`` unless root and every tool is present."""
    problem = kernel_problem(tools)
    if problem:
        require_kernel(problem)


@contextlib.contextmanager
def empty_netns(tools: Iterable[str] = ()) -> Iterator[str]:
    """A throwaway, empty network namespace ``lvsfw-t-<hex>`` (after :func:`ensure_kernel` of
    ``tools``); always deleted, pass or fail."""
    ensure_kernel(tools)
    name = f"lvsfw-t-{secrets.token_hex(4)}"
    try:
        run(["ip", "netns", "add", name])
    except LabError as exc:
        require_kernel(f"cannot create a network namespace: {exc}")
    try:
        yield name
    finally:
        run(["ip", "netns", "delete", name], check=False)


def run(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    """Run ``argv`` (a list, never a shell) and return stdout; raise with stderr on failure."""
    done = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, env=_ENV, check=False, timeout=60
    )
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class LabError(RuntimeError):
    """A lab command failed (the message carries argv and the tool's stderr)."""


@dataclass(frozen=True, order=True)
class Probe:
    """One packet from the client: ``family`` 4|6, ``protocol`` tcp|udp|sctp, to address:port."""

    family: int
    protocol: str
    address: str
    port: int

    def __str__(self) -> str:
        host = self.address if self.family == 4 else f"[{self.address}]"
        return f"{self.protocol} {host}:{self.port}"


#: Marks seen per probe; a correctly classified probe maps to exactly one mark (0: unmarked).
Observation = dict[Probe, frozenset[int]]

# Runs in the client namespace as ``python -c``: one JSON list of probes on stdin.
_PROBE_SCRIPT = r"""
import errno, json, os, socket, struct, sys, time

TABLE = []
for n in range(256):
    c = n
    for _ in range(8):
        c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
    TABLE.append(c)

def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF

def sctp_init(sport, dport):
    tag = int.from_bytes(os.urandom(4), "big") | 1
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, tag, 65535, 1, 1, tag)
    crc = crc32c(struct.pack("!HHII", sport, dport, 0, 0) + chunk)
    return struct.pack("!HHI", sport, dport, 0) + struct.pack("<I", crc) + chunk

AF = {4: socket.AF_INET, 6: socket.AF_INET6}
errors, pending, raw = [], [], {}
udp = {f: socket.socket(AF[f], socket.SOCK_DGRAM) for f in AF}

def flush():
    time.sleep(0.01)
    for s in pending:
        s.close()
    del pending[:]

for family, proto, addr, port in json.load(sys.stdin):
    try:
        if proto == "tcp":
            s = socket.socket(AF[family], socket.SOCK_STREAM)
            s.setblocking(False)
            pending.append(s)
            rc = s.connect_ex((addr, port))
            if rc not in (0, errno.EINPROGRESS, errno.ECONNREFUSED):
                errors.append("tcp %s %d: %s" % (addr, port, os.strerror(rc)))
            if len(pending) >= 200:
                flush()
        elif proto == "udp":
            udp[family].sendto(b"lvsfw-probe", (addr, port))
        elif proto == "sctp":
            if family not in raw:
                raw[family] = socket.socket(AF[family], socket.SOCK_RAW, 132)
            raw[family].sendto(sctp_init(40000 + port % 20000, port), (addr, 0))
        else:
            errors.append("unknown protocol %r" % proto)
    except OSError as exc:
        errors.append("%s %s %d: %s" % (proto, addr, port, exc))
flush()
json.dump({"errors": errors}, sys.stdout)
"""


class Lab:
    """Client and director namespaces joined by a veth pair; see the module docstring.

    ``vip_networks`` are routed from the client via the director; ``vips`` go on the director's
    ``lo`` (more with :meth:`add_vips`). Use as a context manager; :meth:`close` is idempotent.
    """

    CLIENT4, DIRECTOR4, PREFIX4 = "198.18.0.1", "198.18.0.2", 24
    CLIENT6, DIRECTOR6, PREFIX6 = "fd00:6c76::1", "fd00:6c76::2", 64
    CLIENT_MAC, DIRECTOR_MAC = "02:6c:76:00:00:01", "02:6c:76:00:00:02"
    CLIENT_IF, DIRECTOR_IF = "veth-cli", "veth-dir"

    def __init__(
        self,
        vips: Iterable[str] = (),
        vip_networks: Iterable[str] = ("192.0.2.0/24", "2001:db8::/32"),
        prefix: str = "lvsfw",
    ) -> None:
        tag = secrets.token_hex(4)
        self.client = f"{prefix}-{tag}-cli"
        self.director = f"{prefix}-{tag}-dir"
        self.vips = list(vips)
        self.vip_networks = list(vip_networks)
        self._created: list[str] = []
        self._flavours: tuple[str, ...] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete both namespaces (and with them every link, rule and address in them)."""
        while self._created:
            run(["ip", "netns", "delete", self._created.pop()], check=False)

    def _build(self) -> None:
        for ns in (self.client, self.director):
            run(["ip", "netns", "add", ns])
            self._created.append(ns)
            self.exec(ns, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                           "net.ipv6.conf.default.accept_dad=0",
                           "net.ipv6.conf.default.router_solicitations=0"])  # fmt: skip
            self.ip(ns, "link", "set", "lo", "up")
        self.ip(self.client, "link", "add", self.CLIENT_IF, "address", self.CLIENT_MAC,
                "type", "veth", "peer", "name", self.DIRECTOR_IF,
                "address", self.DIRECTOR_MAC, "netns", self.director)  # fmt: skip
        ends = (
            (self.client, self.CLIENT_IF, self.CLIENT4, self.CLIENT6),
            (self.director, self.DIRECTOR_IF, self.DIRECTOR4, self.DIRECTOR6),
        )
        for (ns, dev, addr4, addr6), (_, _, peer4, peer6), mac in zip(
            ends, reversed(ends), (self.DIRECTOR_MAC, self.CLIENT_MAC)
        ):
            self.ip(ns, "addr", "add", f"{addr4}/{self.PREFIX4}", "dev", dev)
            self.ip(ns, "-6", "addr", "add", f"{addr6}/{self.PREFIX6}", "dev", dev, "nodad")
            self.ip(ns, "link", "set", dev, "up")
            for peer in (peer4, peer6):
                self.ip(ns, "neigh", "replace", peer, "lladdr", mac, "dev", dev, "nud", "permanent")
        for net in self.vip_networks:
            via = self.DIRECTOR6 if ":" in net else self.DIRECTOR4
            self.ip(self.client, "route", "add", net, "via", via, "dev", self.CLIENT_IF)
        self.add_vips(self.vips)
        self._install_observer()

    # -- commands inside the namespaces ------------------------------------------------------
    def exec(self, ns: str, argv: Sequence[str], stdin: str | None = None) -> str:
        """Run ``argv`` inside namespace ``ns`` (``ip netns exec``) and return stdout."""
        return run(["ip", "netns", "exec", ns, *argv], stdin=stdin)

    def ip(self, ns: str, *args: str) -> str:
        """``ip -n ns ARGS``."""
        return run(["ip", "-n", ns, *args])

    def nft(self, script: str, ns: str | None = None) -> None:
        """Load an nft script (default: in the director) atomically."""
        self.exec(ns or self.director, ["nft", "-f", "-"], stdin=script)

    def add_vips(self, vips: Iterable[str]) -> None:
        """Put addresses on the director's ``lo`` (host routes: /32 and /128)."""
        for vip in vips:
            plen = 128 if ":" in vip else 32
            self.ip(self.director, "addr", "replace", f"{vip}/{plen}", "dev", "lo")

    # -- probes and the observer -------------------------------------------------------------
    def _install_observer(self) -> None:
        sets, rules = [], []
        for fam, ip, saddr in (("4", "ip", self.CLIENT4), ("6", "ip6", self.CLIENT6)):
            kind = "ipv4_addr" if fam == "4" else "ipv6_addr"
            sets.append(
                f"  set seen{fam} {{ type {kind} . inet_proto . inet_service . mark;"
                " flags dynamic; size 65535; counter; }"
            )
            rules.append(
                f'    iifname "{self.DIRECTOR_IF}" {ip} saddr {saddr}'
                " meta l4proto { tcp, udp, sctp }"
                f" add @seen{fam} {{ {ip} daddr . meta l4proto . th dport . meta mark }}"
            )
        hook = "    type filter hook prerouting priority mangle + 10;"
        table = [f"table inet {OBSERVER_TABLE} {{", *sets, "  chain observe {", hook, *rules]
        self.nft("\n".join([*table, "  }", "}", ""]))

    def reset_observer(self) -> None:
        """Forget every packet observed so far."""
        self.nft(f"flush set inet {OBSERVER_TABLE} seen4\nflush set inet {OBSERVER_TABLE} seen6\n")

    def observe(self) -> Observation:
        """Every (probe, mark) the director's prerouting saw since the last reset."""
        seen: dict[Probe, set[int]] = {}
        for fam in (4, 6):
            out = self.exec(self.director, ["nft", "-j", "list", "set", "inet", OBSERVER_TABLE,
                                            f"seen{fam}"])  # fmt: skip
            for item in json.loads(out)["nftables"]:
                for elem in item.get("set", {}).get("elem", []):
                    value = elem["elem"]["val"] if "elem" in elem else elem
                    addr, proto, port, mark = value["concat"]
                    proto = _NUMBERS.get(proto, proto) if isinstance(proto, int) else proto
                    probe = Probe(fam, str(proto), str(addr), int(port))
                    seen.setdefault(probe, set()).add(int(mark))
        return {probe: frozenset(marks) for probe, marks in seen.items()}

    def send(self, probes: Iterable[Probe]) -> None:
        """Send every probe from the client in one batch (one process in the client netns)."""
        batch = [[p.family, p.protocol, p.address, p.port] for p in probes]
        out = self.exec(self.client, [sys.executable, "-c", _PROBE_SCRIPT], stdin=json.dumps(batch))
        errors = json.loads(out)["errors"]
        if errors:
            raise LabError("probes could not be sent: " + "; ".join(errors))

    def probe(self, probes: Iterable[Probe], timeout: float = 3.0) -> Observation:
        """Reset the observer, send ``probes`` and return what was observed for them.

        Waits until every probe was seen at least once (or ``timeout``); a probe missing from
        the result never reached the director's prerouting hook.
        """
        wanted = set(probes)
        self.reset_observer()
        self.send(sorted(wanted))
        deadline = time.monotonic() + timeout
        while True:
            seen = self.observe()
            if wanted <= set(seen) or time.monotonic() > deadline:
                return {p: m for p, m in seen.items() if p in wanted}
            time.sleep(0.02)

    def send_tcp_syn(self, family: int, vip: str, port: int) -> None:
        """One TCP SYN (a non-blocking connect) from the client to vip:port."""
        self.send([Probe(family, "tcp", vip, port)])

    def send_udp(self, family: int, vip: str, port: int) -> None:
        """One UDP datagram from the client to vip:port."""
        self.send([Probe(family, "udp", vip, port)])

    def send_sctp_init(self, family: int, vip: str, port: int) -> None:
        """One SCTP INIT chunk to vip:port, built by hand on a raw socket (IPPROTO_SCTP).

        A raw socket works whether or not the kernel has the SCTP stack (``sctp`` module):
        the client needs no association, only a packet the director's filter can match.
        """
        self.send([Probe(family, "sctp", vip, port)])

    # -- state snapshots ---------------------------------------------------------------------
    def xtables_flavours(self) -> tuple[str, ...]:
        """The iptables flavours whose tools exist and whose kernel side works in the director."""
        if self._flavours is not None:
            return self._flavours
        usable = []
        for flavour in FLAVOURS:
            if kernel_problem(xtables_tools(flavour)):
                continue
            try:
                for ip in ("ip", "ip6"):
                    self.exec(self.director, [f"{ip}tables-{flavour}", "-t", "mangle", "-S"])
            except LabError:
                continue
            usable.append(flavour)
        self._flavours = tuple(usable)
        return self._flavours

    def nft_ruleset(self, own: re.Pattern[str] | None = None) -> str:
        """``nft -a -s list ruleset`` (handles, no counter values) without the observer table.

        With ``own``, also without tables, chains/sets/maps and rules whose name or text
        matches it (lvsfw's table, and the chain and jump iptables-nft keeps in nft).
        """
        text = self.exec(self.director, ["nft", "-a", "-s", "list", "ruleset"])
        return filter_nft(text, tables=(OBSERVER_TABLE,), own=own)

    def xtables_save(self, flavour: str, family: int, own: re.Pattern[str] | None = None) -> str:
        """``(ip|ip6)tables-<flavour>-save`` without comments and counters; ``own`` as above."""
        tool = f"{'ip' if family == 4 else 'ip6'}tables-{flavour}-save"
        return filter_xtables(self.exec(self.director, [tool]), own=own)

    def state(self, own: re.Pattern[str] | None = None) -> dict[str, str]:
        """The director's whole packet-filter state, by source (nft, iptables-legacy-ipv4, ...).

        ``state()`` is everything but the lab's observer; ``state(OWN)`` is only foreign state.
        """
        snapshot = {"nft": self.nft_ruleset(own)}
        for flavour in self.xtables_flavours():
            for family in (4, 6):
                key = f"iptables-{flavour}-ipv{family}"
                snapshot[key] = self.xtables_save(flavour, family, own)
        return snapshot

    def install_foreign_rules(self) -> None:
        """Rules lvsfw does not own: an nft table and, per usable iptables flavour, mangle rules.

        None of them matches a probe (sources 198.51.100.0/24, 2001:db8:ffff::/48, port 7).
        """
        self.nft(FOREIGN_NFT)
        for flavour in self.xtables_flavours():
            for ip, script in (("ip", FOREIGN_XTABLES4), ("ip6", FOREIGN_XTABLES6)):
                tool = f"{ip}tables-{flavour}-restore"
                self.exec(self.director, [tool, "--noflush"], stdin=script)


def filter_nft(text: str, tables: Iterable[str] = (), own: re.Pattern[str] | None = None) -> str:
    """nft listing text without ``tables`` and, with ``own``, anything matching it; no blanks."""
    drop_tables = set(tables)
    kept: list[str] = []
    skip_depth: int | None = None
    for raw_line in text.splitlines():
        line = raw_line.rstrip()
        body = line.lstrip("\t")
        depth = len(line) - len(body)
        if skip_depth is not None:
            if depth == skip_depth and body == "}":
                skip_depth = None
            continue
        if not body:
            continue
        words = body.split()
        opens = "{" in words and depth <= 1
        if opens and depth == 0 and words[0] == "table" and len(words) > 2:
            if words[2] in drop_tables or (own is not None and own.search(words[2])):
                skip_depth = 0
                continue
        elif opens and depth == 1 and len(words) > 1 and own is not None and own.search(words[1]):
            skip_depth = 1
            continue
        if depth >= 2 and own is not None and own.search(body):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


_COUNTERS = re.compile(r"\[\d+:\d+\]")


def filter_xtables(text: str, own: re.Pattern[str] | None = None) -> str:
    """iptables-save text without comment lines and counters; with ``own``, without its lines."""
    kept = []
    for line in text.splitlines():
        if line.startswith("#") or (own is not None and own.search(line)):
            continue
        kept.append(_COUNTERS.sub("[-:-]", line))
    return "\n".join(kept) + "\n"


def state_diff(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """A unified diff per changed source of two :meth:`Lab.state` snapshots ('' if equal)."""
    parts = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, ""), after.get(key, "")
        if old != new:
            diff = difflib.unified_diff(
                old.splitlines(), new.splitlines(), f"{key} before", f"{key} after", lineterm=""
            )
            parts.append("\n".join(diff))
    return "\n".join(parts)


FOREIGN_NFT = """\
table inet foreign {
\tset blocked4 {
\t\ttype ipv4_addr
\t\telements = { 198.51.100.7, 198.51.100.8 }
\t}
\tchain pre {
\t\ttype filter hook prerouting priority mangle - 5; policy accept;
\t\tip saddr @blocked4 meta mark set 0x99
\t\tip6 saddr 2001:db8:ffff::/48 meta mark set 0x98
\t\ttcp dport 7 meta mark set meta mark | 0x100
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tip saddr 198.51.100.0/24 drop
\t}
}
"""

FOREIGN_XTABLES4 = """\
*mangle
:FOREIGN-PRE - [0:0]
-A PREROUTING -s 198.51.100.0/24 -j FOREIGN-PRE
-A PREROUTING -p tcp -m tcp --dport 7 -m comment --comment foreign -j MARK --set-xmark 0x97/0xff
-A FOREIGN-PRE -j MARK --set-xmark 0x96/0xffffffff
COMMIT
*filter
-A INPUT -s 198.51.100.0/24 -j DROP
COMMIT
"""

FOREIGN_XTABLES6 = """\
*mangle
:FOREIGN-PRE - [0:0]
-A PREROUTING -s 2001:db8:ffff::/48 -j FOREIGN-PRE
-A PREROUTING -p udp -m udp --dport 7 -m comment --comment foreign -j MARK --set-xmark 0x97/0xff
-A FOREIGN-PRE -j MARK --set-xmark 0x96/0xffffffff
COMMIT
"""
