"""Run a causal LM over text and store one layer's MLP input (and output) in a zarr store.

MODEL is a Hugging Face Hub id (gpt2, EleutherAI/pythia-70m-deduped, ...), a local
save_pretrained() directory, or jsaectl-demo, the bundled English/German model (the
default, with the bundled corpus as the default --dataset: no network needed).

Prints the store's URL on stdout. Re-running the same command resumes an interrupted
harvest; n processes with --shard 0/n ... n-1/n fill one store together.
"""

from __future__ import annotations

from typing import Annotated

import typer

from jsaectl.cli._common import ConfigOpt, DeviceOpt, JsonOpt, OutOpt, OverwriteOpt, RichReporter, emit, err
from jsaectl.errors import ConfigError
from jsaectl.units import parse_count


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), not {text!r}") from None
    return i, n


def harvest_cmd(
    model: Annotated[str, typer.Argument(help="Hub id, local directory, or jsaectl-demo (bundled).", show_default=True)] = "jsaectl-demo",
    layer: Annotated[int | None, typer.Option("--layer", "-l", help="Layer whose MLP is harvested (0-based). Default: 2 for jsaectl-demo; required otherwise.", show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Hub dataset id, a .txt/.jsonl/.parquet file or folder of them (.gz too), or - for text on stdin. Default: the bundled corpus.", show_default=False)] = None,
    tokens: Annotated[str, typer.Option("--tokens", "-n", help="Tokens to harvest: 2000000, 2M, 500k (rounded up to whole contexts).")] = "1M",
    context_size: Annotated[int, typer.Option("--context-size", "-T", help="Tokens per context, BOS included.")] = 256,
    bos: Annotated[bool, typer.Option("--bos/--no-bos", help="Start every context with the tokenizer's BOS token (when it has one).")] = True,
    split: Annotated[str, typer.Option("--split", help="Split of a Hub dataset.")] = "train",
    subset: Annotated[str | None, typer.Option("--subset", help="Configuration of a Hub dataset (e.g. en for allenai/c4).", show_default=False)] = None,
    text_column: Annotated[str, typer.Option("--text-column", help="Column with the text in .jsonl/.parquet files and Hub datasets.")] = "text",
    dtype: Annotated[str, typer.Option("--dtype", help="Storage precision of x (and y): float16, bfloat16 (stored as its uint16 bits) or float32.")] = "float16",
    with_output: Annotated[bool, typer.Option("--with-output", help="Also store the MLP output y (otherwise train recomputes it from the stored MLP weights).")] = False,
    compression: Annotated[str, typer.Option("--compression", help="How x (and y) are stored: zstd or none. Every chunk carries a crc32c checksum either way.")] = "zstd",
    allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite", help="Store NaN, inf or float16 overflows as 0 and count them in the store's attrs, instead of stopping with an error naming their rows.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Contexts per forward pass.")] = 16,
    device: DeviceOpt = "auto",
    model_dtype: Annotated[str, typer.Option("--model-dtype", help="Precision the model runs in: float32, bfloat16 or float16.")] = "float32",
    revision: Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit) of the model.", show_default=False)] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow models that ship their own Python code. Off unless given.")] = False,
    random_init: Annotated[bool, typer.Option("--random-init", help="Re-initialise the model's weights at random first (the trained-vs-random comparison); see --init-scheme.")] = False,
    init_scheme: Annotated[str, typer.Option("--init-scheme", help="How --random-init draws: tl (the paper's reference code, TransformerLens init_weights: N(0, 0.8/√d_model) weight matrices, trained biases and norms) or hf (the architecture's own initialiser).")] = "tl",
    seed: Annotated[int, typer.Option("--seed", help="Seed for --random-init.")] = 0,
    shard: Annotated[str, typer.Option("--shard", help="i/n: fill every n-th chunk starting at i, so n processes fill one store.")] = "0/1",
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    from jsaectl.harvest import HarvestConfig, harvest

    cfg = HarvestConfig(
        model=model, layer=layer, revision=revision, trust_remote_code=trust_remote_code, random_init=random_init, init_scheme=init_scheme,
        seed=seed, model_dtype=model_dtype, dataset=dataset, split=split, subset=subset, text_column=text_column,
        tokens=parse_count(tokens, "--tokens"), context_size=context_size, bos=bos, dtype=dtype,
        with_output=with_output, compression=compression, allow_nonfinite=allow_nonfinite, batch_size=batch_size, device=device, out=out, overwrite=overwrite, shard=_shard(shard),
    )
    result = harvest(cfg, RichReporter())
    if not result.already_complete:
        err.print(f"[green]harvested[/] {result.n_tokens:,} tokens × d_model {result.d_model} "
                  f"at {result.tokens_per_second:,.0f} tokens/s → {result.store}")
    emit(result.store, result.summary(), json_out)
