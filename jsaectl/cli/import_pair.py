"""Import a JSAE pair trained by the paper's reference code (or exported by `jsaectl export
--format jsae-pair`) as a jsae store, to analyse it with jacobian, maxact, compare and export.

PAIR_DIR holds cfg.json and sae_weights.safetensors. --acts is an activations store of the
model and layer the pair was trained on: the import checks d_model, the layer of the pair's
hook and (when the pair carries them, as a training pair does) the MLP weights, and refuses
a mismatch. Prints the URL of the jsae store it writes.
"""

from __future__ import annotations

from typing import Annotated

import typer

from jsaectl.cli._common import JsonOpt, OutOpt, OverwriteOpt, RichReporter, emit, err


def import_cmd(
    pair: Annotated[str, typer.Argument(help="Folder with the pair's cfg.json and sae_weights.safetensors.", show_default=False)],
    acts: Annotated[str, typer.Option("--acts", help="Activations store of the model and layer the pair was trained on (from `jsaectl harvest`).", show_default=False)] = "",
    jacobian_at: Annotated[str | None, typer.Option("--jacobian-at", help="Where analyses evaluate J: x or reconstruction. Default: the pair's own setting if jsaectl exported it, else x (where the reference trains).", show_default=False)] = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    from jsaectl.importer import ImportConfig, import_pair

    result = import_pair(ImportConfig(pair=pair, acts=acts, jacobian_at=jacobian_at, out=out, overwrite=overwrite), RichReporter())
    if not result.already_complete:
        checked = "MLP weights checked against --acts" if result.mlp_checked else "no MLP weights in the pair to check"
        err.print(f"imported 2 × {result.n_latents:,} latents, k={result.k}, λ={result.lam} ({checked}) → {result.store}",
                  markup=False)
    emit(result.store, result.summary(), json_out)
