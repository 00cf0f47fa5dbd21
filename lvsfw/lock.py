"""One apply at a time per network namespace: an advisory file lock with a timeout.

The lock is keyed by the namespace's identity (:func:`lvsfw.netns.namespace_key`), so
``ip netns exec NS lvsfw apply`` and ``lvsfw apply --netns NS`` take the same lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from typing import Optional

from lvsfw.errors import LvsfwError
from lvsfw.netns import namespace_key

LOCK_DIR = "/run"


class LockTimeout(LvsfwError):
    """Another lvsfw process held the lock for longer than the timeout."""


def lock_path(netns: Optional[str], lock_dir: str = LOCK_DIR) -> str:
    """``/run/lvsfw.lock`` for PID 1's namespace, ``/run/lvsfw-KEY.lock`` for another (KEY:
    its name, however it was entered, or ``ns@INODE``)."""
    key = namespace_key(netns)
    suffix = "" if key is None else f"-{key}"
    return os.path.join(lock_dir, f"lvsfw{suffix}.lock")


@contextlib.contextmanager
def locked(path: str, timeout: float = 60.0, poll: float = 0.05) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; wait at most ``timeout`` seconds for it
    (0: fail at once if another process holds it).

    The lock is released by the kernel when the process dies, so a killed apply never
    leaves a stale lock behind.
    """
    if not timeout >= 0:  # also refuses NaN
        raise LvsfwError(f"lock_timeout: {timeout!r} is not valid; expected seconds >= 0")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise LvsfwError(f"lock {path}: {exc.strerror}") from exc
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"lock {path}: another lvsfw apply has held it for {timeout:g} s; "
                        "try again later or raise lock_timeout"
                    ) from None
                time.sleep(poll)
        yield
    finally:
        os.close(fd)
