"""Network namespaces by name (as ``ip netns add`` creates them under /run/netns), and by
identity: what keys lvsfw's lock and state file, however the namespace was entered."""

from __future__ import annotations

import ctypes
import os
import re
import threading
from collections.abc import Callable
from typing import Optional, TypeVar

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


Identity = tuple[int, int]
#: The namespace of PID 1: the host's own (or, in a container, the container's).
INIT_NS = "/proc/1/ns/net"


def identity(netns: Optional[str]) -> Identity:
    """The (device, inode) of namespace ``netns``'s nsfs file (None: the caller's namespace).

    Two paths to one namespace (``ip netns exec NS lvsfw ...`` and ``lvsfw ... --netns NS``)
    give one identity; two namespaces alive at once never share one.
    """
    path = check_netns(netns) if netns is not None else "/proc/thread-self/ns/net"
    try:
        info = os.stat(path)
    except OSError as exc:
        raise LvsfwError(f"netns: cannot identify {path}: {exc.strerror}") from exc
    return info.st_dev, info.st_ino


def namespace_key(netns: Optional[str]) -> Optional[str]:
    """The key of namespace ``netns`` (None: the caller's) for lock and state file names.

    The first name under /run/netns bound to this very namespace, however it was entered (so
    ``ip netns exec NS`` and ``--netns NS`` agree, and the state of a named namespace outlives
    a reboot as its name does); None (the default files) for PID 1's namespace; ``ns@INODE``
    for an unnamed other one (``@`` is never in a name). Where PID 1's namespace cannot be
    read (a restricted container), an unnamed namespace is taken for the default one.
    """
    here = identity(netns)
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except OSError:
        names = []
    for name in names:
        try:
            info = os.stat(os.path.join(NETNS_DIR, name))
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == here and _NAME.fullmatch(name):
            return name
    if netns is not None:  # bound under a name that is not lvsfw-safe, and listed no other way
        return netns
    try:
        init = os.stat(INIT_NS)
    except OSError:
        return None
    return None if (init.st_dev, init.st_ino) == here else f"ns@{here[1]}"


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
