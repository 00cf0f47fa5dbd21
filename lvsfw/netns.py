"""Network namespaces by name (as ``ip netns add`` creates them under /run/netns)."""

from __future__ import annotations

import ctypes
import os
import re
import threading
from collections.abc import Callable
from typing import TypeVar

from lvsfw.errors import LvsfwError, ValidationError

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
T = TypeVar("T")


def check_netns(name: str) -> str:
    """Return the path of namespace ``name``; raise :class:`LvsfwError` if it does not exist."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in {".", ".."}:
        raise ValidationError("netns", name, "a namespace name of [A-Za-z0-9_.-]")
    path = os.path.join(NETNS_DIR, name)
    if not os.path.exists(path):
        raise LvsfwError(f"netns: network namespace {name!r} does not exist ({path} missing)")
    return path


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise LvsfwError(f"netns: setns failed: {os.strerror(err)}")


def call_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Call ``fn`` in network namespace ``netns`` (None: here) and return its result.

    The call runs in a short-lived thread that joins the namespace, so the calling thread
    and the rest of the process stay where they are.
    """
    if netns is None:
        return fn()
    path = check_netns(netns)
    result: list[T] = []
    error: list[BaseException] = []

    def worker() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=worker, name=f"lvsfw-netns-{netns}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def legacy_tables(netns: str | None) -> frozenset[tuple[str, str]]:
    """The iptables-legacy (x_tables) tables that exist in ``netns``: (``ip``|``ip6``, name).

    Read from ``/proc/thread-self/net`` in the namespace: asking ``iptables-legacy-save``
    instead would load (create) the table it is asked about.
    """

    def read() -> frozenset[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        for family, listing in (("ip", "ip_tables_names"), ("ip6", "ip6_tables_names")):
            try:
                with open(f"/proc/thread-self/net/{listing}", encoding="ascii") as f:
                    found.update((family, name) for name in f.read().split())
            except OSError:  # no x_tables for this family in the kernel, or none loaded
                pass
        return frozenset(found)

    return call_in_netns(netns, read)
