"""``lvsfw import --rules`` of lvsfw's own nft listing, as a fresh process (issue 9).

The inputs are rendered, not read from a kernel: the nftables backend's render of the workload
(what ``nft list table inet lvsfw`` prints for it) and the keepalived backend's render of the
same bundles (one ``virtual_server fwmark`` block per mark). No root needed::

    .venv/bin/python -m benchmarks.parse 1000 10000
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.workload import make_bundles
from lvsfw import registry

ROOT = Path(__file__).resolve().parent.parent


def write_inputs(count: int, directory: Path) -> tuple[Path, Path]:
    """``keepalived.conf`` and ``ruleset.nft`` for ``count`` bundles (one VIP or two each)."""
    bundles = make_bundles(count)
    conf, rules = directory / "keepalived.conf", directory / "ruleset.nft"
    conf.write_text(registry.get("keepalived")().render(bundles), encoding="utf-8")
    rules.write_text(registry.get("nftables")().render(bundles), encoding="utf-8")
    return conf, rules


def time_import(count: int, repeat: int = 1) -> dict[str, Any]:
    """Best-of-``repeat`` wall seconds of ``python -m lvsfw.cli import --rules`` (a fresh
    interpreter each time, start-up included) and of the interpreter start-up alone."""
    with tempfile.TemporaryDirectory(prefix="lvsfwbench-import-") as workdir:
        conf, rules = write_inputs(count, Path(workdir))
        out = Path(workdir) / "out.toml"
        argv = [sys.executable, "-m", "lvsfw.cli", "import", str(conf), "--rules", str(rules)]
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run([*argv, "-o", str(out)], cwd=ROOT, check=True, capture_output=True)
            best = min(best, time.perf_counter() - start)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import lvsfw.cli"], cwd=ROOT, check=True)
        startup = time.perf_counter() - started
        return {
            "import_s": best,
            "startup_s": startup,
            "rules_bytes": rules.stat().st_size,
            "config_bytes": out.stat().st_size,
        }


def line(count: int, result: dict[str, Any]) -> str:
    """One line of the results table."""
    return (
        f"  N={count:>6} import --rules {result['import_s'] * 1000:9.1f} ms"
        f" (start-up {result['startup_s'] * 1000:.0f} ms, {result['rules_bytes']} bytes of rules)"
    )


def main(argv: list[str]) -> int:
    """Time the import at each size given (default 1,000 and 10,000 bundles)."""
    for count in [int(a) for a in argv] or [1000, 10000]:
        print(line(count, time_import(count)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
