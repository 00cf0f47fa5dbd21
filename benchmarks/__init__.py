"""lvsfw's scale benchmark (issue 5): ``python -m benchmarks``.

Builds N = 10, 1,000 and 10,000 bundles and measures, inside throwaway network namespaces,
render time, cold apply next to the kernel tools' own floor (``nft -f``, ``iptables-restore``)
and the naive per-rule way, incremental apply of one change, verify, packets per second
through a director (client netns -> veth -> director netns) and peak memory. Results are
printed as a table and written to ``benchmarks/results/latest.json``; see RESULTS.md.
"""
