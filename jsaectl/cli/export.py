"""Export a JSAE or its Jacobian connections for other tools.

STORE is a jsae store for the weight formats (a jacobian store stands for the JSAE it was made from), or a jacobian store for the connection formats; read from stdin when missing. Prints DIR (--json: DIR, format and files).

Formats: saelens (sae_in/ and sae_out/: SAELens v6 TopK SAEs), sparsify (layers.L.mlp_in/ and layers.L.mlp_out/: EleutherAI sparsify SAEs), jsae-pair (the reference JSAE code's pair folder, which both its loaders load; `jsaectl import` reads it back), connections-csv and connections-jsonl (the stored connections, strongest first, labelled). See docs/export.md.
"""

from __future__ import annotations

from jsaectl.cli._common import RichReporter, emit, err
from jsaectl.cli._generate import from_config
from jsaectl.configs import ExportConfig
from jsaectl.options import Outputs


@from_config(ExportConfig)
def export_cmd(cfg: ExportConfig, out: Outputs) -> None:
    from jsaectl.export import export

    result = export(cfg, RichReporter())
    n = len(result.files)
    err.print(f"wrote {n} file{'' if n == 1 else 's'} ({result.format}) to {result.out}", markup=False)
    emit(result.out, result.summary(), out.json)
