"""A throwaway LVS lab for end-to-end tests inside the VM: client -> director -> two real servers.

Four network namespaces, all deleted by :meth:`Lab.close`::

    cli (10.77.0.2, fd77::2) --veth-- dir (10.77.0.1, fd77::1) --veth-- rs1 (10.77.1.2, fd77:1::2)
                                      |  VIPs on lo              --veth-- rs2 (10.77.2.2, fd77:2::2)

The director forwards (IPv4 and IPv6); the real servers' default routes point at it (what NAT,
``masq``, needs). Each real server answers with its own name: a minimal HTTP/1.0 response on
every TCP port of :data:`TCP_PORTS` and a datagram on every UDP port of :data:`UDP_PORTS`,
dual-stack.

Speed matters under TCG, where each ``ip netns exec`` costs about a second and each Python
start several: the lab's own plumbing enters namespaces from a short-lived thread (``setns``
affects only the calling thread; sockets keep the namespace they were created in, and a child
forked from that thread starts in it), the servers are sockets created in the real servers'
namespaces and served by threads of the test process, and the client's connections are
sockets created in the client namespace. The packets still cross the veths, the director's
netfilter and IPVS like any others.

lvsfw itself is driven only through its API (see :class:`Deploy`): this module writes no mark
rule and no lvsfw IPVS service by hand.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import selectors
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Optional, Self, TypeVar

from lvsfw import registry
from lvsfw.backends.base import PacketFilter
from lvsfw.backends.ipvs import Ipvs
from lvsfw.model import Bundle
from lvsfw.rules import Specification, normalize, specify

T = TypeVar("T")

TCP_PORTS = (80, 443, 21, 10005)
UDP_PORTS = (53,)
IP = shutil.which("ip") or "/usr/sbin/ip"
CLONE_NEWNET = 0x40000000

CLIENT4, CLIENT6 = "10.77.0.2", "fd77::2"
DIRECTOR4, DIRECTOR6 = "10.77.0.1", "fd77::1"
#: VIPs on the director's lo, one per kind of bundle so that bundles can coexist.
VIPS = {
    "web": "10.77.100.10",  # HTTP + HTTPS (and FTP) with persistence, NAT
    "rr": "10.77.100.11",  # HTTP + HTTPS without persistence (the control), NAT
    "dual": "10.77.100.12",  # the IPv4 half of a dual-stack bundle
    "dr": "10.77.100.20",  # direct routing: also on the real servers' lo
    "edit": "10.77.100.30",  # the edit test's own bundle
}
VIP6 = "fd77:100::10"
#: Real server name -> (IPv4, IPv6, director-side IPv4, director-side IPv6).
SERVERS = {
    "rs1": ("10.77.1.2", "fd77:1::2", "10.77.1.1", "fd77:1::1"),
    "rs2": ("10.77.2.2", "fd77:2::2", "10.77.2.1", "fd77:2::1"),
}
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(netns: Optional[str], fn: Callable[[], T]) -> T:
    """``fn()`` run by a thread that joined network namespace ``netns`` (None: here)."""
    if netns is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def worker() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def sh(
    *argv: str, netns: Optional[str] = None, stdin: Optional[str] = None, timeout: float = 60
) -> str:
    """Run ``argv`` (in ``netns``) and return stdout; raise with stderr on failure."""

    def work() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=timeout
        )

    done = in_netns(netns, work)
    if done.returncode != 0:
        where = f" in {netns}" if netns else ""
        raise AssertionError(f"{list(argv)}{where} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def ip_batch(lines: Iterable[str], netns: Optional[str] = None) -> None:
    """Run ``ip`` commands in one process (``ip -batch``), in ``netns`` if given."""
    sh(IP, "-batch", "-", netns=netns, stdin="".join(line + "\n" for line in lines))


def sysctls(netns: Optional[str], settings: Mapping[str, object]) -> None:
    """Write ``net.*`` keys of ``netns`` (from a thread inside it: /proc/sys/net is per netns)."""

    def work() -> None:
        for key, value in settings.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(f"{value}\n")

    in_netns(netns, work)


def template_lines(ipvsadm_lnc: str, mark: int) -> list[str]:
    """The persistence templates of fwmark ``mark`` in ``ipvsadm -Lnc`` output.

    A fwmark template has protocol ``IP``, port 0 and the mark as virtual "address"
    (``0.0.0.80:0`` for mark 80 in IPv4); its state is ``ASSURED`` once used, else ``NONE``.
    """
    found = []
    for line in ipvsadm_lnc.splitlines():
        words = line.split()
        if len(words) < 6 or words[0] != "IP":
            continue
        vaddr = words[4].rpartition(":")[0].strip("[]")
        try:
            if int(ipaddress.ip_address(vaddr)) == mark:
                found.append(line)
        except ValueError:
            continue
    return found


def real_server_of_template(line: str) -> str:
    """The real server address of an ``ipvsadm -Lnc`` template line."""
    return line.split()[5].rpartition(":")[0].strip("[]")


class NameServer:
    """Sockets in the real servers' namespaces answering with the server's name.

    TCP: reads the request and answers ``HTTP/1.0 200`` with the name as body, then closes.
    UDP: answers each datagram with the name. One daemon thread accepts on every socket and
    hands each TCP connection to a thread of its own.
    """

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        self.errors: list[str] = []
        #: (server name, local address) of every TCP connection accepted, in order: the local
        #: address tells NAT (the server's own) from direct routing (the VIP).
        self.seen: list[tuple[str, str]] = []
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def listen(self, netns: str, name: str) -> None:
        def make() -> list[socket.socket]:
            made = []
            for kind, ports in ((socket.SOCK_STREAM, TCP_PORTS), (socket.SOCK_DGRAM, UDP_PORTS)):
                for port in ports:
                    s = socket.socket(socket.AF_INET6, kind)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    s.bind(("::", port))
                    if kind == socket.SOCK_STREAM:
                        s.listen(64)
                    made.append(s)
            return made

        for s in in_netns(netns, make):
            self.sockets.append(s)
            self.selector.register(s, selectors.EVENT_READ, name.encode() + b"\n")

    def start(self) -> None:
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            for key, _ in self.selector.select():
                body = key.data
                if body is None:
                    return
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    if sock.type == socket.SOCK_DGRAM:
                        _, peer = sock.recvfrom(2048)
                        sock.sendto(body, peer)
                        continue
                    conn, _ = sock.accept()
                    local = conn.getsockname()[0].removeprefix("::ffff:")
                    self.seen.append((body.decode().strip(), local))
                    # each connection on its own thread, as a real server: one whose request
                    # never comes (its SYN crossed one director, the rest another during a
                    # failover) must not stall the health checks of every other connection
                    threading.Thread(target=self._answer, args=(conn, body), daemon=True).start()
                except OSError as exc:
                    self.errors.append(f"{body!r}: {exc}")

    def _answer(self, conn: socket.socket, body: bytes) -> None:
        """Read one request on ``conn`` (5 s at most), answer ``body``, close."""
        try:
            with conn:
                conn.settimeout(5)
                conn.recv(4096)
                head = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                conn.sendall(head + body)
        except OSError as exc:
            self.errors.append(f"{body!r}: {exc}")

    def close(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        for s in [*self.sockets, self._wake_r, self._wake_w]:
            s.close()


def _ask(proto: str, address: str, port: int) -> str:
    """One request from the current namespace: the answering server's name, or ``ERR ...``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        if proto == "udp":
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(b"who", (address, port))
                return s.recv(2048).decode().strip()
        # generous: under software emulation on a busy host a server thread can stall seconds
        with socket.create_connection((address, port), timeout=15) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: lvsfw\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.0 200"):
            return f"ERR bad answer {data[:60]!r}"
        return body.decode().strip()
    except OSError as exc:
        return f"ERR {type(exc).__name__}: {exc}"


