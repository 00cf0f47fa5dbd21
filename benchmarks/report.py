"""The table printed after a run, and the issue's floors judged from the JSON results."""

from __future__ import annotations

from typing import Any, Optional

from benchmarks.parse import line as parse_line

Result = dict[str, Any]
FIREWALLS = ("nftables", "iptables-nft", "iptables-legacy")


def _ms(value: object) -> str:
    return f"{float(value) * 1000:9.1f}" if isinstance(value, (int, float)) else f"{'-':>9}"


def _x(value: object) -> str:
    return f"{float(value):7.2f}x" if isinstance(value, (int, float)) else f"{'-':>8}"


def table(results: Result) -> str:
    """Render, apply and verify per N and backend, then pps and memory, in milliseconds."""
    lines = ["render (ms, render(bundles) incl. conflict check + expansion)"]
    for n, section in results["sizes"].items():
        parts = [
            f"{name}={_ms(v['render_s']).strip()}"
            for name, v in section["render"].items()
            if isinstance(v, dict)
        ]
        lines.append(f"  N={n:>6} rules={section['render']['rules']:>6}: " + "  ".join(parts))
    head = (
        f"{'N':>6} {'backend':<16} {'cold':>9} {'floor':>9} {'cold/fl':>8} {'naive':>9}"
        f" {'naive/c':>8} {'1 change':>9} {'fresh 1c':>9} {'no-op':>9} {'verify':>9}"
        f" {'read':>9} {'list':>9}"
    )
    lines += ["", "apply / verify (ms; floor = kernel tool loading the same file)", head]
    for n, section in results["sizes"].items():
        for name in FIREWALLS:
            r = section.get("apply", {}).get(name)
            if r is None:
                continue
            lines.append(
                f"{n:>6} {name:<16} {_ms(r['cold_s'])} {_ms(r['floor']['load_s'])}"
                f" {_x(r['cold_vs_floor'])} {_ms(r.get('naive_s'))} {_x(r.get('naive_vs_cold'))}"
                f" {_ms(r['incremental_s'])} {_ms(r.get('fresh_change_s'))} {_ms(r['noop_s'])}"
                f" {_ms(r['verify_s'])} {_ms(r['read_s'])} {_ms(r['verify_floor_s'])}"
            )
        for flavour, r in section.get("ipset", {}).items():
            lines.append(
                f"{n:>6} {'ipset-' + flavour + '*':<16} {_ms(r['cold_s'])} {'':>9} {'':>8} {'':>9}"
                f" {'':>8} {_ms(r['incremental_s'])} {'':>9} {'':>9} {'':>9} {_ms(r['save_s'])}"
            )
    imports = {n: s["import"] for n, s in results["sizes"].items() if "import" in s}
    if imports:
        lines += ["", "lvsfw import --rules of lvsfw's own nft listing (fresh process)"]
        lines += [parse_line(int(n), r) for n, r in imports.items()]
    pps = results.get("pps")
    if pps:
        lines += ["", f"packets/s marked at the director (median and best of {pps['runs']} runs)"]
        for name, r in pps.items():
            if isinstance(r, dict):
                sizes = [k for k in r if k.isdigit()]
                vals = "  ".join(
                    f"N={k}: {r[k]['marked_pps']:>8.0f} (best {r[k]['marked_pps_max']:>8.0f})"
                    for k in sizes
                )
                lines.append(
                    f"  {name:<22} {vals}  ratio {r['ratio_median']:.3f} (best {r['ratio']:.3f})"
                )
    memory = results.get("memory")
    if memory:
        lines += ["", "peak memory of cold apply (MiB)"]
        for name, r in memory.items():
            lines.append(
                f"  {name:<16} tracemalloc {r['tracemalloc_peak_mib']:7.1f}  maxrss"
                f" {r['maxrss_before_mib']:7.1f} -> {r['maxrss_mib']:7.1f}"
                f"  tool child <= {r['children_maxrss_mib']:6.1f}"
            )
    if results.get("cli"):
        lines += ["", cli_table(results["cli"])]
    lines += ["", "floors:"] + [
        f"  [{f['status']}] {f['floor']}: {f['detail']}" for f in floors(results)
    ]
    return "\n".join(lines)


