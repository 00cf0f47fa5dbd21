"""An apply's undo stack: each change sent, its inverse kept to put things back."""

from __future__ import annotations

import functools
from typing import Callable

from lvsfw.backends.base import Change
from lvsfw.errors import LvsfwError, add_note


class UndoStack:
    """The inverses of the changes an apply sent, run last first when a later step fails.

    ``unsure`` holds what stopped a commit midway with anything but an :class:`LvsfwError`
    (Ctrl-C, a signal): such a commit may or may not have landed, so the apply must keep its
    pending ownership rather than trust the undo.
    """

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []
        self.unsure: list[BaseException] = []

    def send(self, commit: Callable[[Change], None], change: Change, *, atomic: bool) -> None:
        """``commit(change)``, its inverse pushed after the commit when a failed one changed
        nothing (an atomic transaction; a service half undoes its own failed steps), before
        it otherwise (a half-sent iptables change is undone by a reload on a fresh read)."""
        inverse = functools.partial(commit, change.inverse)
        if not atomic:
            self._steps.append(inverse)
        try:
            commit(change)
        except LvsfwError:
            raise
        except BaseException as exc:
            self.unsure.append(exc)
            raise
        if atomic:
            self._steps.append(inverse)

    def run(self, exc: BaseException) -> bool:
        """Run every undo step, last first, even after one fails (failures become notes on
        ``exc``). Returns whether everything was put back for sure."""
        undone = True
        for step in reversed(self._steps):
            try:
                step()
            except LvsfwError as failure:
                undone = False
                add_note(exc, f"lvsfw: undo failed too: {failure}")
        return undone and not self.unsure
