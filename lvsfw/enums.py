"""Enumerations of the model: address family, protocol, scheduler, forwarding method."""

from __future__ import annotations

import enum
import ipaddress
from typing import TypeVar, Union

from lvsfw.errors import ValidationError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_E = TypeVar("_E", bound="_Choice")


def address_key(address: IPAddress) -> tuple[int, int]:
    """A sort key ordering IPv4 before IPv6 addresses (they do not compare with each other)."""
    return (address.version, int(address))


class _Choice(str, enum.Enum):
    """A string enum whose ``parse`` raises :class:`ValidationError` naming the field."""

    @classmethod
    def parse(cls: type[_E], value: object, field: str) -> _E:
        """Return the member for ``value`` (a member or its name, any case)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        allowed = " | ".join(m.value for m in cls)
        raise ValidationError(field, value, f"one of {allowed}")

    def __str__(self) -> str:
        return str(self.value)


class Family(_Choice):
    """An address family; IPVS keys a fwmark service on (family, mark)."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"

    @classmethod
    def of(cls, address: IPAddress) -> Family:
        """The family of ``address``."""
        return cls.IPV4 if address.version == 4 else cls.IPV6


class Protocol(_Choice):
    """A transport protocol that can be bundled under a mark."""

    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"

    @property
    def number(self) -> int:
        """The IP protocol number."""
        return {"tcp": 6, "udp": 17, "sctp": 132}[self.value]


class Scheduler(_Choice):
    """An IPVS scheduler (``ipvsadm -s``)."""

    RR = "rr"
    WRR = "wrr"
    LC = "lc"
    WLC = "wlc"
    LBLC = "lblc"
    LBLCR = "lblcr"
    DH = "dh"
    SH = "sh"
    SED = "sed"
    NQ = "nq"
    MH = "mh"
    FO = "fo"
    OVF = "ovf"
    TWOS = "twos"  # ip_vs_twos: newer kernels only (not Debian 12's 6.1)


class Forwarding(_Choice):
    """How IPVS forwards to a real server: direct routing, NAT or IP-in-IP tunnel."""

    ROUTE = "route"
    MASQ = "masq"
    TUNNEL = "tunnel"

    @property
    def ipvsadm_flag(self) -> str:
        """The ``ipvsadm`` option selecting this method."""
        return {"route": "-g", "masq": "-m", "tunnel": "-i"}[self.value]
