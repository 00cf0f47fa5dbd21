"""Files lvsfw writes for later (state, boot files, imported configs): always atomically."""

from __future__ import annotations

import os
import tempfile

from lvsfw.errors import LvsfwError


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, whole.

    A fresh temporary file made in the same directory (``mkstemp``: created exclusively, so a
    symlink planted at a guessable name is never followed), written, fsynced, renamed over
    ``path``, then the directory fsynced. On any failure the temporary file is removed and
    ``path`` is left as it was.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_text(path: str) -> str:
    """The UTF-8 text of ``path``; an unreadable or undecodable file is one clear error."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise LvsfwError(f"{path}: cannot read: {exc}") from None
