"""Reading ``ipvsadm -S -n`` and ``ipvsadm -L -n --thresholds`` text into the model.

Only fwmark services lvsfw can model become :class:`lvsfw.rules.FwmarkService`; address:port
services are kept as foreign lines, and fwmark services with options lvsfw does not model
are named with the reason (lvsfw never changes them).
"""

from __future__ import annotations

import ipaddress
from typing import NoReturn

import attrs

from lvsfw.enums import Family, Forwarding, IPAddress, Scheduler
from lvsfw.errors import ParseError, ValidationError
from lvsfw.model import FULL_MASK, MAX_MARK, RealServer, VirtualService
from lvsfw.rules import FwmarkService

_FLAGS = {"-g": Forwarding.ROUTE, "-m": Forwarding.MASQ, "-i": Forwarding.TUNNEL}
_FOREIGN = {"-t", "-u", "--sctp-service", "-q", "--tcp-service", "--udp-service"}
_UNMODELLED = {"--pe", "-b", "-o", "ops", "--ops", "--tun-port", "--tun-nocsum", "--tun-csum"}
Key = tuple[Family, int]


@attrs.frozen
class Dump:
    """What a ``ipvsadm -S`` text holds: the fwmark ``services`` lvsfw can model; the
    ``foreign`` ``-A`` lines of address:port services (never touched); the ``unmodelled``
    fwmark services (``--pe``, ``-b``, GUE tunnels, ...) by (family, mark), with the reason."""

    services: frozenset[FwmarkService]
    foreign: tuple[str, ...] = ()
    unmodelled: dict[Key, str] = attrs.field(factory=dict)


