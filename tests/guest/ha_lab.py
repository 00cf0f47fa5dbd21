"""An HA pair lab for keepalived inside the VM: two directors, a client, two real servers and a
sorry server on one L2 segment (a bridge), forwarding by direct routing.

Seven network namespaces, all deleted by :meth:`HaLab.close`::

    lb1 .1    lb2 .2    cli .5    rs1 .11    rs2 .12    sorry .30      (10.78.0.0/24)
      |eth0     |eth0     |eth0     |eth0      |eth0      |eth0
    ==+=========+=========+=========+==========+==========+== br0, in namespace sw

The VIP (:data:`VIP`) floats between the directors by VRRP (keepalived adds it to the master's
eth0); the real servers and the sorry server hold it on ``lo`` and never answer ARP for it
(``arp_ignore=1``, ``arp_announce=2``), so they accept the packets a director forwards by
direct routing and answer the client straight over the segment: no gateway is needed.

The servers are :class:`e2e_lab.NameServer` instances (one per server, so that one can be
stopped, by closing its sockets, and started again); the client's requests are sockets made in
the client namespace (:func:`e2e_lab.in_netns`). keepalived runs in the foreground,
``keepalived --namespace NS -f CONF -n -l -D -G`` (no fork; log to stderr, a file, and not
to syslog: the guest has none, and keepalived would fall back to the VM's console), in a
session of its own: :meth:`HaLab.kill_keepalived` signals the whole process group (parent,
VRRP child, checker child), as a crash would. The IPVS table and connections are polled
through ``/proc/thread-self/net/ip_vs*`` from a thread inside the director's namespace (no
process start per poll: under TCG each costs about a second); ``ipvsadm`` confirms.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Optional, TypeVar

from e2e_lab import IP, Built, NameServer, in_netns, ip_batch, sh, sysctls

T = TypeVar("T")

KEEPALIVED = shutil.which("keepalived", path="/usr/sbin:/usr/bin:/sbin:/bin") or "keepalived"
SUBNET = "10.78.0.0/24"
VIP = "10.78.0.100"
#: Director name -> (unicast VRRP address, priority).
DIRECTORS = {"lb1": ("10.78.0.1", 150), "lb2": ("10.78.0.2", 100)}
CLIENT = "10.78.0.5"
#: Server name (also what it answers) -> address. "sorry" is the sorry server.
SERVERS = {"rs1": "10.78.0.11", "rs2": "10.78.0.12", "sorry": "10.78.0.30"}
REAL = ("rs1", "rs2")
ROLES = ("sw", *DIRECTORS, "cli", *SERVERS)


def wait_for(
    probe: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float = 0.1
) -> tuple[T, float, bool]:
    """Poll ``probe()`` until ``done(result)`` or ``timeout`` seconds pass.

    Returns the last result, the seconds it took and whether ``done`` held.
    """
    start = time.monotonic()
    while True:
        result = probe()
        elapsed = time.monotonic() - start
        if done(result):
            return result, elapsed, True
        if elapsed >= timeout:
            return result, elapsed, False
        time.sleep(interval)


def _hex_address(text: str) -> str:
    """An address of /proc/net/ip_vs (``0A4E000B``, or 32 hex digits for IPv6)."""
    return str(ipaddress.ip_address(int(text, 16)))


def parse_proc_ip_vs(text: str) -> dict[int, set[str]]:
    """fwmark -> the real server addresses of ``/proc/net/ip_vs`` (IPv4 and IPv6 alike)."""
    table: dict[int, set[str]] = {}
    current: Optional[set[str]] = None
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["FWM"]:
            current = table.setdefault(int(words[1], 16), set())
        elif words[:1] in (["TCP"], ["UDP"], ["SCTP"]):
            current = None  # a service by address and port: not lvsfw's
        elif words[:1] == ["->"] and current is not None and ":" in words[1]:
            hexaddr = words[1].rpartition(":")[0].strip("[]")
            if all(c in "0123456789ABCDEFabcdef" for c in hexaddr):
                current.add(_hex_address(hexaddr))
    return table


class Keepalived:
    """One keepalived of a director: its Popen, console log file and config path."""

    def __init__(self, netns: str, conf: Path, log: Path) -> None:
        self.netns, self.conf, self.log = netns, conf, log
        self._out: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [KEEPALIVED, "--namespace", netns, "-f", str(conf), "-n", "-l", "-D", "-G"],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill reaches all three
        )

    @property
    def pid_file(self) -> str:
        """Where ``keepalived --namespace NS`` keeps its main pid (as lvsfw reads it)."""
        return f"/run/keepalived/{self.netns}/keepalived.pid"

    def send(self, signum: int) -> None:
        """``signum`` to keepalived's whole process group."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Stop keepalived (``signum``, then SIGKILL after ``timeout``) and close its log."""
        try:
            self.send(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send(signal.SIGKILL)
                self.proc.wait(10)
            # the children may outlive a parent killed alone: the group goes in any case
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        finally:
            self._out.close()

    def text(self) -> str:
        """The log so far."""
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        """The log's last ``lines`` lines, for failure messages."""
        return "\n".join(self.text().splitlines()[-lines:])


class HaLab(Built):
    """The namespaces, bridge, addresses, servers and keepalived processes of the HA lab."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        tag = uuid.uuid4().hex[:6]
        self.ns = {role: f"ha-{tag}-{role}" for role in ROLES}
        self.created: list[str] = []
        self.servers: dict[str, NameServer] = {}
        self.keepalived: dict[str, Keepalived] = {}
        self.logs: list[Path] = []

    # ---- building ------------------------------------------------------------------------

    def build(self) -> None:
        """Namespaces, the bridge, addresses and ARP settings; every server started."""
        sw = self.ns["sw"]
        lines = []
        for ns in self.ns.values():
            lines.append(f"netns add {ns}")
            self.created.append(ns)
        for role in ROLES[1:]:
            lines.append(
                f"link add p-{role} netns {sw} type veth peer name eth0 netns {self.ns[role]}"
            )
        ip_batch(lines)
        ip_batch(
            [
                "link set lo up",
                "link add br0 type bridge forward_delay 0 stp_state 0",
                *(f"link set p-{role} master br0" for role in ROLES[1:]),
                *(f"link set p-{role} up" for role in ROLES[1:]),
                "link set br0 up",
            ],
            sw,
        )
        addresses = {**{n: a for n, (a, _) in DIRECTORS.items()}, "cli": CLIENT, **SERVERS}
        prefix = SUBNET.rpartition("/")[2]
        for role, address in addresses.items():
            vip = [f"addr add {VIP}/32 dev lo"] if role in SERVERS else []
            ip_batch(
                [
                    "link set lo up",
                    *vip,
                    "link set eth0 up",
                    f"addr add {address}/{prefix} dev eth0",
                ],
                self.ns[role],
            )
        for name in SERVERS:
            # Direct routing: the servers hold the VIP but leave ARP for it to the director.
            sysctls(
                self.ns[name],
                {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2},
            )
        for name in SERVERS:
            self.start_server(name)

    # ---- servers -------------------------------------------------------------------------

    def start_server(self, name: str) -> None:
        """Start server ``name`` (it answers its name on every port of e2e_lab.TCP_PORTS)."""
        assert name not in self.servers, f"{name} runs already"
        server = NameServer()
        try:
            server.listen(self.ns[name], name)
        except BaseException:
            server.close()
            raise
        server.start()
        self.servers[name] = server

    def stop_server(self, name: str) -> None:
        """Stop server ``name``: its listening sockets close (connections are refused)."""
        self.servers.pop(name).close()

    # ---- keepalived ----------------------------------------------------------------------

    def start_keepalived(self, director: str, conf: Path) -> Keepalived:
        """Start keepalived for ``director`` reading ``conf``; its log is kept for messages."""
        assert director not in self.keepalived, f"keepalived of {director} runs already"
        log = self.workdir / f"keepalived-{director}.log"
        if log not in self.logs:
            self.logs.append(log)
        with open(log, "a") as f:
            f.write(f"---- lab: keepalived of {director} started ----\n")
        ka = Keepalived(self.ns[director], conf, log)
        self.keepalived[director] = ka
        return ka

    def kill_keepalived(self, director: str, signum: int = signal.SIGKILL) -> None:
        """Stop ``director``'s keepalived with ``signum`` (SIGKILL: nothing cleaned up)."""
        self.keepalived.pop(director).stop(signum)

    def logs_text(self) -> str:
        """The tail of every keepalived log, for failure messages."""
        parts = []
        for log in self.logs:
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            parts.append(f"== {log.name} ==\n" + "\n".join(lines[-30:]))
        return "\n".join(parts)

    # ---- probing -------------------------------------------------------------------------

    def proc_net(self, director: str, name: str) -> str:
        """``/proc/net/NAME`` as seen inside ``director``'s namespace."""

        def read() -> str:
            with open(f"/proc/thread-self/net/{name}") as f:
                return f.read()

        return in_netns(self.ns[director], read)

    def ipvs_table(self, director: str) -> dict[int, set[str]]:
        """fwmark -> real server addresses, live in ``director``'s IPVS."""
        return parse_proc_ip_vs(self.proc_net(director, "ip_vs"))

    def client_ports(self, director: str) -> set[int]:
        """The client's source ports of the connections ``director``'s IPVS holds (its
        ``/proc/net/ip_vs_conn``, read at once; the stats counters lag by seconds)."""
        client = f"{int(ipaddress.ip_address(CLIENT)):08X}"
        ports = set()
        for line in self.proc_net(director, "ip_vs_conn").splitlines()[1:]:
            words = line.split()
            if len(words) > 2 and words[0] == "TCP" and words[1].upper() == client:
                ports.add(int(words[2], 16))
        return ports

    def ipvsadm(self, director: str, *args: str) -> str:
        """``ipvsadm ARGS`` in ``director``'s namespace."""
        return sh("ipvsadm", *args, netns=self.ns[director])

    def ask(self, port: int, timeout: float = 3) -> tuple[str, int]:
        """One HTTP request from the client to VIP:port: the answering server (or
        ``ERR ...``) and the client's source port (0 if none was bound)."""

        def work() -> tuple[str, int]:
            sport = 0
            try:
                with socket.create_connection((VIP, port), timeout=timeout) as s:
                    sport = s.getsockname()[1]
                    s.sendall(b"GET / HTTP/1.0\r\nHost: lvsfw\r\n\r\n")
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
            except OSError as exc:
                return f"ERR {type(exc).__name__}: {exc}", sport
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.0 200"):
                return f"ERR bad answer {data[:60]!r}", sport
            return body.decode().strip(), sport

        return in_netns(self.ns["cli"], work)

    def request(self, port: int, timeout: float = 3) -> str:
        """:meth:`ask`'s answer only."""
        return self.ask(port, timeout)[0]

    def requests(self, *ports: int) -> list[str]:
        """:meth:`request` to each of ``ports`` in turn."""
        return [self.request(port) for port in ports]

    def holds_vip(self, director: str) -> bool:
        """Whether ``director``'s eth0 has the VIP now."""
        out = sh(IP, "-4", "-o", "addr", "show", "dev", "eth0", netns=self.ns[director])
        return f" {VIP}/" in out

    # ---- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every keepalived and server, delete every namespace and keepalived pid dir."""
        for director in list(self.keepalived):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.kill_keepalived(director, signal.SIGTERM)
        for name in list(self.servers):
            self.stop_server(name)
        for ns in self.created:
            shutil.rmtree(f"/run/keepalived/{ns}", ignore_errors=True)
        self.delete_created()
