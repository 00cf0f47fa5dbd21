"""The inert model: marks, real servers, virtual services and the bundles that tie them.

Nothing here performs I/O or knows about a backend. Every class is an attrs frozen class whose
converters accept plain values and whose validators raise :class:`lvsfw.errors.ValidationError`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any, Optional, Union

import attrs

from lvsfw.enums import Family, Forwarding, IPAddress, Scheduler, address_key
from lvsfw.errors import ValidationError
from lvsfw.health import HealthCheck, SorryServer, count, parse_health, parse_sorry, seconds
from lvsfw.ports import PortBundle, PortsLike

#: The largest mark, and the mask of all 32 mark bits (:data:`FULL_MASK`).
MAX_MARK = 2**32 - 1
#: The mask of a mark given without ``/mask``: every bit (the same number as MAX_MARK).
FULL_MASK = MAX_MARK
MAX_WEIGHT = 65535
MAX_PERSISTENCE = 31 * 24 * 3600  # ipvsadm's limit: 2678400 s
MAX_THRESHOLD = 2**31 - 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,28}")  # always used with fullmatch


def mark_text(mark: int, mask: int) -> str:
    """A mark as lvsfw writes it: ``"80"`` with the full mask, else ``"0x50/0xff"``."""
    return str(mark) if mask == FULL_MASK else f"{mark:#x}/{mask:#x}"


def _u32(field: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_MARK:
        raise ValidationError(field, value, f"an integer {low}..{MAX_MARK}")
    return value


def parse_address(field: str, value: object) -> IPAddress:
    """An IPv4 or IPv6 address from ``value``; :class:`ValidationError` names ``field``."""
    if isinstance(value, ipaddress.IPv4Address) or (
        isinstance(value, ipaddress.IPv6Address) and getattr(value, "scope_id", None) is None
    ):
        return value
    # No IPv6 zone ("fe80::1%eth0"): ipaddress takes any text after "%", and a VIP's text
    # reaches rule files; a zone also has no meaning for a VIP or a real server.
    if isinstance(value, str) and "%" not in value:
        try:
            return ipaddress.ip_address(value.strip())
        except ValueError:
            pass
    raise ValidationError(
        field, value, "an IPv4 or IPv6 address (no %zone) such as 192.0.2.10 or 2001:db8::10"
    )


@attrs.frozen(order=True)
class FirewallMark:
    """A netfilter mark: ``value`` 1..2**32-1, inside ``mask`` (default all 32 bits).

    With a narrower mask, lvsfw sets only the mask's bits; IPVS still matches the packet's
    whole mark, so other users of the remaining bits must leave them zero on balanced packets.
    """

    value: int = attrs.field()
    mask: int = attrs.field(default=FULL_MASK)

    @value.validator
    def _value(self, attribute: attrs.Attribute[int], value: int) -> None:
        _u32("mark", value, 1)

    @mask.validator
    def _mask(self, attribute: attrs.Attribute[int], mask: int) -> None:
        _u32("mark mask", mask, 1)
        if self.value & ~mask:
            raise ValidationError(
                "mark mask", hex(mask), f"a mask covering every bit of mark {hex(self.value)}"
            )

    @classmethod
    def parse(cls, value: object) -> FirewallMark:
        """From a FirewallMark, an int, or text ``"80"``, ``"0x50"``, ``"0x50/0xff"``."""
        if isinstance(value, FirewallMark):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
        if isinstance(value, str):
            text, _, mask = value.strip().partition("/")
            try:
                return cls(int(text, 0), int(mask, 0) if mask else FULL_MASK)
            except ValueError:
                pass
        raise ValidationError("mark", value, f"an integer 1..{MAX_MARK} or 'value/mask'")

    def __int__(self) -> int:
        return self.value

    def __str__(self) -> str:
        return mark_text(self.value, self.mask)


def _weight(instance: Any, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WEIGHT:
        raise ValidationError(attribute.name, value, f"an integer 0..{MAX_WEIGHT}")


def _threshold(instance: Any, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_THRESHOLD:
        raise ValidationError(attribute.name, value, f"an integer 0..{MAX_THRESHOLD} (0: none)")


def _server_address(value: object) -> IPAddress:
    return parse_address("real server address", value)


def _forwarding(value: object) -> Forwarding:
    return Forwarding.parse(value, "forwarding")


def _scheduler(value: object) -> Scheduler:
    return Scheduler.parse(value, "scheduler")


@attrs.frozen(order=True)
class RealServer:
    """A real server of a fwmark service; it carries no port (``ADDR:0``).

    ``weight`` 0..65535 (0 quiesces it), ``forwarding`` route (direct routing, the default),
    masq (NAT) or tunnel, ``upper_threshold``/``lower_threshold`` connection limits (0 = none),
    ``health`` its own keepalived check (None: the service's; not part of IPVS equality).
    """

    address: IPAddress = attrs.field(converter=_server_address, order=address_key)
    weight: int = attrs.field(default=1, validator=_weight)
    forwarding: Forwarding = attrs.field(default=Forwarding.ROUTE, converter=_forwarding)
    upper_threshold: int = attrs.field(default=0, validator=_threshold)
    lower_threshold: int = attrs.field(default=0, validator=_threshold)
    health: Optional[HealthCheck] = attrs.field(default=None, converter=parse_health, eq=False)

    @lower_threshold.validator
    def _lower(self, attribute: attrs.Attribute[int], value: int) -> None:
        # the kernel refuses l_threshold > u_threshold (ERANGE); 0 upper means "none"
        if value > self.upper_threshold:
            raise ValidationError(
                "lower_threshold",
                value,
                f"at most upper_threshold ({self.upper_threshold})"
                if self.upper_threshold
                else "0 (none) when there is no upper_threshold",
            )

    @property
    def family(self) -> Family:
        """The real server's address family."""
        return Family.of(self.address)

    @classmethod
    def parse(cls, value: object) -> RealServer:
        """From a RealServer, an address, or a mapping of RealServer's fields."""
        if isinstance(value, RealServer):
            return value
        if isinstance(value, dict):
            known = {a.name for a in attrs.fields(cls)}
            unknown = [k for k in value if not isinstance(k, str) or k not in known]
            if unknown:
                names = ", ".join(sorted(repr(k) for k in unknown))
                raise ValidationError(
                    "real server", value, f"only the keys {sorted(known)}; unknown: {names}"
                )
            if "address" not in value:
                raise ValidationError("real server", value, "an 'address' key")
            return cls(**value)
        return cls(value)


def _persistence(instance: Any, attribute: attrs.Attribute[int | None], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PERSISTENCE:
        raise ValidationError(
            "persistence", value, f"None or a timeout in seconds 1..{MAX_PERSISTENCE}"
        )


def _netmask(value: object) -> int:
    """A v4 persistence netmask as a prefix length, from 24, "24" or "255.255.255.0"."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 32:
        return value
    if isinstance(value, str):
        try:
            return ipaddress.IPv4Network(f"0.0.0.0/{value.strip()}").prefixlen
        except ValueError:
            pass
    raise ValidationError("persistence_netmask", value, "a prefix length 0..32 or a netmask")


def _prefix6(instance: Any, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 128:
        raise ValidationError("persistence_prefix", value, "a prefix length 1..128")


def _real_servers(value: object) -> tuple[RealServer, ...]:
    if isinstance(value, (str, RealServer, dict)) or not isinstance(value, Iterable):
        value = [value]
    servers = tuple(sorted(RealServer.parse(v) for v in value))
    seen: set[IPAddress] = set()
    for server in servers:
        if server.address in seen:
            raise ValidationError("real_servers", str(server.address), "each address once")
        seen.add(server.address)
    return servers


@attrs.frozen
class VirtualService:
    """The IPVS half of a bundle: a fwmark virtual service.

    ``scheduler`` (wlc by default), ``persistence`` timeout in seconds (None: no persistence),
    ``persistence_netmask`` (IPv4 prefix length for ``-M``, 32 by default),
    ``persistence_prefix`` (IPv6 prefix length, 128 by default), ``real_servers``.

    What keepalived is told besides (IPVS never sees it, so it is not part of a service's
    equality): ``health`` (:class:`lvsfw.health.HealthCheck` of every real server without its
    own), ``delay_loop`` (seconds between checks), ``sorry_server`` (where clients go when no
    real server is up), ``quorum``/``hysteresis`` (the weight sum below which the service is
    down), ``inhibit_on_failure`` (a failed server gets weight 0 instead of leaving IPVS),
    ``alpha`` (real servers start down until their first check passes), ``omega`` (the
    quorum is re-evaluated when the service is shut down too).
    """

    scheduler: Scheduler = attrs.field(default=Scheduler.WLC, converter=_scheduler)
    persistence: int | None = attrs.field(default=None, validator=_persistence)
    persistence_netmask: int = attrs.field(default=32, converter=_netmask)
    persistence_prefix: int = attrs.field(default=128, validator=_prefix6)
    real_servers: tuple[RealServer, ...] = attrs.field(default=(), converter=_real_servers)
    health: Optional[HealthCheck] = attrs.field(default=None, converter=parse_health, eq=False)
    delay_loop: Optional[int] = attrs.field(default=None, eq=False)
    sorry_server: Optional[SorryServer] = attrs.field(
        default=None, converter=parse_sorry, eq=False
    )
    quorum: Optional[int] = attrs.field(default=None, eq=False)
    hysteresis: Optional[int] = attrs.field(default=None, eq=False)
    inhibit_on_failure: bool = attrs.field(default=False, eq=False)
    alpha: bool = attrs.field(default=False, eq=False)
    omega: bool = attrs.field(default=False, eq=False)

    @delay_loop.validator
    @quorum.validator
    @hysteresis.validator
    def _counts(self, attribute: attrs.Attribute[Optional[int]], value: object) -> None:
        if attribute.name == "delay_loop":
            seconds("delay_loop", value)
        else:
            count(attribute.name, value)

    @inhibit_on_failure.validator
    @alpha.validator
    @omega.validator
    def _flag(self, attribute: attrs.Attribute[bool], value: object) -> None:
        if not isinstance(value, bool):
            raise ValidationError(attribute.name, value, "true or false")

    @property
    def keepalived_fields(self) -> tuple[object, ...]:
        """What keepalived is told that IPVS never sees (for conflict checks)."""
        servers = tuple((s.address, s.health) for s in self.real_servers)
        return (self.health, self.delay_loop, self.sorry_server, self.quorum, self.hysteresis,
                self.inhibit_on_failure, self.alpha, self.omega, servers)  # fmt: skip

    def for_family(self, family: Family) -> VirtualService:
        """This service as IPVS keeps it for ``family``.

        Only the real servers of ``family``, and only that family's persistence mask (the other
        one, and both when there is no persistence, at their defaults).
        """
        servers = tuple(s for s in self.real_servers if s.family == family)
        v4, persistent = family == Family.IPV4, self.persistence is not None
        return attrs.evolve(
            self,
            real_servers=servers,
            persistence_netmask=self.persistence_netmask if v4 and persistent else 32,
            persistence_prefix=self.persistence_prefix if not v4 and persistent else 128,
        )


def _name(value: object) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValidationError("name", value, "1..28 characters from [A-Za-z0-9_.-]")
    return value


def _vips(value: object) -> tuple[IPAddress, ...]:
    if isinstance(value, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        value = [value]
    if not isinstance(value, Iterable):
        raise ValidationError("vips", value, "one address or a list of addresses")
    vips = [parse_address("vips", v) for v in value]
    if not vips:
        raise ValidationError("vips", value, "at least one address")
    if len(set(vips)) != len(vips):
        raise ValidationError("vips", [str(v) for v in vips], "each address once")
    return tuple(sorted(vips, key=address_key))


def _ports(value: object) -> PortBundle:
    return value if isinstance(value, PortBundle) else PortBundle(value)


def _mark(value: object) -> FirewallMark:
    return FirewallMark.parse(value)


MarkLike = Union[FirewallMark, int, str]


def _check_port(check: HealthCheck, ports: object, bundle: object) -> HealthCheck:
    """``check`` with its ``port`` filled in: the bundle's first TCP port by default."""
    if not check.connects or check.port is not None:
        return check
    tcp = [r.first_port for r in _ports(ports).ranges if r.protocol.value == "tcp"]
    if not tcp:
        raise ValidationError(
            "health.port", None, f"a port: bundle {bundle!r} has no TCP port to check by default"
        )
    return attrs.evolve(check, port=min(tcp))


def _with_ports(service: VirtualService, ports: object, name: object) -> VirtualService:
    """``service`` with every connecting health check given a port (fwmark real servers
    carry none, so keepalived must be told ``connect_port``)."""
    if service.health is None and all(s.health is None for s in service.real_servers):
        return service
    health = service.health and _check_port(service.health, ports, name)
    servers = tuple(
        attrs.evolve(s, health=_check_port(s.health, ports, name)) if s.health else s
        for s in service.real_servers
    )
    return attrs.evolve(service, health=health, real_servers=servers)
_NO_SERVICE_KWARGS = object()


@attrs.frozen(init=False, unsafe_hash=False)
class Bundle:
    """One multi-port LVS service: VIPs and ports that share ``mark``, plus its IPVS service.

    ``name`` 1..28 characters of ``[A-Za-z0-9_.-]`` (it reaches rule comments), ``vips`` one or
    more IPv4/IPv6 addresses (both families: a dual-stack bundle, two IPVS services on one mark),
    ``ports`` a :class:`PortBundle` or its text, ``mark`` a :class:`FirewallMark` or an int.
    The IPVS half is ``service`` or, for convenience, the keywords of :class:`VirtualService`.
    """

    name: str = attrs.field(converter=_name)
    vips: tuple[IPAddress, ...] = attrs.field(converter=_vips)
    ports: PortBundle = attrs.field(converter=_ports)
    mark: FirewallMark = attrs.field(converter=_mark)
    service: VirtualService = attrs.field()

    def __init__(
        self,
        name: str,
        vips: str | IPAddress | Iterable[str | IPAddress],
        ports: PortsLike,
        mark: MarkLike,
        service: VirtualService | None = None,
        **service_fields: Any,
    ) -> None:
        if service is None:
            known = {a.name for a in attrs.fields(VirtualService)}
            unknown = sorted(set(service_fields) - known)
            if unknown:
                raise ValidationError("Bundle keyword", unknown[0], f"one of {sorted(known)}")
            service = VirtualService(**service_fields)
        elif service_fields:
            raise ValidationError(
                "Bundle keyword",
                sorted(service_fields)[0],
                "either service= or its fields, not both",
            )
        if not isinstance(service, VirtualService):
            raise ValidationError("service", service, "a VirtualService")
        self.__attrs_init__(name, vips, ports, mark, _with_ports(service, ports, name))
        self._check_families()
        self._check_quorum()

    def __hash__(self) -> int:
        # name and mark only: equal bundles still hash equal, and hashing every field (VIPs,
        # ports, real servers: ipaddress' and enums' hashes are Python code) cost 10 us a
        # bundle; a config's names are unique, so its bundles never share a hash
        return hash((self.name, self.mark.value, self.mark.mask))

    def _check_quorum(self) -> None:
        """keepalived lowers a quorum above the weight of a family's real servers, and a
        hysteresis at or above the quorum, with a warning: refuse both here instead."""
        vs = self.service
        quorum = 1 if vs.quorum is None else vs.quorum
        if vs.hysteresis is not None and vs.hysteresis >= quorum:
            raise ValidationError("hysteresis", vs.hysteresis, f"below the quorum ({quorum})")
        for family in self.families if vs.quorum is not None else ():
            total = sum(s.weight for s in vs.real_servers if s.family == family)
            if quorum > total:
                raise ValidationError(
                    "quorum", vs.quorum,
                    f"at most the {family} real servers' total weight ({total}) in bundle"
                    f" {self.name!r}",
                )  # fmt: skip

    def _check_families(self) -> None:
        families = self.families
        for server in self.service.real_servers:
            if server.family not in families:
                raise ValidationError(
                    "real_servers",
                    str(server.address),
                    f"an address of the bundle's VIP families ({', '.join(map(str, families))})"
                    f" in bundle {self.name!r}",
                )

    @property
    def families(self) -> tuple[Family, ...]:
        """The address families of the VIPs, IPv4 first."""
        return tuple(sorted({Family.of(v) for v in self.vips}))

    @property
    def scheduler(self) -> Scheduler:
        """Shortcut for ``service.scheduler``."""
        return self.service.scheduler

    @property
    def persistence(self) -> int | None:
        """Shortcut for ``service.persistence``."""
        return self.service.persistence

    @property
    def real_servers(self) -> tuple[RealServer, ...]:
        """Shortcut for ``service.real_servers``."""
        return self.service.real_servers
