"""Run a causal LM over text and store one layer's MLP input (and output) in a zarr store.

MODEL is a Hugging Face Hub id (gpt2, EleutherAI/pythia-70m-deduped, ...), a local
save_pretrained() directory, or jsaectl-demo, the bundled English/German model (the
default, with the bundled corpus as the default --dataset: no network needed).

Prints the store's URL on stdout. Re-running the same command resumes an interrupted
harvest; n processes with --shard 0/n ... n-1/n fill one store together.
"""

from __future__ import annotations

from jsaectl.cli._common import RichReporter, emit, err
from jsaectl.cli._generate import from_config
from jsaectl.configs import HarvestConfig
from jsaectl.options import Outputs


@from_config(HarvestConfig)
def harvest_cmd(cfg: HarvestConfig, out: Outputs) -> None:
    from jsaectl.harvest import harvest

    result = harvest(cfg, RichReporter())
    if not result.already_complete:
        err.print(f"[green]harvested[/] {result.n_tokens:,} tokens × d_model {result.d_model} "
                  f"at {result.tokens_per_second:,.0f} tokens/s → {result.store}")
    emit(result.store, result.summary(), out.json)
