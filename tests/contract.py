"""The contracts every backend's tests inherit: render, parse back, compare; junk in."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

from hypothesis import HealthCheck, given, settings

from lvsfw import LvsfwError, registry, specify
from lvsfw.backends.base import Backend, PacketFilter, ServiceBackend
from lvsfw.model import Bundle
from lvsfw.rules import normalize
from tests import strategies


class _Contract:
    """What every backend's contract shares: the instance under test, and junk to parse."""

    backend_name: ClassVar[str]
    backend_type: ClassVar[type[Backend]]

    def _backend(self) -> Any:
        """An instance of the backend under test (current namespace; only pure calls used)."""
        backend = registry.get(self.backend_name)()
        assert isinstance(backend, self.backend_type)
        return backend

    @settings(suppress_health_check=[HealthCheck.differing_executors])
    @given(strategies.junk_text)
    def test_parse_junk_raises_only_lvsfw_errors(self, text: str) -> None:
        """Random text either parses or raises an LvsfwError; nothing else escapes."""
        with contextlib.suppress(LvsfwError):
            self._backend().parse(text)


class PacketFilterContract(_Contract):
    """Subclass with ``backend_name`` set; pytest collects the inherited tests."""

    backend_type = PacketFilter

    @settings(suppress_health_check=[HealthCheck.differing_executors])
    @given(strategies.bundles())
    def test_render_parse_round_trip(self, bundles: list[Bundle]) -> None:
        """Every (family, vip, protocol, port) is marked with its bundle's mark, nothing else."""
        spec = specify(bundles)
        backend = self._backend()
        parsed = backend.parse(backend.render_spec(spec))
        assert normalize(parsed) == normalize(spec.rules)

    def test_seed_round_trip(self) -> None:
        """The HTTP+HTTPS seed case parses back to its specification."""
        web = Bundle("web", "192.0.2.10", "tcp:80,443", 80)
        backend = self._backend()
        spec = specify([web])
        assert normalize(backend.parse(backend.render_spec(spec))) == normalize(spec.rules)
        assert "80" in backend.render([web])


class ServiceBackendContract(_Contract):
    """The same for the IPVS-side backends (ipvs, keepalived): services round-trip exactly."""

    backend_type = ServiceBackend

    @settings(suppress_health_check=[HealthCheck.differing_executors])
    @given(strategies.bundles())
    def test_render_parse_round_trip(self, bundles: list[Bundle]) -> None:
        """Every (family, mark) service comes back with all its settings, nothing else."""
        spec = specify(bundles)
        backend = self._backend()
        assert backend.parse(backend.render_spec(spec)) == spec.services
