"""Import a JSAE pair trained by the paper's reference code (or exported by `jsaectl export --format jsae-pair`) as a jsae store, to analyse it with jacobian, maxact, compare and export.

PAIR_DIR holds cfg.json and sae_weights.safetensors. --acts is an activations store of the model and layer the pair was trained on: the import checks d_model, the layer of the pair's hook and (when the pair carries them, as a training pair does) the MLP weights, and refuses a mismatch. Prints the URL of the jsae store it writes.
"""

from __future__ import annotations

from jsaectl.cli._common import RichReporter, emit, err
from jsaectl.cli._generate import from_config
from jsaectl.configs import ImportConfig
from jsaectl.options import Outputs


@from_config(ImportConfig)
def import_cmd(cfg: ImportConfig, out: Outputs) -> None:
    from jsaectl.importer import import_pair

    result = import_pair(cfg, RichReporter())
    if not result.already_complete:
        checked = "MLP weights checked against --acts" if result.mlp_checked else "no MLP weights in the pair to check"
        err.print(f"imported 2 × {result.n_latents:,} latents, k={result.k}, λ={result.lam} ({checked}) → {result.store}",
                  markup=False)
    emit(result.store, result.summary(), out.json)
