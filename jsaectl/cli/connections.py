"""Query the connections a jacobian store holds, without recomputing anything: what does input latent I compute (--input-latent I), what computes output latent O (--output-latent O), the strongest overall, at least so strong (--min-strength), in another order (--sort).

STORE is the jacobian store printed by `jsaectl jacobian` (or read from stdin). The table goes to stdout (--json or --csv for scripts); reads only what the answer needs, through the store's per-latent index, so it answers at once however many pairs the store holds.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict
from typing import Annotated

import typer

from jsaectl.cli._common import ConfigOpt, out_console
from jsaectl.cli._generate import from_config
from jsaectl.configs import ConnectionsConfig
from jsaectl.errors import ConfigError


@from_config(ConnectionsConfig)
def connections_cmd(
    cfg: ConnectionsConfig,
    json_out: Annotated[bool, typer.Option("--json", help="Print the connections as one JSON document.")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print the connections as CSV, one row each.")] = False,
    config: ConfigOpt = None,
) -> None:
    from jsaectl import store as st
    from jsaectl.cli.jacobian import _title, connections_table
    from jsaectl.connections import query

    if json_out and csv_out:
        raise ConfigError("--json and --csv are exclusive")
    store = st.open_store(cfg.store, "jacobian")
    found = query(store, inputs=cfg.input_latent, outputs=cfg.output_latent, top=cfg.top,
                  min_strength=cfg.min_strength, sort=cfg.sort)
    if json_out:
        sys.stdout.write(json.dumps({"store": store.url, "n_tokens": store.meta["n_tokens"],
                                     "connections": [c.to_json() for c in found]}, ensure_ascii=False) + "\n")
    elif csv_out:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(asdict(found[0]) if found else ("input", "output")),
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(asdict(c) for c in found)
    else:
        title = _title(len(found), cfg.input_latent, cfg.output_latent)
        if cfg.sort != "strength":
            title += f", by {cfg.sort}"
        out_console(width=None if sys.stdout.isatty() else 240).print(connections_table(found, title))
