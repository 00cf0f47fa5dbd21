"""Peak memory of one cold apply, in a fresh process: ``python -m benchmarks.memory``.

Usage: ``python -m benchmarks.memory BACKEND N NETNS STATE_DIR`` prints one JSON object:
``tracemalloc_peak_mib`` (Python allocations during apply, all threads), ``maxrss_mib`` (the
process's peak resident size, VmHWM, C libraries such as libnftables included),
``maxrss_before_mib`` (the same just before apply: interpreter, lvsfw and the N bundles),
``children_maxrss_mib`` (the largest tool process, e.g. iptables-restore; an upper bound, as
it starts from this process's size at fork) and ``apply_s``
(slowed by tracemalloc). VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss`` of the parent
across fork+exec, so a child started by a big benchmark process would report the parent's.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import tracemalloc

from benchmarks.apply import Driver
from benchmarks.workload import make_bundles

MIB = 1024.0  # VmHWM and ru_maxrss are in KiB on Linux


def high_water_kib() -> int:
    """This process's peak resident set size (VmHWM) in KiB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str]) -> int:
    """Apply N bundles with ``BACKEND`` in ``NETNS`` under tracemalloc and print the peaks."""
    name, count, netns, workdir = argv[0], int(argv[1]), argv[2], argv[3]
    bundles = make_bundles(count)
    driver = Driver(name, netns, workdir)
    before = high_water_kib()
    tracemalloc.start()
    start = time.perf_counter()
    driver.apply(bundles)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    driver.destroy()
    result = {
        "tracemalloc_peak_mib": peak / MIB / MIB,
        "maxrss_before_mib": before / MIB,
        "maxrss_mib": high_water_kib() / MIB,
        "children_maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / MIB,
        "apply_s": seconds,
        "via": driver.via,
    }
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
