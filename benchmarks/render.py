"""Render time per backend: ``render(bundles)`` (conflict check and expansion included)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from lvsfw import registry
from lvsfw.model import Bundle
from lvsfw.rules import specify


def _best(work: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = work()
        best = min(best, time.perf_counter() - start)
    return best, value


def run_render(bundles: list[Bundle], repeat: int) -> dict[str, Any]:
    """Best-of-``repeat`` seconds of ``specify`` and of each backend's render and render_spec."""
    specify_s, spec = _best(lambda: specify(bundles), repeat)
    out: dict[str, Any] = {"specify_s": specify_s, "rules": len(spec.rules)}
    for name in registry.names():
        backend = registry.get(name)()
        total, text = _best(partial(backend.render, bundles), repeat)
        only, _ = _best(partial(backend.render_spec, spec), repeat)
        out[name] = {"render_s": total, "render_spec_s": only, "bytes": len(text)}
    return out
