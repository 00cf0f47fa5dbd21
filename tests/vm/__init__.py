"""QEMU test VM for lvsfw: runs commands under Debian 12's stock kernel, which has IPVS.

The host kernel has no IPVS, so tests that need it run inside a small VM booting Debian's
``linux-image-6.1.0-NN-amd64`` (fetched with ``apt-get download``, never installed). The VM sees
the host's ``/`` read-only under a tmpfs overlay (nothing reaches the host), has no network
device, and brings results back through one read-write 9p share.

Command line: ``python -m tests.vm prepare`` and ``python -m tests.vm run -- CMD ARGS...``.
Python API: :func:`run_in_vm` returning a :class:`VmResult`.
"""

from .kernel import VmSetupError, cache_dir
from .runner import (
    DEFAULT_TIMEOUT,
    TIMEOUT_STATUS,
    VmResult,
    prepare,
    run_in_vm,
    unavailable_reason,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "TIMEOUT_STATUS",
    "VmResult",
    "VmSetupError",
    "cache_dir",
    "prepare",
    "run_in_vm",
    "unavailable_reason",
]
