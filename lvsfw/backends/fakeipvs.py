"""The IPVS half of the in-memory kernel (:mod:`lvsfw.backends.fake`): :class:`FakeServices`.

The services live in the shared :class:`lvsfw.backends.fake.FakeKernel`, so a Director made of
a :class:`lvsfw.backends.fake.FakeFilter` and a :class:`FakeServices` on one kernel fails,
logs and rolls back like the real pair, in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import ClassVar, Optional

import attrs

from lvsfw.backends.base import Change, ServiceHalf, ServiceKey, ServiceLive
from lvsfw.backends.fake import SERVICES_NAME, FakeKernel, _fail
from lvsfw.enums import Family, Forwarding
from lvsfw.errors import ConflictError, LvsfwError, ParseError
from lvsfw.model import MAX_MARK, RealServer, VirtualService
from lvsfw.rules import FwmarkService, Specification


@attrs.frozen
class FakeServiceLive:
    """One read of a fake IPVS table: the fwmark ``services`` lvsfw can model (whoever owns
    them) and the keys of the ``foreign`` ones it cannot."""

    services: frozenset[FwmarkService] = frozenset()
    foreign: frozenset[ServiceKey] = frozenset()


def _service_text(fs: FwmarkService) -> str:
    s = fs.service
    servers = ",".join(
        f"{r.address}/{r.forwarding}/w{r.weight}/x{r.upper_threshold}/y{r.lower_threshold}"
        for r in s.real_servers
    )
    return (
        f"fwmark {fs.mark} {fs.family} {s.scheduler} p{s.persistence or 0}"
        f" M{s.persistence_netmask}/{s.persistence_prefix} [{servers}]"
    )


def _keyed(services: Iterable[FwmarkService]) -> dict[ServiceKey, FwmarkService]:
    return {(s.family, s.mark): s for s in services}


@attrs.frozen
class FakeServiceChange:
    """Replace the services of the keys of ``before`` and ``after``: each key holds its
    ``before`` service (or none) and ends with its ``after`` one (or none)."""

    before: frozenset[FwmarkService]
    after: frozenset[FwmarkService]

    @property
    def inverse(self) -> FakeServiceChange:
        """The change putting ``before`` back."""
        return FakeServiceChange(self.after, self.before)

    def __str__(self) -> str:
        was, now = _keyed(self.before), _keyed(self.after)
        lines = []
        for key in sorted(was.keys() | now.keys()):
            if key not in was:
                lines.append(f"{SERVICES_NAME}: add {_service_text(now[key])}")
            elif key not in now:
                lines.append(f"{SERVICES_NAME}: remove {_service_text(was[key])}")
            else:
                lines.append(f"{SERVICES_NAME}: change {_service_text(now[key])}")
        return "\n".join(lines)


class FakeServices(ServiceHalf):
    """The IPVS half in a :class:`FakeKernel`: each commit one write."""

    name: ClassVar[str] = SERVICES_NAME

    def __init__(self, kernel: Optional[FakeKernel] = None, netns: str | None = None) -> None:
        super().__init__(netns)
        self.kernel = kernel if kernel is not None else FakeKernel()

    def observe(self, keys: frozenset[ServiceKey]) -> FakeServiceLive:
        """The whole fake table (a read is free; ``keys`` is not needed to narrow it)."""
        return FakeServiceLive(
            frozenset(self.kernel.services.values()), frozenset(self.kernel.foreign)
        )

    def diff(
        self, spec: Specification, live: ServiceLive, owned: frozenset[ServiceKey]
    ) -> tuple[Optional[FakeServiceChange], Optional[FakeServiceChange]]:
        """(adds and changes, removals) for every owned or wanted key.

        Raises :class:`ConflictError`, with the message :mod:`lvsfw.backends.ipvs` gives,
        when a wanted key holds a service lvsfw does not own, or an owned or wanted key holds
        one it cannot model.
        """
        table = self.own(live, FakeServiceLive)
        want = _keyed(s.__class__(s.family, s.mark, s.service.for_family(s.family))
                      for s in spec.services)  # fmt: skip
        have = _keyed(table.services)
        for key in sorted(want.keys() | owned):
            if key in table.foreign:
                why = f"{self.kernel.foreign.get(key, 'unmodelled')}, which lvsfw does not model;"
                why += " change it by hand"
            elif key in want and key in have and key not in owned:
                why = (
                    "is not lvsfw's and lvsfw never changes foreign services (or pass it as owned)"
                )
            else:
                continue
            raise ConflictError(f"IPVS service fwmark {key[1]} ({key[0]}) {why}", str(key[1]))
        touched = [k for k, s in want.items() if have.get(k) != s]
        first = FakeServiceChange(
            frozenset(have[k] for k in touched if k in have), frozenset(want[k] for k in touched)
        )
        gone = [k for k in have if k in owned and k not in want]
        last = FakeServiceChange(frozenset(have[k] for k in gone), frozenset())
        return (first if touched else None, last if gone else None)

    def _applied(self, change: Change, argv: tuple[str, ...]) -> dict[ServiceKey, FwmarkService]:
        """The table once ``change`` is applied (the kernel's, unchanged); CommandFailed when
        a key does not hold the service ``change`` replaces."""
        own = self.own(change, FakeServiceChange)
        was, now = _keyed(own.before), _keyed(own.after)
        table = dict(self.kernel.services)
        for key in sorted(was.keys() | now.keys()):
            if key in self.kernel.foreign:
                _fail(argv, f"fwmark {key[1]} ({key[0]}): File exists (unmodelled service)")
            if table.get(key) != was.get(key):
                state = "Service not defined" if key not in table else "File exists"
                _fail(argv, f"fwmark {key[1]} ({key[0]}): {state}")
            if key in now:
                table[key] = now[key]
            else:
                del table[key]
        return table

    def check(self, change: Change) -> None:
        """Apply ``change`` to a copy and drop it (or fail as ``fail_on`` says)."""
        self.kernel.refuse(self.name, "check")
        self._applied(change, (self.name, "check"))

    def commit(self, change: Change) -> None:
        """One write: apply ``change`` to a copy, then swap the copy in."""
        own = self.own(change, FakeServiceChange)

        def swap() -> None:
            self.kernel.services = self._applied(own, (self.name, "commit"))

        self.kernel.write(self.name, str(own), swap)

    def remove(self, owned: frozenset[ServiceKey]) -> None:
        """Remove the live services of ``owned`` (one write; none when none is live)."""
        _, removals = self.diff(Specification(frozenset(), frozenset()), self.observe(owned), owned)
        if removals is not None:
            self.commit(removals)

    # -- text ------------------------------------------------------------------------------

    def render_spec(self, spec: Specification) -> str:
        """One JSON object per line and service, by (mark, family)."""
        lines = []
        for fs in sorted(spec.services, key=lambda s: (s.mark, s.family)):
            vs = fs.service
            servers = [
                {
                    "address": str(r.address),
                    "weight": r.weight,
                    "forwarding": str(r.forwarding),
                    "upper_threshold": r.upper_threshold,
                    "lower_threshold": r.lower_threshold,
                }
                for r in vs.real_servers
            ]
            item = {
                "family": str(fs.family),
                "mark": fs.mark,
                "scheduler": str(vs.scheduler),
                "persistence": vs.persistence,
                "netmask": vs.persistence_netmask,
                "prefix": vs.persistence_prefix,
                "servers": servers,
            }
            lines.append(json.dumps(item, sort_keys=True))
        return "".join(line + "\n" for line in lines)

    def parse(self, text: str) -> frozenset[FwmarkService]:
        """The services of :meth:`render_spec` text; anything else is a :class:`ParseError`."""
        found: dict[ServiceKey, FwmarkService] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            fs = _parse_service(line)
            if (fs.family, fs.mark) in found:
                raise ParseError("fake-ipvs", line, "service defined twice")
            found[(fs.family, fs.mark)] = fs
        return frozenset(found.values())


_SERVICE_KEYS = {"family", "mark", "scheduler", "persistence", "netmask", "prefix", "servers"}
_SERVER_KEYS = {"address", "weight", "forwarding", "upper_threshold", "lower_threshold"}


def _parse_service(line: str) -> FwmarkService:
    try:
        item = json.loads(line)
        if not isinstance(item, dict) or set(item) != _SERVICE_KEYS:
            raise ValueError(f"expected the keys {sorted(_SERVICE_KEYS)}")
        mark = item["mark"]
        if type(mark) is not int or not 0 < mark <= MAX_MARK:
            raise ValueError(f"mark {mark!r} is not 1..{MAX_MARK}")
        servers = item["servers"]
        if not isinstance(servers, list) or not all(
            isinstance(s, dict) and set(s) == _SERVER_KEYS for s in servers
        ):
            raise ValueError(f"servers: a list of objects with the keys {sorted(_SERVER_KEYS)}")
        for server in servers:
            for field in ("weight", "upper_threshold", "lower_threshold"):
                if type(server[field]) is not int:
                    raise ValueError(f"{field} {server[field]!r} is not an integer")
            Forwarding.parse(server["forwarding"], "forwarding")
        family = Family.parse(item["family"], "family")
        persistence = item["persistence"]
        if persistence is not None and type(persistence) is not int:
            raise ValueError(f"persistence {persistence!r} is not an integer")
        for field in ("netmask", "prefix"):
            if type(item[field]) is not int:
                raise ValueError(f"{field} {item[field]!r} is not an integer")
        service = VirtualService(
            item["scheduler"],
            persistence,
            item["netmask"],
            item["prefix"],
            tuple(RealServer.parse(s) for s in servers),
        )
    except (LvsfwError, ValueError, TypeError, RecursionError) as exc:
        raise ParseError("fake-ipvs", line, str(exc)) from None
    return FwmarkService(family, mark, service)