class Built:
    """A lab used as a context manager: built on entry (closed again when building fails,
    so nothing half-built is left) and closed on exit."""

    def build(self) -> None:
        """Create everything."""
        raise NotImplementedError

    def close(self) -> None:
        """Remove everything (idempotent)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    #: The namespaces :meth:`build` created, in order (each lab's ``__init__`` sets it).
    created: list[str]

    def delete_created(self) -> None:
        """Delete the namespaces :meth:`build` created, newest first, in one ``ip -force
        -batch`` (best effort: a close must get through a half-built lab)."""
        if self.created:
            lines = [f"netns del {ns}" for ns in reversed(self.created)]
            subprocess.run(
                [IP, "-force", "-batch", "-"],
                input="\n".join(lines) + "\n",
                text=True,
                capture_output=True,
                check=False,
            )
        self.created.clear()


class Lab(Built):
    """The four namespaces, links, addresses and name servers (see the module docstring)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.director = f"e2e-{tag}-dir"
        self.client = f"e2e-{tag}-cli"
        self.servers = {name: f"e2e-{tag}-{name}" for name in SERVERS}
        self.created: list[str] = []
        self.names: Optional[NameServer] = None

    @property
    def namespaces(self) -> list[str]:
        return [self.director, self.client, *self.servers.values()]

    def build(self) -> None:
        lines = []
        for ns in self.namespaces:
            lines.append(f"netns add {ns}")
            self.created.append(ns)
        d = self.director
        lines.append(f"link add d-cli netns {d} type veth peer name eth0 netns {self.client}")
        lines += [
            f"link add d-{name} netns {d} type veth peer name eth0 netns {ns}"
            for name, ns in self.servers.items()
        ]
        ip_batch(lines)
        director = [
            "link set lo up",
            "link set d-cli up",
            f"addr add {DIRECTOR4}/24 dev d-cli",
            f"addr add {DIRECTOR6}/64 dev d-cli nodad",
            *(f"addr add {vip}/32 dev lo" for vip in VIPS.values()),
            f"addr add {VIP6}/128 dev lo",
        ]
        for name, (_, _, d4, d6) in SERVERS.items():
            director += [
                f"link set d-{name} up",
                f"addr add {d4}/24 dev d-{name}",
                f"addr add {d6}/64 dev d-{name} nodad",
            ]
        ip_batch(director, d)
        hosts = {self.client: (CLIENT4, CLIENT6, DIRECTOR4, DIRECTOR6)}
        hosts.update({ns: SERVERS[name] for name, ns in self.servers.items()})
        for ns, (a4, a6, gw4, gw6) in hosts.items():
            # Direct routing: the real servers hold the DR VIP on lo and never answer ARP for it.
            dr = [f"addr add {VIPS['dr']}/32 dev lo"] if ns != self.client else []
            ip_batch(
                [
                    "link set lo up",
                    *dr,
                    "link set eth0 up",
                    f"addr add {a4}/24 dev eth0",
                    f"addr add {a6}/64 dev eth0 nodad",
                    f"route add default via {gw4}",
                    f"route add default via {gw6}",
                ],
                ns,
            )
            if dr:
                arp = {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2}
                sysctls(ns, arp)
        sysctls(
            d,
            {
                "net.ipv4.ip_forward": 1,
                "net.ipv6.conf.all.forwarding": 1,
                # Direct routing: real servers answer from the VIP through the director, which
                # holds the VIP as well; accept those packets instead of dropping them as martians.
                "net.ipv4.conf.all.accept_local": 1,
                "net.ipv4.conf.d-rs1.accept_local": 1,
                "net.ipv4.conf.d-rs2.accept_local": 1,
                "net.ipv4.conf.all.rp_filter": 0,
            },
        )
        self.names = NameServer()
        for name, ns in self.servers.items():
            self.names.listen(ns, name)
        self.names.start()

    def close(self) -> None:
        if self.names is not None:
            self.names.close()
            self.names = None
        self.delete_created()

    # ---- probing -------------------------------------------------------------------------

    def request(self, *targets: tuple[str, str, int]) -> list[str]:
        """From the client, one new connection/datagram per ``(proto, address, port)``;
        the answering servers' names in order ("ERR ..." for a failure)."""
        return in_netns(self.client, lambda: [_ask(*t) for t in targets])

    def ipvsadm(self, *args: str) -> str:
        """Run ``ipvsadm`` in the director (reading state, or foreign services)."""
        return sh("ipvsadm", *args, netns=self.director)

    def server_name(self, address: str) -> str:
        """The name of the real server with ``address``."""
        for name, addresses in SERVERS.items():
            if address in addresses[:2]:
                return name
        raise KeyError(address)


