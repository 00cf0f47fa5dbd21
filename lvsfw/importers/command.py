"""The ``lvsfw import`` command (registered by :mod:`lvsfw.cli`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Optional

import click

from lvsfw.files import read_text
from lvsfw.importers import ImportFailed, import_files
from lvsfw.importers.found import Scan
from lvsfw.importers.join import FIRST_MARK
from lvsfw.importers.scanning import read_live, scan
from lvsfw.model import MAX_MARK

EXIT_OK, EXIT_ERROR = 0, 1


def _warn(warnings: Sequence[str]) -> None:
    for warning in warnings:
        click.echo(f"lvsfw: warning: {warning}", err=True)


@click.command(name="import")
@click.argument(
    "sources",
    metavar="lvs.cf|keepalived.conf...",
    nargs=-1,
    required=True,
    type=click.Path(dir_okay=False),
)
@click.option(
    "--format",
    "kind",
    type=click.Choice(["auto", "lvs.cf", "keepalived"]),
    default="auto",
    show_default=True,
    help="What the file is (auto: from its content).",
)
@click.option(
    "--rules",
    "rules_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="iptables-save (with ipset save) and/or 'nft list ruleset' output holding the marks.",
)
@click.option("--live", is_flag=True, help="Read the marks from the live kernel instead.")
@click.option("--netns", metavar="NAME", help="With --live: the network namespace to read.")
@click.option(
    "--first-mark",
    type=click.IntRange(1, MAX_MARK),
    default=FIRST_MARK,
    show_default=True,
    help="Marks for IP:port services are assigned from here up, skipping used ones.",
)
@click.option(
    "--merge-ports",
    is_flag=True,
    help="Merge IP:port services with equal VIPs, scheduler, persistence and real servers "
    "into one multi-port bundle (persistence then spans the ports).",
)
@click.option(
    "--output",
    "-o",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Write the config to FILE (default: stdout).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def import_command(
    *,
    sources: tuple[str, ...],
    kind: str,
    rules_file: Optional[str],
    live: bool,
    netns: Optional[str],
    first_mark: int,
    merge_ports: bool,
    output: Optional[str],
    as_json: bool,
) -> None:
    """Write the lvsfw config equivalent to a Piranha lvs.cf or a keepalived.conf.

    A fwmark service's ports come from the packet-filter rules that set its mark (--rules FILE
    or --live); an IP:port service becomes a bundle on a new mark. Whatever cannot be imported
    exactly is named on stderr; exit 1 when a mark had to be left out (it is written commented
    out, to finish by hand).

    Several files: the keepalived.conf of every node of one VRRP cluster (lvsfw import
    lb1.conf lb2.conf --rules rules.nft); the bundles come from the first, the [cluster]
    from all of them (one node's file alone lacks its peers' names and priorities).
    """
    if rules_file and live:
        raise click.UsageError("give --rules FILE or --live, not both")
    rules = Scan()
    if rules_file:
        rules = scan(read_text(rules_file), rules_file)
    elif live:
        rules = read_live(netns)
    try:
        result = import_files(
            sources, kind, rules, first_mark=first_mark, merge_ports=merge_ports
        )
    except ImportFailed as exc:
        _warn(exc.warnings)  # what was found before the failure still counts
        raise
    origin = rules_file or ("the live kernel" if live else "no rules (pass --rules or --live)")
    header = [f"lvsfw config imported from {', '.join(sources)}",
              f"marks' VIPs and ports from {origin}"]  # fmt: skip
    toml = result.config_text(header)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(toml)
    if as_json:
        data = {
            "config": toml,
            "bundles": [b.name for b in result.bundles],
            "cluster": [n.name for n in result.cluster.nodes] if result.cluster else None,
            "unmatched": list(result.unmatched),
            "left_out": [n for n, _ in result.stubs],
            "warnings": list(result.warnings),
            "output": output,
        }
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        _warn(result.warnings)
        if not output:
            click.echo(toml, nl=False)
    click.get_current_context().exit(EXIT_ERROR if result.stubs else EXIT_OK)
