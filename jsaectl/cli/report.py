"""Write a static HTML report of a jacobian store: the run and its sparsity, the |J| histogram, training curves, the strongest connections as a graph you can hover and click and as a table you can filter, a page per latent with its max-activating contexts, and a page per connection with the contexts where it acts.

STORE is the jacobian store printed by `jsaectl jacobian` (or read from stdin). The report opens from disk (no server, no network): open DIR/index.html. Prints DIR/index.html.
"""

from __future__ import annotations

from jsaectl.cli._common import RichReporter, emit, err
from jsaectl.cli._generate import from_config
from jsaectl.configs import ReportConfig
from jsaectl.options import Outputs


@from_config(ReportConfig)
def report_cmd(cfg: ReportConfig, out: Outputs) -> None:
    from jsaectl.report import report

    result = report(cfg, RichReporter())
    index = f"{result.out}/index.html"
    err.print(f"report: {result.connections} connections, {result.latents} latents, {len(result.files)} files → {index}",
              markup=False)
    emit(index, result.summary(), out.json)
