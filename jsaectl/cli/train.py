"""Train a JSAE (two TopK SAEs with a Jacobian L1 penalty) on an activations store.

ACTS is the store printed by `jsaectl harvest` (or read from stdin). Prints the URL of the
jsae store it writes. Multi-GPU: torchrun --nproc-per-node N -m jsaectl train ACTS ...

Re-run an interrupted run with --resume (the same options, or just --resume --out STORE).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from jsaectl.cli._common import ConfigOpt, DeviceOpt, JsonOpt, OutOpt, OverwriteOpt, RichReporter, emit, err, store_from_arg
from jsaectl.units import parse_count


def _summary_table(metrics: dict[str, float], k: int, tokens_per_second: float) -> Table:
    table = Table(title="final training metrics (last logged batch)", title_justify="left")
    table.add_column("metric")
    table.add_column("input SAE (x)", justify="right")
    table.add_column("output SAE (y)", justify="right")
    for label, key, fmt in (("explained variance", "ev", "{:.3f}"), ("FVU", "fvu", "{:.3f}"), ("L0", "l0", "{:.1f}"),
                            ("MSE", "mse", "{:.4g}"), ("dead latents", "dead", "{:.1%}")):
        if f"{key}_in" in metrics:
            table.add_row(label, fmt.format(metrics[f"{key}_in"]), fmt.format(metrics[f"{key}_out"]))
    if "j_count" in metrics:
        count = metrics["j_count"]
        table.add_row("|J| > 0.01 per token", f"{count:.1f} of {k * k} ({count / (k * k):.1%})", "")
        table.add_row("mean |J|", f"{metrics['jac_l1']:.4g}", "")
    table.add_row("throughput", f"{tokens_per_second:,.0f} tokens/s", "")
    return table


def train_cmd(
    ctx: typer.Context,
    acts: Annotated[str | None, typer.Argument(help="Activations store (path or URL); read from stdin when missing or -.", show_default=False)] = None,
    expansion: Annotated[int, typer.Option("--expansion", "-e", help="Latents per SAE as a multiple of d_model.")] = 32,
    latents: Annotated[int | None, typer.Option("--latents", help="Latents per SAE (overrides --expansion).", show_default=False)] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Active latents per token in each SAE (TopK).")] = 32,
    lam: Annotated[float | None, typer.Option("--lam", help="Jacobian penalty λ. Default 0.5·k²/d_model, the reference rule of thumb (1.0 for Pythia-70m). 0 trains the plain SAE pair.", show_default=False)] = None,
    lam_warmup: Annotated[float, typer.Option("--lam-warmup", help="Fraction of steps over which λ ramps up from 0.")] = 0.05,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 5e-4,
    lr_warmup: Annotated[float, typer.Option("--lr-warmup", help="Fraction of steps of linear learning-rate warm-up.")] = 0.01,
    lr_decay: Annotated[float, typer.Option("--lr-decay", help="Fraction of steps, at the end, of linear decay to 0.")] = 0.2,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Tokens per step (over all processes).")] = 4096,
    tokens: Annotated[str | None, typer.Option("--tokens", "-n", help="Tokens to train on (2M, 500k). Default: one pass over the store.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initialisation and the data order.")] = 42,
    jacobian_at: Annotated[str, typer.Option("--jacobian-at", help="Where the MLP's slopes are taken: x (the true input, as the reference code) or reconstruction (x̂, as the paper's text).")] = "x",
    auxk: Annotated[float, typer.Option("--auxk", help="Coefficient of the AuxK dead-latent loss; 0 is off (the paper), 1/32 is Gao et al.'s.")] = 0.0,
    auxk_k: Annotated[int | None, typer.Option("--auxk-k", help="Dead latents AuxK uses. Default d_model/2.", show_default=False)] = None,
    dead_tokens: Annotated[str, typer.Option("--dead-tokens", help="A latent that has not fired in this many tokens counts as dead.")] = "1M",
    grad_clip: Annotated[float, typer.Option("--grad-clip", help="Gradient-norm clip (0: none).")] = 1.0,
    buffer_tokens: Annotated[str, typer.Option("--buffer-tokens", help="Shuffle buffer in tokens (memory ≈ this × d_model × 2 bytes).")] = "131072",
    data_lanes: Annotated[int | None, typer.Option("--data-lanes", help="Lanes of the data order. Default: the number of processes; a 1-process run with --data-lanes N sees the batches of an N-process run.", show_default=False)] = None,
    autocast: Annotated[bool | None, typer.Option("--autocast/--no-autocast", help="bfloat16 autocast of the SAE matmuls. Default: on for CUDA only.", show_default=False)] = None,
    include_bos: Annotated[bool, typer.Option("--include-bos", help="Include the BOS token that starts each context (skipped by default: its activations are outliers).")] = False,
    device: DeviceOpt = "auto",
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Steps between checkpoints in the store (0: none).")] = 500,
    log_every: Annotated[int, typer.Option("--log-every", help="Steps between records of history/.")] = 10,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run at --out (its options are taken from the store).")] = False,
    keep_checkpoint: Annotated[bool, typer.Option("--keep-checkpoint", help="Keep the optimiser state in the store when training ends.")] = False,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    from jsaectl.train import TrainConfig, resume_config, train

    values = dict(
        expansion=expansion, latents=latents, k=k, lam=lam, lam_warmup=lam_warmup, lr=lr, lr_warmup=lr_warmup,
        lr_decay=lr_decay, batch_size=batch_size, tokens=parse_count(tokens, "--tokens") if tokens else None, seed=seed,
        jacobian_at=jacobian_at, auxk=auxk, auxk_k=auxk_k, dead_tokens=parse_count(dead_tokens, "--dead-tokens"),
        grad_clip=grad_clip, buffer_tokens=parse_count(buffer_tokens, "--buffer-tokens"), data_lanes=data_lanes,
        autocast=autocast, include_bos=include_bos, device=device, checkpoint_every=checkpoint_every, log_every=log_every, out=out,
        overwrite=overwrite, resume=resume, keep_checkpoint=keep_checkpoint,
    )
    if resume and out and acts is None:
        # `--resume --out STORE`: the run's own options, with only those given here changed.
        given = {name: value for name, value in values.items()
                 if ctx.get_parameter_source(name).name in ("COMMANDLINE", "DEFAULT_MAP") and name not in ("out", "resume")}
        cfg = resume_config(out, given)
    else:
        cfg = TrainConfig(acts=store_from_arg(acts), **values)
    result = train(cfg, RichReporter())
    if result.metrics:
        err.print(_summary_table(result.metrics, cfg.k, result.tokens_per_second))
    emit(result.store, result.summary(), json_out)
