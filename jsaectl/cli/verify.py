"""Check that stores can be trusted: every chunk present, matching its checksum, decodable,
and (for float arrays) finite; shapes as the attrs say.

STORES are any jsaectl stores, as arguments or one per line on stdin. Prints a table on
stderr and exits 0 only if every store is sound (--json: one JSON document on stdout).
--repair re-harvests exactly the damaged chunks of an activations store (it needs the same
model and text as the original harvest), ending byte-identical to a clean run.
"""

from __future__ import annotations

import json
import sys

import typer
from rich.table import Table

from jsaectl.cli._common import RichReporter, err
from jsaectl.cli._generate import from_config
from jsaectl.configs import VerifyConfig
from jsaectl.options import Outputs

_SHOWN = 8  # problems listed per store; --json has them all


def _table(reports) -> Table:
    table = Table(title="jsaectl verify", title_justify="left")
    for name, justify in (("store", "left"), ("kind", "left"), ("arrays", "right"), ("chunks", "right"),
                          ("MB read", "right"), ("status", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for r in reports:
        status = "[green]ok[/]" if r.ok else f"[red]{len(r.problems)} problem{'s' * (len(r.problems) != 1)}[/]"
        table.add_row(r.url, f"{'lazy ' if r.lazy else ''}{r.kind or '?'} (format {r.format or '?'})", f"{r.arrays:,}", f"{r.chunks:,}",
                      f"{r.bytes / 1e6:,.1f}", status)
    return table


@from_config(VerifyConfig)
def verify_cmd(cfg: VerifyConfig, out: Outputs) -> None:
    from jsaectl.verify import repair as repair_store
    from jsaectl.verify import verify

    reports = [verify(url, RichReporter()) for url in cfg.stores]
    if cfg.repair:
        for i, report in enumerate(reports):
            if not report.ok:
                repair_store(report.url, report, RichReporter())
                reports[i] = verify(report.url, RichReporter())
    err.print(_table(reports))
    for r in reports:
        for note in r.notes:
            err.print(f"[yellow]note:[/] {note}", highlight=False)
        for p in r.problems[:_SHOWN]:
            err.print(f"  ✗ {r.url}: {p}", highlight=False, markup=False)
        if len(r.problems) > _SHOWN:
            err.print(f"  … and {len(r.problems) - _SHOWN} more (--json lists them all)")
    if out.json:
        sys.stdout.write(json.dumps([r.to_json() for r in reports]) + "\n")
    bad = sum(not r.ok for r in reports)
    if bad:
        raise typer.Exit(1)