#: (column head, key) of the command-line table, in the order the commands run.
CLI_COLUMNS = (
    ("plan0", "plan_cold"),
    ("apply0", "apply_cold"),
    ("no-op", "apply_noop"),
    ("plan1", "plan_change"),
    ("1 change", "apply_change"),
    ("verify", "verify"),
)


def _s(node: object) -> object:
    return node.get("s") if isinstance(node, dict) else None


def cli_table(cli: Result) -> str:
    """The command-line section: seconds of fresh ``lvsfw`` processes, the kernel tool's load
    of the same ruleset, cold over floor, and growth (largest N over smallest)."""
    start = _s(cli["startup"])
    lines = [
        "command line (ms; fresh `lvsfw` processes on a freshly written TOML file; plan0/apply0:"
        " empty namespace; plan1/1 change: bundle N/2 edited; floor = kernel tool's load)",
        f"  python start-up (python -c 'import lvsfw.cli'): {_ms(start).strip()} ms",
        f"{'N':>6} {'backend':<16} {'check':>9}"
        + "".join(f" {head:>9}" for head, _ in CLI_COLUMNS)
        + f" {'floor':>9} {'cold/fl':>8} {'MiB':>6}",
    ]
    sizes = cli["sizes"]
    for n, section in sizes.items():
        for name in FIREWALLS:
            r = section.get(name)
            if r is None:
                continue
            cold, load = _s(r["apply_cold"]), r["floor"]["load_s"]
            ratio = float(cold) / load if isinstance(cold, float) and load else None
            sizes_mib = [r[k]["maxrss_mib"] for _, k in CLI_COLUMNS]
            rss = max(float(m) for m in sizes_mib) if None not in sizes_mib else 0.0
            lines.append(
                f"{n:>6} {name:<16} {_ms(_s(section['check']))}"
                + "".join(f" {_ms(_s(r[k]))}" for _, k in CLI_COLUMNS)
                + f" {_ms(load)} {_x(ratio)} {rss:6.0f}"
            )
    keys = sorted((k for k in sizes if int(k) > 10), key=int)
    if len(keys) >= 2:
        small, big = keys[0], keys[-1]
        lines.append(f"growth (N={big} / N={small}; 10 = linear)")
        for name in FIREWALLS:
            if name not in sizes[small] or name not in sizes[big]:
                continue
            cells = [_growth(sizes[small]["check"], sizes[big]["check"])]
            cells += [_growth(sizes[small][name][k], sizes[big][name][k]) for _, k in CLI_COLUMNS]
            loads = [float(sizes[k][name]["floor"]["load_s"]) for k in (small, big)]
            lines.append(f"{'':>6} {name:<16}" + "".join(cells) + f" {loads[1] / loads[0]:8.1f}x")
    return "\n".join(lines)


def _growth(small: object, big: object) -> str:
    a, b = _s(small), _s(big)
    if not isinstance(a, float) or not isinstance(b, float) or a <= 0:
        return f" {'-':>9}"
    return f" {b / a:8.1f}x"


def _floor(name: str, ok: bool, detail: str, applies: bool = True) -> Result:
    status = ("met" if ok else "MISSED") if applies else "n/a"
    return {"floor": name, "status": status, "detail": detail}