class Deploy:
    """lvsfw's two halves in the lab's director, driven only through lvsfw's API.

    Add: IPVS services first, then marks; remove: marks first, then IPVS services.
    ``ipvs_commands``: the ipvsadm argv lists the last ``apply(..., plan=True)`` planned and
    then ran (``apply`` re-reads the live table, so the plan is what it ran).
    """

    def __init__(self, lab: Lab, firewall: str, mark_base: int = 0) -> None:
        self.lab = lab
        self.mark_base = mark_base
        cls = registry.get(firewall)
        cls.available()
        fw = cls(netns=lab.director)
        assert isinstance(fw, PacketFilter)
        self.firewall: PacketFilter = fw
        self.ipvs = Ipvs(netns=lab.director)
        self.owned: set[int] = set()
        self.ipvs_commands: list[list[str]] = []

    def apply(self, bundles: Sequence[Bundle], plan: bool = False) -> Specification:
        spec = specify(bundles)
        owned = self.owned | {s.mark for s in spec.services}
        if plan:
            self.ipvs_commands = self.ipvs.plan(spec, owned)
        self.ipvs.apply(spec, owned)
        self.owned = owned
        self.firewall.apply(spec)
        assert normalize(self.firewall.read()) == normalize(spec.rules), (
            "the packet filter does not read back what was applied"
        )
        return spec

    def remove(self) -> None:
        self.firewall.remove()
        self.ipvs.remove(self.owned)
        self.owned = set()
