"""The contract every packet-filter backend's tests inherit: render, parse back, compare."""

from __future__ import annotations

import contextlib
from typing import ClassVar

from hypothesis import HealthCheck, given, settings

from lvsfw import LvsfwError, registry, specify
from lvsfw.backends.base import PacketFilter, ServiceBackend
from lvsfw.model import Bundle
from lvsfw.rules import normalize
from tests import strategies


class PacketFilterContract:
    """Subclass with ``backend_name`` set; pytest collects the inherited tests."""

    backend_name: ClassVar[str]

    def _backend(self) -> PacketFilter:
        """An instance of the backend under test (current namespace; only pure calls used)."""
        backend = registry.get(self.backend_name)()
        assert isinstance(backend, PacketFilter)
        return backend

    @settings(suppress_health_check=[HealthCheck.differing_executors])
    @given(strategies.bundles())
    def test_render_parse_round_trip(self, bundles: list[Bundle]) -> None:
        """Every (family, vip, protocol, port) is marked with its bundle's mark, nothing else."""
        spec = specify(bundles)
        backend = self._backend()
        parsed = backend.parse(backend.render_spec(spec))
        assert normalize(parsed) == normalize(spec.rules)

    @settings(suppress_health_check=[HealthCheck.differing_executors])
    @given(strategies.junk_text)
    def test_parse_junk_raises_only_lvsfw_errors(self, text: str) -> None:
        """Random text either parses or raises an LvsfwError; nothing else escapes."""
        with contextlib.suppress(LvsfwError):
            self._backend().parse(text)

    def test_seed_round_trip(self) -> None:
        """The HTTP+HTTPS seed case parses back to its specification."""
        web = Bundle("web", "192.0.2.10", "tcp:80,443", 80)
        backend = self._backend()
        spec = specify([web])
        assert normalize(backend.parse(backend.render_spec(spec))) == normalize(spec.rules)
        assert "80" in backend.render([web])


class ServiceBackendContract:
    """The same for the IPVS-side backends (ipvs, keepalived): services round-trip exactly."""

    backend_name: ClassVar[str]

    def _backend(self) -> ServiceBackend:
        backend = registry.get(self.backend_name)()
        assert isinstance(backend, ServiceBackend)
        return backend

    @settings(suppress_health_check=[HealthCheck.differing_executors])
    @given(strategies.bundles())
    def test_render_parse_round_trip(self, bundles: list[Bundle]) -> None:
        """Every (family, mark) service comes back with all its settings, nothing else."""
        spec = specify(bundles)
        backend = self._backend()
        assert backend.parse(backend.render_spec(spec)) == spec.services

    @settings(suppress_health_check=[HealthCheck.differing_executors])
    @given(strategies.junk_text)
    def test_parse_junk_raises_only_lvsfw_errors(self, text: str) -> None:
        """Random text either parses or raises an LvsfwError; nothing else escapes."""
        with contextlib.suppress(LvsfwError):
            self._backend().parse(text)