def floors(results: Result) -> list[Result]:
    """Each floor of issue 5 at the largest N (naive at the largest N <= 1000)."""
    sizes = results["sizes"]
    big = max(sizes, key=int)
    out: list[Result] = []
    render = sizes[big]["render"]
    for name, r in render.items():
        if isinstance(r, dict):
            out.append(
                _floor(f"render {big} {name} < 1 s", r["render_s"] < 1, f"{r['render_s']:.3f} s")
            )
    apply = sizes[big].get("apply", {})
    for name, r in apply.items():
        if name not in FIREWALLS:
            continue
        out.append(
            _floor(
                f"cold apply {big} {name} <= 1.5x floor",
                r["cold_vs_floor"] <= 1.5,
                f"{r['cold_s']:.3f} s vs {r['floor']['load_s']:.3f} s = {r['cold_vs_floor']:.2f}x",
            )
        )
        limit = min(0.05 * r["cold_s"], 0.150)
        out.append(
            _floor(
                f"one change at {big} {name} <= 5% cold and < 150 ms",
                r["incremental_s"] <= limit,
                f"{r['incremental_s'] * 1000:.1f} ms (limit {limit * 1000:.1f} ms)",
            )
        )
        out.append(
            _floor(
                f"verify {big} {name} < 1 s",
                r["verify_s"] < 1,
                f"{r['verify_s']:.3f} s (read alone {r['read_s']:.3f} s)",
            )
        )
    small = [n for n in sizes if int(n) <= 1000 and sizes[n].get("apply", {}).get("naive")]
    if small:
        n = max(small, key=int)
        for name, r in sizes[n]["apply"].items():
            if isinstance(r, dict) and "naive_vs_cold" in r:
                out.append(
                    _floor(
                        f"{n} bundles {name} >= 50x faster than per-rule calls",
                        r["naive_vs_cold"] >= 50,
                        f"{r['naive_vs_cold']:.1f}x",
                    )
                )
    for name, r in (results.get("pps") or {}).items():
        if isinstance(r, dict):
            must = name == "nftables" or name.endswith("+ipset")
            text = f"best-run ratio {r['ratio']:.3f}, median ratio {r['ratio_median']:.3f}"
            text += "" if must else " (no floor: linear chain or prototype)"
            out.append(_floor(f"pps {name} N=max >= 0.9x N=1", r["ratio"] >= 0.9, text, must))
    for name, r in apply.items():
        if name in FIREWALLS and "fresh_change_s" in r:
            limit = 0.150 if name == "nftables" else 0.500
            seconds = float(r["fresh_change_s"])
            out.append(
                _floor(
                    f"API one change at {big}, fresh bundles, {name} < {limit * 1000:.0f} ms",
                    seconds < limit,
                    f"{seconds * 1000:.1f} ms",
                )
            )
    return out + cli_floors(results.get("cli"))


def cli_floors(cli: Optional[Result]) -> list[Result]:
    """The command-line floors of issue 13 at the largest N of the command-line section."""
    if not cli or not cli.get("sizes"):
        return []
    big = max(cli["sizes"], key=int)
    section, start = cli["sizes"][big], float(cli["startup"]["s"])
    check = float(section["check"]["s"])
    out = [_floor(f"CLI check {big} < 1 s", check < 1, f"{check:.3f} s")]
    for name in FIREWALLS:
        r = section.get(name)
        if r is None:
            continue
        nft = name == "nftables"
        limits = {"apply_change": 1.5 if nft else 2.0}
        limits.update({"apply_noop": 1.5, "verify": 2.0} if nft else {})
        for key, limit in limits.items():
            seconds = float(r[key]["s"])
            out.append(
                _floor(f"CLI {key} {big} {name} < {limit} s", seconds < limit, f"{seconds:.3f} s")
            )
        load, cold = float(r["floor"]["load_s"]), float(r["apply_cold"]["s"])
        limit = 2 * load + (start if nft else 0.0)
        what = "2x floor + start-up" if nft else "2x floor"
        out.append(
            _floor(
                f"CLI cold apply {big} {name} <= {what}",
                cold <= limit,
                f"{cold:.3f} s vs limit {limit:.3f} s (floor {load:.3f} s, start-up {start:.3f} s)",
            )
        )
    return out
