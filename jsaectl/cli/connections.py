"""Query the connections a jacobian store holds, without recomputing anything: what does input latent I compute (--input-latent I), what computes output latent O (--output-latent O), the strongest overall, at least so strong (--min-strength), in another order (--sort).

STORE is the jacobian store printed by `jsaectl jacobian` (or read from stdin). The table goes to stdout (--json or --csv for scripts); reads only what the answer needs, through the store's per-latent index, so a latent's connections, and the strongest ones, come at once however many pairs the store holds.
"""

from __future__ import annotations

import csv
import json
import sys

from jsaectl.cli._common import out_console
from jsaectl.cli._generate import from_config
from jsaectl.cli.tables import connections_table, connections_title
from jsaectl.configs import ConnectionsConfig
from jsaectl.options import Outputs


@from_config(ConnectionsConfig)
def connections_cmd(cfg: ConnectionsConfig, out: Outputs) -> None:
    from jsaectl import store as st
    from jsaectl.connections import FIELDS, query

    store = st.open_store(cfg.store, "jacobian")
    found = query(store, inputs=cfg.input_latent, outputs=cfg.output_latent, top=cfg.top,
                  min_strength=cfg.min_strength, sort=cfg.sort)
    if out.json:
        sys.stdout.write(json.dumps({"store": store.url, "n_tokens": store.meta["n_tokens"],
                                     "connections": [c.to_json() for c in found]}, ensure_ascii=False) + "\n")
    elif out.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(c.to_json() for c in found)
    else:
        title = connections_title(len(found), cfg.input_latent, cfg.output_latent)
        if cfg.sort != "strength":
            title += f", by {cfg.sort}"
        out_console().print(connections_table(found, title))
