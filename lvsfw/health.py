"""What keepalived exists for: health checks of real servers and what to do when they fail.

Plain data, like the rest of the model (:mod:`lvsfw.model`): attrs frozen classes whose
converters normalise and whose validators raise :class:`ValidationError` naming the field.
They are fields of the IPVS half (:class:`lvsfw.model.VirtualService`, and a real server's
own override) but not of the IPVS *table*: IPVS never sees them, so they take no part in the
equality of a service (what ``ipvsadm`` compares), only in what keepalived is told.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Optional

import attrs

from lvsfw.enums import IPAddress
from lvsfw.errors import ValidationError

#: The checkers lvsfw renders, by their keepalived block name.
CHECKERS = {"tcp": "TCP_CHECK", "http": "HTTP_GET", "https": "SSL_GET", "misc": "MISC_CHECK"}
#: The checkers that connect to a port (``connect_port``; fwmark real servers have none).
CONNECTING = frozenset({"tcp", "http", "https"})
MAX_SECONDS = 86400
#: keepalived.conf has no quoting for it: no blank, brace, quote, comment or escape character.
_PATH = re.compile(r"/(?:(?![{}\"#!\\])[\x21-\x7e])*")
_DIGEST = re.compile(r"[0-9a-f]{32}")
_SCRIPT = re.compile(r"/[A-Za-z0-9_./+-]*( [A-Za-z0-9_./:=,+-]+)*")


def seconds(field: str, value: object, low: int = 1) -> Optional[int]:
    """``value`` if it is None or an integer ``low``..:data:`MAX_SECONDS`, else a
    :class:`ValidationError` naming ``field``."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_SECONDS:
        raise ValidationError(field, value, f"an integer {low}..{MAX_SECONDS}")
    return value


def _port(value: object) -> Optional[int]:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValidationError("health.port", value, "a port 1..65535")
    return value


def _status(value: object) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValidationError("health.status", value, "a list of HTTP status codes")
    for code in value:
        if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 599:
            raise ValidationError("health.status", code, "HTTP status codes 100..599")
    return tuple(sorted(set(value)))


