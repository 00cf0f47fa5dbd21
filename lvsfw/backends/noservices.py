"""The service half of a marks-only Director: nothing in IPVS is read or written."""

from __future__ import annotations

from typing import Optional

import attrs

from lvsfw.backends.base import Change, ServiceHalf, ServiceKey, ServiceLive
from lvsfw.rules import FwmarkService, Specification


@attrs.frozen
class Nothing:
    """The live state of no service table."""

    services: frozenset[FwmarkService] = frozenset()


class NoServices(ServiceHalf):
    """``ipvs=None``: lvsfw writes marks only; the state's owned services stay recorded."""

    name = "none"
    manages = False

    def render_spec(self, spec: Specification) -> str:
        """Nothing: no service table is loaded."""
        return ""

    def parse(self, text: str) -> frozenset[FwmarkService]:
        """No services are ever read."""
        return frozenset()

    def observe(self, keys: frozenset[ServiceKey]) -> Nothing:
        """Nothing is read."""
        return Nothing()

    def diff(
        self, spec: Specification, live: ServiceLive, owned: frozenset[ServiceKey]
    ) -> tuple[Optional[Change], Optional[Change]]:
        """Nothing is ever to be written."""
        return None, None

    def commit(self, change: Change) -> None:
        """Never called: :meth:`diff` returns no change."""
        raise TypeError("the marks-only service half has nothing to commit")