class _Line:
    """The options of one ``-A``/``-a`` line, consumed as they are interpreted."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.command, *tokens = text.split()
        self.options: dict[str, str] = {}
        self.switches: set[str] = set()
        rest = iter(tokens)
        for token in rest:
            if token in {"-6", "-g", "-m", "-i", "-o", "ops", "--ops", "--tun-nocsum"}:
                self.switches.add(token)
            elif token.startswith("-") and token not in self.options:
                self.options[token] = next(rest, "")
            else:
                self.fail(f"unexpected {token!r}")

    def fail(self, reason: str) -> NoReturn:
        raise ParseError("ipvsadm", self.text, reason)

    def number(self, option: str, default: int, low: int = 0, high: int = MAX_MARK) -> int:
        """The integer value of ``option`` (``default`` when absent)."""
        if option not in self.options:
            return default
        text = self.options.pop(option)
        try:
            value = int(text, 10)
        except ValueError:
            self.fail(f"{option} {text!r} is not an integer")
        if not low <= value <= high:
            self.fail(f"{option} {value} is not in {low}..{high}")
        return value

    def unmodelled(self, switches: set[str]) -> str | None:
        """Why lvsfw cannot model this line's remaining options (None: it can); ``switches``
        are the option-less flags valid on this line besides the unmodelled ones."""
        stray = sorted(self.switches - switches - _UNMODELLED)
        if stray:
            self.fail(f"unexpected {stray[0]!r}")
        odd = sorted((set(self.options) | self.switches) & _UNMODELLED)
        tun = self.options.pop("--tun-type", "ipip")
        if tun != "ipip":
            odd.append(f"--tun-type {tun}")
        rest = sorted(set(self.options) - _UNMODELLED)
        if rest:
            self.fail(f"unknown option {rest[0]!r}")
        return f"uses {', '.join(odd)}" if odd else None


def _parse_service(line: _Line) -> tuple[Key, VirtualService | None, str | None]:
    family, mark = _parse_key(line)
    scheduler = Scheduler.parse(line.options.pop("-s", "wlc"), "scheduler")
    persistence = line.number("-p", 0, 1) or None
    netmask, prefix = 32, 128
    if "-M" in line.options:
        if persistence is None:
            line.fail("-M without -p")
        if family == Family.IPV6:
            prefix = line.number("-M", 128, 1, 128)
        else:
            try:
                netmask = ipaddress.IPv4Network(f"0.0.0.0/{line.options.pop('-M')}").prefixlen
            except ValueError:
                return (family, mark), None, "uses a non-contiguous -M netmask"
    reason = line.unmodelled({"-6"})
    return (family, mark), VirtualService(scheduler, persistence, netmask, prefix), reason


def _parse_server(line: _Line, family: Family) -> tuple[RealServer, str | None]:
    text = line.options.pop("-r", "")
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        line.fail(f"-r {text!r} is not ADDRESS:PORT")
    try:
        address = ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        line.fail(f"-r {text!r} has no valid address")
    methods = [_FLAGS[s] for s in ("-g", "-m", "-i") if s in line.switches]
    if len(methods) > 1:
        line.fail("more than one forwarding method")
    server = RealServer(
        address,
        weight=line.number("-w", 1, 0, 65535),
        forwarding=methods[0] if methods else Forwarding.ROUTE,
        upper_threshold=line.number("-x", 0),
        lower_threshold=line.number("-y", 0),
    )
    reason = line.unmodelled({"-6", "-g", "-m", "-i"})
    if int(port) != 0:
        reason = f"has real server {text} with a port"
    elif Family.of(address) != family:
        reason = f"has a real server {text} of another family"
    return server, reason


class _Dumper:
    """Collects the services of a ``ipvsadm -S`` text line by line."""

    def __init__(self) -> None:
        self.services: dict[Key, VirtualService] = {}
        self.servers: dict[Key, dict[IPAddress, RealServer]] = {}
        self.foreign: list[str] = []
        self.unmodelled: dict[Key, str] = {}

    def service(self, line: _Line) -> None:
        key, vs, reason = _parse_service(line)
        if key in self.services or key in self.unmodelled:
            line.fail("service defined twice")
        if vs is None or reason:
            self.unmodelled[key] = reason or "unmodelled"
        else:
            self.services[key], self.servers[key] = vs, {}

    def server(self, line: _Line) -> None:
        key = _parse_key(line)
        if key in self.unmodelled:
            return
        if key not in self.services:
            line.fail("real server of an undefined service")
        server, reason = _parse_server(line, key[0])
        if server.address in self.servers[key]:
            line.fail("real server defined twice")
        self.servers[key][server.address] = server
        if reason:
            self.unmodelled[key] = reason
            del self.services[key], self.servers[key]

    def dump(self) -> Dump:
        found = frozenset(
            FwmarkService(f, m, attrs.evolve(vs, real_servers=tuple(self.servers[(f, m)].values())))
            for (f, m), vs in self.services.items()
        )
        return Dump(found, tuple(self.foreign), self.unmodelled)


def parse_dump(text: str) -> Dump:
    """Parse ``ipvsadm -S`` output (or :func:`render_services` text); junk is a ParseError."""
    dumper = _Dumper()
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        line = _Line(stripped)
        if line.command not in {"-A", "-a"}:
            line.fail("expected -A or -a")
        if set(line.options) & _FOREIGN:
            if line.command == "-A":
                dumper.foreign.append(stripped)
            continue
        try:
            (dumper.service if line.command == "-A" else dumper.server)(line)
        except ValidationError as exc:
            raise ParseError("ipvsadm", stripped, str(exc)) from None
    return dumper.dump()


def _parse_key(line: _Line) -> Key:
    mark = line.number("-f", 0, -(2**31), MAX_MARK) & FULL_MASK  # ipvsadm prints %d
    if mark == 0:
        line.fail("a fwmark service needs -f 1..4294967295")
    return (Family.IPV6 if "-6" in line.switches else Family.IPV4, mark)


def parse_thresholds(text: str) -> dict[Key, dict[IPAddress, tuple[int, int]]]:
    """(upper, lower) threshold per real server of each fwmark service, from the output of
    ``ipvsadm -L -n --thresholds`` (``FWM  80 [IPv6] ...`` then ``  -> ADDR:0 U L A I``)."""
    found: dict[Key, dict[IPAddress, tuple[int, int]]] = {}
    current: dict[IPAddress, tuple[int, int]] | None = None
    for raw in text.splitlines():
        tokens = raw.split()
        try:
            if tokens[:1] == ["FWM"]:
                family = Family.IPV6 if tokens[2:3] == ["IPv6"] else Family.IPV4
                current = found.setdefault((family, int(tokens[1]) & FULL_MASK), {})
            elif tokens[:1] == ["->"] and tokens[1] != "RemoteAddress:Port" and current is not None:
                host = tokens[1].rpartition(":")[0].strip("[]")
                current[ipaddress.ip_address(host)] = (int(tokens[2]), int(tokens[3]))
            elif tokens and tokens[0] in {"TCP", "UDP", "SCTP"}:
                current = None
        except (IndexError, ValueError):
            raise ParseError("ipvsadm --thresholds", raw, "unexpected line") from None
    return found
