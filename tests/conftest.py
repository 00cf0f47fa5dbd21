"""Shared pytest configuration: hypothesis profiles and the guest-only test folder."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# tests/guest runs inside the IPVS virtual machine (tests/test_vm_harness.py boots it).
collect_ignore_glob = [] if os.environ.get("LVSFW_IN_VM") == "1" else ["guest/*"]

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
pytest_plugins = ["tests.conftest_kernel"]
