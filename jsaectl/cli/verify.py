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
from typing import Annotated

import typer
from rich.table import Table

from jsaectl.cli._common import RichReporter, err, stores_from_args

_SHOWN = 8  # problems listed per store; --json has them all


def _table(reports) -> Table:
    table = Table(title="jsaectl verify", title_justify="left")
    for name, justify in (("store", "left"), ("kind", "left"), ("arrays", "right"), ("chunks", "right"),
                          ("MB read", "right"), ("status", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for r in reports:
        status = "[green]ok[/]" if r.ok else f"[red]{len(r.problems)} problem{'s' * (len(r.problems) != 1)}[/]"
        table.add_row(r.url, f"{r.kind or '?'} (format {r.format or '?'})", f"{r.arrays:,}", f"{r.chunks:,}",
                      f"{r.bytes / 1e6:,.1f}", status)
    return table


def verify_cmd(
    stores: Annotated[list[str] | None, typer.Argument(help="Stores to check (paths or URLs); read one per line from stdin when missing.", show_default=False)] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Re-harvest the damaged chunks of an activations store (loads the model and reads the text again), then check it again.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the reports as one JSON document on stdout.")] = False,
) -> None:
    from jsaectl.verify import repair as repair_store
    from jsaectl.verify import verify

    urls = stores_from_args(stores)
    reports = [verify(url, RichReporter()) for url in urls]
    if repair:
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
    if json_out:
        sys.stdout.write(json.dumps([r.to_json() for r in reports]) + "\n")
    bad = sum(not r.ok for r in reports)
    if bad:
        raise typer.Exit(1)
