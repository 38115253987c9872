"""Export a JSAE or its Jacobian connections for other tools.

STORE is a jsae store for the weight formats (a jacobian store stands for
the JSAE it was made from), or a jacobian store for the connection formats;
read from stdin when missing. Prints DIR (--json: DIR, format and files).

Formats: saelens (sae_in/ and sae_out/: SAELens v6 TopK SAEs), sparsify
(layers.L.mlp_in/ and layers.L.mlp_out/: EleutherAI sparsify SAEs),
jsae-pair (the reference JSAE code's SAEPair folder), connections-csv and
connections-jsonl (the stored connections, strongest first, labelled).
See docs/export.md.
"""

from __future__ import annotations

from typing import Annotated

import typer

from jsaectl.cli._common import ConfigOpt, JsonOpt, emit, err, store_from_arg
from jsaectl.export import FORMATS

_FORMAT_HELP = "What to write: " + ", ".join(FORMATS) + "."


def export_cmd(
    store: Annotated[str | None, typer.Argument(help="jsae or jacobian store (path or URL); read from stdin when missing or -.", show_default=False)] = None,
    format: Annotated[str, typer.Option("--format", "-f", help=_FORMAT_HELP, show_default=False)] = ...,  # type: ignore[assignment]
    out: Annotated[str, typer.Option("--out", "-o", help="Directory to write (created if missing).", show_default=False)] = ...,  # type: ignore[assignment]
    top: Annotated[int | None, typer.Option("--top", help="Connection formats: write only the N strongest connections (default: all).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty DIR, replacing only the files and folders this format writes.")] = False,
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    from jsaectl.export import ExportConfig, export

    result = export(ExportConfig(store=store_from_arg(store), format=format, out=out, top=top, overwrite=overwrite))
    n = len(result.files)
    err.print(f"wrote {n} file{'' if n == 1 else 's'} ({result.format}) to {result.out}", markup=False)
    emit(result.out, result.summary(), json_out)
