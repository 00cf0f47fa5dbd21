"""One apply at a time per network namespace: an advisory file lock with a timeout."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from typing import Optional

from lvsfw.errors import LvsfwError

LOCK_DIR = "/run"


class LockTimeout(LvsfwError):
    """Another lvsfw process held the lock for longer than the timeout."""


def lock_path(netns: Optional[str], lock_dir: str = LOCK_DIR) -> str:
    """``/run/lvsfw.lock`` for the current namespace, ``/run/lvsfw-NAME.lock`` for a named one."""
    suffix = "" if netns is None else f"-{netns}"
    return os.path.join(lock_dir, f"lvsfw{suffix}.lock")


@contextlib.contextmanager
def locked(path: str, timeout: float = 60.0, poll: float = 0.05) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; wait at most ``timeout`` seconds for it.

    The lock is released by the kernel when the process dies, so a killed apply never
    leaves a stale lock behind.
    """
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