@attrs.frozen
class HealthCheck:
    """One keepalived checker of a real server.

    ``check``: ``tcp`` (TCP_CHECK), ``http``/``https`` (HTTP_GET/SSL_GET of ``path``, healthy
    on a ``status`` code and, if given, an MD5 ``digest`` of the body) or ``misc``
    (MISC_CHECK: ``script``, a path and arguments, healthy on exit 0; ``dynamic``: its exit
    status - 2 sets the weight). ``port``: where to connect (fwmark real servers carry no port;
    default: the bundle's first TCP port). ``timeout`` (connect or script timeout), ``retry``,
    ``delay_before_retry``: seconds and counts as keepalived.conf(5) has them (None: its
    default).
    """

    check: str = attrs.field()
    port: Optional[int] = attrs.field(default=None, converter=_port)
    path: str = attrs.field(default="/")
    status: tuple[int, ...] = attrs.field(default=(200,), converter=_status)
    digest: Optional[str] = attrs.field(default=None)
    script: Optional[str] = attrs.field(default=None)
    dynamic: bool = attrs.field(default=False)
    timeout: Optional[int] = attrs.field(default=None)
    retry: Optional[int] = attrs.field(default=None)
    delay_before_retry: Optional[int] = attrs.field(default=None)

    @check.validator
    def _check(self, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in CHECKERS:
            raise ValidationError("health.check", value, f"one of {', '.join(CHECKERS)}")

    @path.validator
    def _path(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not _PATH.fullmatch(value) or '"' in value:
            raise ValidationError(
                "health.path", value, "a URL path such as /healthz, none of { } \" # ! \\"
            )

    @digest.validator
    def _digest(self, attribute: attrs.Attribute[Optional[str]], value: Optional[str]) -> None:
        if value is not None and not (isinstance(value, str) and _DIGEST.fullmatch(value)):
            raise ValidationError("health.digest", value, "an MD5 digest (32 hex digits)")

    @script.validator
    def _script(self, attribute: attrs.Attribute[Optional[str]], value: Optional[str]) -> None:
        if self.check == "misc" and value is None:
            raise ValidationError("health.script", value, "a script path (check = misc)")
        if value is not None and not (isinstance(value, str) and _SCRIPT.fullmatch(value)):
            raise ValidationError(
                "health.script", value, "an absolute path and plain arguments, no quotes"
            )
        if value is not None and self.check != "misc":
            raise ValidationError("health.script", value, "only with check = misc")

    @dynamic.validator
    def _dynamic(self, attribute: attrs.Attribute[bool], value: bool) -> None:
        if not isinstance(value, bool):
            raise ValidationError("health.dynamic", value, "true or false")

    @timeout.validator
    @retry.validator
    @delay_before_retry.validator
    def _numbers(self, attribute: attrs.Attribute[Optional[int]], value: object) -> None:
        seconds(f"health.{attribute.name}", value, 0 if attribute.name == "retry" else 1)

    def data(self) -> dict[str, object]:
        """The TOML ``health`` table of this check: ``check`` and every non-default field."""
        defaults = HealthCheck(self.check, script=self.script)
        found: dict[str, object] = {"check": self.check}
        for field in attrs.fields(HealthCheck)[1:]:
            value = getattr(self, field.name)
            if value != getattr(defaults, field.name) or (field.name == "script" and value):
                found[field.name] = list(value) if isinstance(value, tuple) else value
        return found

    @property
    def connects(self) -> bool:
        """Whether the checker connects to a port (and so needs ``port``)."""
        return self.check in CONNECTING

    @classmethod
    def parse(cls, value: object) -> HealthCheck:
        """From a HealthCheck or a mapping of its fields (a TOML ``health`` table)."""
        if isinstance(value, HealthCheck):
            return value
        if not isinstance(value, Mapping):
            raise ValidationError("health", value, 'a table such as { check = "tcp" }')
        known = {a.name for a in attrs.fields(cls)}
        unknown = [k for k in value if not isinstance(k, str) or k not in known]
        if unknown:
            names = ", ".join(sorted(repr(k) for k in unknown))
            raise ValidationError("health", dict(value), f"the keys {sorted(known)}; not {names}")
        if "check" not in value:
            raise ValidationError("health.check", None, f"one of {', '.join(CHECKERS)}")
        return cls(**value)


def parse_health(value: object) -> Optional[HealthCheck]:
    """A converter: None stays None, else :meth:`HealthCheck.parse`."""
    return None if value is None else HealthCheck.parse(value)


@attrs.frozen
class SorryServer:
    """Where keepalived sends clients when no real server is up (``sorry_server``); like
    every real server of a fwmark service it has no port (``port`` is 0)."""

    address: IPAddress = attrs.field()
    port: int = attrs.field(default=0)

    @classmethod
    def parse(cls, value: object) -> SorryServer:
        """From a SorryServer, an address string, or ``{ address, port }``."""
        if isinstance(value, SorryServer):
            return value
        fields: dict[str, Any] = dict(value) if isinstance(value, Mapping) else {"address": value}
        if set(fields) - {"address", "port"} or "address" not in fields:
            raise ValidationError("sorry_server", value, "an address or { address, port }")
        try:
            address = ipaddress.ip_address(fields["address"])
        except (TypeError, ValueError):
            raise ValidationError("sorry_server", fields["address"], "an IP address") from None
        port = fields.get("port", 0)
        if port != 0 or isinstance(port, bool):  # keepalived clears it, with a warning
            raise ValidationError(
                "sorry_server.port", port, "0 or none: a fwmark service's servers carry no port"
            )
        return cls(address, port)


def parse_sorry(value: object) -> Optional[SorryServer]:
    """A converter: None stays None, else :meth:`SorryServer.parse`."""
    return None if value is None else SorryServer.parse(value)


def count(field: str, value: object) -> Optional[int]:
    """A validator's body for ``quorum``/``hysteresis``: None or an integer >= 0 (quorum >= 1)."""
    low = 1 if field == "quorum" else 0
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 65535 * 256:
        raise ValidationError(field, value, f"an integer >= {low}")
    return value
