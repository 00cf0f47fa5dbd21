"""Fetch, unpack and cache Debian 12's stock kernel for the test VM.

The kernel package is found through the ``linux-image-amd64`` metapackage, fetched with
``apt-get download`` and unpacked with ``dpkg -x`` into the cache; it is never installed.
Modules that a headless IPVS test VM can never use (sound, GPU, wireless, ...) are pruned to
keep the cache small, then ``depmod -b`` writes the ``modules.dep`` the .deb does not ship.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

DEFAULT_CACHE = "/var/cache/lvsfw-vm"
METAPACKAGE = "linux-image-amd64"
READY_STAMP = ".ready"

# Top-level directories of lib/modules/KVER/kernel/drivers that are kept; the rest is pruned.
_KEEP_DRIVERS = {"virtio", "net", "char", "block"}
# Subdirectories of kernel/drivers/net that are pruned (physical and radio hardware).
_PRUNE_NET_DRIVERS = {"wireless", "ethernet", "usb", "can", "ieee802154", "wwan", "arcnet"}
_PRUNE_TOP = {"sound"}

Log = Callable[[str], None]
"""Receives progress messages."""


class VmSetupError(RuntimeError):
    """The VM's kernel or initramfs could not be prepared."""


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel in the cache."""

    version: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        """The bootable kernel image."""
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def modules_dir(self) -> Path:
        """The ``lib/modules/KVER`` tree, with ``modules.dep``."""
        return self.root / "lib" / "modules" / self.version

    @property
    def ready(self) -> bool:
        """Whether unpacking, pruning and depmod completed."""
        return (self.root / READY_STAMP).is_file() and self.vmlinuz.is_file()


def cache_dir() -> Path:
    """The cache directory: env ``LVSFW_VM_CACHE`` or ``/var/cache/lvsfw-vm``, absolute."""
    return Path(os.environ.get("LVSFW_VM_CACHE") or DEFAULT_CACHE).resolve()


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache so concurrent preparations do not collide."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tool(name: str) -> str:
    """Absolute path of the host tool ``name`` (also looked up in the sbin directories)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        candidate = Path(directory, name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise VmSetupError(f"{name} is not installed (scripts/bootstrap installs it)")


def _run(argv: list[str], cwd: Optional[Path] = None) -> str:
    """Run ``argv`` (argv[0] looked up with :func:`tool`) and return its stdout.

    Raises VmSetupError with stderr on failure.
    """
    try:
        proc = subprocess.run(
            [tool(argv[0]), *argv[1:]],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise VmSetupError(f"cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise VmSetupError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def current_kernel_version() -> str:
    """The ABI version (e.g. ``6.1.0-NN-amd64``) the ``linux-image-amd64`` metapackage points to.

    ``LVSFW_VM_KERNEL`` pins a version instead.
    """
    pinned = os.environ.get("LVSFW_VM_KERNEL")
    if pinned:
        return pinned
    out = _run(["apt-cache", "depends", METAPACKAGE])
    for line in out.splitlines():
        match = re.match(r"\s*\|?Depends:\s*linux-image-(\d[\w.+~-]*)\s*$", line)
        if match:
            return match.group(1)
    raise VmSetupError(f"apt-cache depends {METAPACKAGE} names no linux-image package:\n{out}")


def cached_kernels(cache: Path) -> list[Kernel]:
    """Kernels fully prepared in ``cache``, newest (by modification time) first."""
    if not cache.is_dir():
        return []
    found = [Kernel(p.name, p) for p in cache.iterdir() if p.is_dir()]
    ready = [k for k in found if k.ready]
    return sorted(ready, key=lambda k: (k.root / READY_STAMP).stat().st_mtime, reverse=True)


def _prune(modules: Path) -> None:
    """Delete module trees a headless VM never loads, to keep the cache small."""
    kernel = modules / "kernel"
    for name in _PRUNE_TOP:
        shutil.rmtree(kernel / name, ignore_errors=True)
    drivers = kernel / "drivers"
    if drivers.is_dir():
        for sub in drivers.iterdir():
            if sub.name not in _KEEP_DRIVERS:
                if sub.is_dir():
                    shutil.rmtree(sub)
                else:
                    sub.unlink()
    for name in _PRUNE_NET_DRIVERS:
        shutil.rmtree(drivers / "net" / name, ignore_errors=True)


def _unpack(version: str, cache: Path, log: Log) -> Kernel:
    """Download and unpack ``linux-image-VERSION`` into the cache, prune it and run depmod."""
    target = cache / version
    package = f"linux-image-{version}"
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=cache) as tmp:
        work = Path(tmp)
        log(f"lvsfw-vm: downloading {package}")
        _run(["apt-get", "download", "-q", package], cwd=work)
        debs = sorted(work.glob(f"{package}_*.deb"))
        if not debs:
            raise VmSetupError(f"apt-get download {package} produced no .deb in {work}")
        root = work / "root"
        log(f"lvsfw-vm: unpacking {debs[-1].name}")
        _run(["dpkg", "-x", str(debs[-1]), str(root)])
        kernel = Kernel(version, root)
        if not kernel.vmlinuz.is_file() or not kernel.modules_dir.is_dir():
            raise VmSetupError(f"{debs[-1].name} has no vmlinuz or modules for {version}")
        _prune(kernel.modules_dir)
        _run(["depmod", "-b", str(root), version])
        (root / READY_STAMP).write_text(debs[-1].name + "\n")
        shutil.rmtree(target, ignore_errors=True)
        root.rename(target)
    return Kernel(version, target)


def ensure_kernel(cache: Path, log: Log) -> Kernel:
    """Return the current kernel from the cache, fetching and unpacking it if needed.

    Must be called with :func:`cache_lock` held. If apt cannot name the current kernel (no
    package lists, offline), the newest kernel already in the cache is used.
    """
    try:
        version = current_kernel_version()
    except VmSetupError:
        cached = cached_kernels(cache)
        if not cached:
            raise
        log(f"lvsfw-vm: apt cannot name the kernel; using cached {cached[0].version}")
        return cached[0]
    kernel = Kernel(version, cache / version)
    if kernel.ready:
        return kernel
    return _unpack(version, cache, log)


def directory_size(path: Path) -> int:
    """Total size in bytes of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
