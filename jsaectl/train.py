"""Stage 2: train a JSAE (a TopK SAE pair with a Jacobian L1 penalty) on an activations store.

Loss per batch (docs/method.md):

    L = MSE(x, x̂) + MSE(y, ŷ) + λ_t · mean_b (1/k²) Σ_ij |J_b[i, j]|   (+ α · AuxK, optional)

MSE is the mean over elements; λ_t ramps linearly from 0 over the first ``lam_warmup`` of
the steps; the learning rate warms up over the first ``lr_warmup`` of the steps and decays
linearly to 0 over the last ``lr_decay``. ``lam=0`` trains the plain SAE pair through the
same code (the Jacobian is then computed without gradient, at logging steps only).

Runs under ``torchrun`` as DistributedDataParallel: each process reads its own lanes of the
data (see stream.py) and rank 0 writes the store.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jsaectl import store as st
from jsaectl.acts import Activations
from jsaectl.configs import TrainConfig
from jsaectl.errors import ConfigError, StoreError, TrainingError
from jsaectl.options import identity, runtime
from jsaectl import sparsity, tracking
from jsaectl.jsae import JSAE, JSAEOutput
from jsaectl.trained import save_jsae
from jsaectl.progress import SILENT, Reporter
from jsaectl.sae import TopKSAE
from jsaectl.stream import BatchStream
from jsaectl.units import format_count



@dataclass
class TrainResult:
    store: str
    tokens_per_second: float
    metrics: dict[str, float]
    steps: int

    def summary(self) -> dict[str, Any]:
        return {"store": self.store, "tokens_per_second": round(self.tokens_per_second, 1), "steps": self.steps,
                **{k: round(v, 6) for k, v in self.metrics.items()}}


# ---------------------------------------------------------------------------------------------
# Schedules


def lr_at(cfg: TrainConfig, step: int) -> float:
    n = cfg.n_steps
    warm, decay = cfg.lr_warmup * n, cfg.lr_decay * n
    if step < warm:  # capped: (step + 1) / warm passes 1 on the last warm-up step when warm is fractional
        return cfg.lr * min(1.0, (step + 1) / warm)
    if step >= n - decay and decay > 0:
        return cfg.lr * max(0.0, (n - step) / decay)
    return cfg.lr


def lam_at(cfg: TrainConfig, step: int) -> float:
    return lam_schedule(cfg.lam, cfg.lam_warmup * cfg.n_steps, step)


def lam_schedule(lam: float, warm_steps: float, step: float) -> float:
    """λ after ``step`` steps: ramped linearly from 0 over the first ``warm_steps``."""
    return lam * (min(1.0, step / warm_steps) if warm_steps > 0 else 1.0)


# ---------------------------------------------------------------------------------------------
# The model


class _Objective(nn.Module):
    """What DDP wraps: one training forward of the JSAE, plus the AuxK terms when asked for."""

    def __init__(self, jsae: JSAE) -> None:
        super().__init__()
        self.jsae = jsae

    def forward(self, x: torch.Tensor, y: torch.Tensor | None, jacobian: str,
                aux: tuple[torch.Tensor, torch.Tensor, int] | None) -> tuple[JSAEOutput, torch.Tensor | None]:
        out = self.jsae(x, y, jacobian=jacobian)
        if aux is None:
            return out, None
        return out, (_auxk_loss(self.jsae.sae_in, x, out.x_hat, aux[0], aux[2])
                     + _auxk_loss(self.jsae.sae_out, out.y, out.y_hat, aux[1], aux[2]))


def _auxk_loss(sae: TopKSAE, v: torch.Tensor, v_hat: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """Gao et al.'s AuxK: reconstruct the residual with the top ``k_aux`` dead latents."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return v.new_zeros(())
    pre = v @ sae.W_enc[:, dead] + sae.b_enc[dead]  # [B, n_dead]
    values, idx = pre.topk(min(k_aux, n_dead), dim=1, sorted=False)
    dead_ids = dead.nonzero().squeeze(1)
    residual = (v - v_hat).detach()
    recon = F.embedding_bag(dead_ids[idx], sae.W_dec, per_sample_weights=F.relu(values), mode="sum")
    return ((recon - residual) ** 2).sum() / ((residual - residual.mean(0)) ** 2).sum().clamp_min(1e-12)


def explained_variance(v: torch.Tensor, v_hat: torch.Tensor) -> tuple[float, float]:
    """(explained variance per token averaged, as the paper's code reports it; FVU over the batch)."""
    err = ((v - v_hat) ** 2).sum(-1)
    var = ((v - v.mean(0)) ** 2).sum(-1)
    ev = (1 - err / var.clamp_min(1e-12)).mean().item()
    return ev, (err.sum() / var.sum().clamp_min(1e-12)).item()


# ---------------------------------------------------------------------------------------------
# Distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_dist(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    if not tdist.is_initialized():
        cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
        tdist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _device(cfg: TrainConfig, dist: Dist) -> torch.device:
    from jsaectl.device import pick_device

    device = pick_device(cfg.device)
    if device.type == "cuda" and dist.world > 1 and device.index is None:
        device = torch.device("cuda", dist.local_rank)
    return device


# ---------------------------------------------------------------------------------------------
# Store layout: results, history and checkpoint


HISTORY_KEYS = ("step", "tokens", "lr", "lam", "loss", "mse_in", "mse_out", "jac_l1", "ev_in", "ev_out", "fvu_in",
                "fvu_out", "l0_in", "l0_out", "dead_in", "dead_out", "j_count", "auxk", "data_wait")


def default_out(cfg: TrainConfig) -> str:
    return st.default_url(f"jsae-{st.stem(cfg.acts, 'acts')}-k{cfg.k}-lam{cfg.lam:g}", identity(cfg))


def _append_history(store: st.Store, rows: list[dict[str, float]]) -> None:
    g = store.group.require_group("history")
    for key in HISTORY_KEYS:
        if key not in g:
            st.create_array(g, key, shape=(0,), chunks=(4096,), dtype="float64", dimension_names=("record",), overwrite=False)
        if rows:
            g[key].append(np.array([r.get(key, np.nan) for r in rows], dtype=np.float64))


def _truncate_history(store: st.Store, upto_step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop what they logged before."""
    g = store.group.require_group("history")
    if "step" not in g:
        return
    n = int((g["step"][...] <= upto_step).sum())
    for key in HISTORY_KEYS:
        if key in g and g[key].shape[0] > n:
            g[key].resize((n,))


def _save_checkpoint(store: st.Store, jsae: JSAE, opt: torch.optim.Optimizer, state: dict[str, Any],
                     last_fired: dict[str, torch.Tensor]) -> None:
    """Write into the slot not in use, then point to it: a kill mid-write leaves the previous
    checkpoint intact."""
    ckpt = store.group.require_group("checkpoint")
    current = ckpt.attrs.get("slot")
    slot = ckpt.require_group(f"slot_{1 - current if current in (0, 1) else 0}")
    tensors = {f"model/{k}": v for k, v in jsae.state_dict().items()}
    opt_state = opt.state_dict()
    for pid, pstate in opt_state["state"].items():
        for name, value in pstate.items():
            tensors[f"opt/{pid}/{name}"] = value
    tensors |= {f"last_fired/{k}": v for k, v in last_fired.items()}
    tensors["rng"] = torch.get_rng_state()
    for name, tensor in tensors.items():
        st.write_array(slot, name, tensor.detach().cpu().numpy())
    slot.attrs["state"] = {**state, "param_groups": opt_state["param_groups"]}
    ckpt.attrs["slot"] = int(slot.basename[-1])  # last: only now does the new checkpoint count
    ckpt.attrs["step"] = state["step"]


def _load_checkpoint(store: st.Store, jsae: JSAE, opt: torch.optim.Optimizer,
                     last_fired: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    if "checkpoint" not in store.group or store.group["checkpoint"].attrs.get("slot") not in (0, 1):
        return None
    slot = store.group["checkpoint"][f"slot_{store.group['checkpoint'].attrs['slot']}"]
    device = next(jsae.parameters()).device
    load = lambda name: torch.from_numpy(np.asarray(slot[name][...])).to(device)  # noqa: E731
    jsae.load_state_dict({k: load(f"model/{k}") for k in jsae.state_dict()})
    state = dict(slot.attrs["state"])
    opt_state = {"state": {}, "param_groups": state.pop("param_groups")}
    for pid in range(len(list(jsae.parameters()))):
        names = [n for n in ("step", "exp_avg", "exp_avg_sq") if f"opt/{pid}/{n}" in slot]
        if names:
            opt_state["state"][pid] = {n: load(f"opt/{pid}/{n}") for n in names}
            opt_state["state"][pid]["step"] = opt_state["state"][pid]["step"].cpu()
    opt.load_state_dict(opt_state)
    for key in last_fired:
        last_fired[key].copy_(load(f"last_fired/{key}"))
    torch.set_rng_state(torch.from_numpy(np.asarray(slot["rng"][...])))
    return state


# ---------------------------------------------------------------------------------------------
# Training


class _Trainer:
    def __init__(self, cfg: TrainConfig, acts: Activations, dist: Dist, device: torch.device) -> None:
        self.cfg, self.acts, self.dist, self.device = cfg, acts, dist, device
        self.jsae = JSAE.init(acts.d_model, cfg.latents, cfg.k, acts.mlp(device), seed=cfg.seed, at=cfg.jacobian_at,
                              device=device)
        self.model: nn.Module = _Objective(self.jsae)
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        # fused: one kernel over all parameters instead of a dozen passes (CPU and CUDA)
        self.opt = torch.optim.Adam(self.jsae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), fused=device.type in ("cpu", "cuda"))
        n = cfg.latents
        self.last_fired = {"in": torch.full((n,), -1, dtype=torch.int64, device=device),
                           "out": torch.full((n,), -1, dtype=torch.int64, device=device)}
        self._nonfinite: torch.Tensor | None = None  # GPU: a pending "the loss was not finite" flag
        self._flag_step = 0
        use_autocast = cfg.autocast if cfg.autocast is not None else device.type == "cuda"
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast)

    def dead(self, tokens_seen: int) -> dict[str, torch.Tensor]:
        window = self.cfg.dead_tokens
        return {k: (v < 0) | (tokens_seen - v > window) for k, v in self.last_fired.items()}

    def step(self, step: int, x: torch.Tensor, y_stored: torch.Tensor | None, tokens_seen: int, log: bool) -> dict[str, float] | None:
        cfg = self.cfg
        lam = lam_at(cfg, step)
        jacobian = "grad" if lam > 0 else ("value" if log else "off")  # λ = 0: J for the logged metrics only
        aux = None
        if cfg.auxk > 0:
            dead = self.dead(tokens_seen)
            aux = (dead["in"], dead["out"], cfg.auxk_k)
        with self.autocast:
            out, auxk = self.model(x, y_stored, jacobian, aux)
        loss = F.mse_loss(out.x_hat, x) + F.mse_loss(out.y_hat, out.y)
        if jacobian == "grad":
            loss = loss + lam * out.jac_mean
        if auxk is not None:
            loss = loss + cfg.auxk * auxk
        self._check_loss(step, loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.jsae.parameters(), cfg.grad_clip)
        self.opt.step()
        self.jsae.sae_in.normalize_decoder()
        self.jsae.sae_out.normalize_decoder()
        self._mark_fired(out, tokens_seen + cfg.batch_size)
        if not log:
            return None
        self._check_flag(step + 1)
        return self._metrics(step, lam, loss, out, auxk, x, tokens_seen + cfg.batch_size)

    def _check_loss(self, step: int, loss: torch.Tensor) -> None:
        """A non-finite loss ends the run (every weight would be NaN a step later). On the CPU
        it is checked every step; on a GPU the flag is kept on the device and read at each
        logging step and checkpoint, so that no step waits for the GPU just to check."""
        bad = ~torch.isfinite(loss.detach())
        if self.device.type != "cuda":
            if bad.item():
                raise self._diverged(f"the loss is {loss.item()} at step {step + 1}")
            return
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        self._flag_step = self._flag_step or step + 1

    def _check_flag(self, step: int) -> None:
        if self._nonfinite is not None and self._nonfinite.item():
            raise self._diverged(f"the loss became non-finite between step {self._flag_step} and step {step}")
        self._nonfinite, self._flag_step = None, 0

    def check_weights(self, step: int) -> None:
        """Before a checkpoint or the end: refuse to write a loss or weights that are not finite."""
        self._check_flag(step)
        for name, p in self.jsae.named_parameters():
            if not torch.isfinite(p).all():
                raise self._diverged(f"{name} holds non-finite values at step {step}")

    def _diverged(self, what: str) -> TrainingError:
        return TrainingError(f"training diverged: {what}; the store keeps its last good checkpoint and stays incomplete",
                             hint="lower --lr or --lam (then --overwrite), or check the activations with `jsaectl verify`; "
                             "a run whose config is unchanged continues with --resume")

    def _mark_fired(self, out: JSAEOutput, tokens_seen: int) -> None:
        for key, code in (("in", out.code_in), ("out", out.code_out)):
            fired = torch.zeros(self.cfg.latents, dtype=torch.int32, device=self.device)
            fired.index_fill_(0, code.indices[code.pre_values > 0], 1)
            if self.dist.world > 1:
                torch.distributed.all_reduce(fired, op=torch.distributed.ReduceOp.MAX)
            self.last_fired[key][fired.bool()] = tokens_seen

    @torch.no_grad()
    def _metrics(self, step: int, lam: float, loss: torch.Tensor, out: JSAEOutput, auxk: torch.Tensor | None,
                 x: torch.Tensor, tokens_seen: int) -> dict[str, float]:
        ev_in, fvu_in = explained_variance(x, out.x_hat.float())
        ev_out, fvu_out = explained_variance(out.y, out.y_hat.float())
        values = {
            "loss": loss.item(), "mse_in": F.mse_loss(out.x_hat, x).item(), "mse_out": F.mse_loss(out.y_hat, out.y).item(),
            "ev_in": ev_in, "ev_out": ev_out, "fvu_in": fvu_in, "fvu_out": fvu_out,
            "l0_in": (out.code_in.pre_values > 0).sum(1).float().mean().item(),
            "l0_out": (out.code_out.pre_values > 0).sum(1).float().mean().item(),
            "jac_l1": out.jac_mean.item() if out.J is not None else float("nan"),
            "j_count": (out.J.abs() > sparsity.HEADLINE).sum((1, 2)).float().mean().item() if out.J is not None else float("nan"),
            "auxk": auxk.item() if auxk is not None else 0.0,
        }
        if self.dist.world > 1:  # every process logs the mean over all of them
            keys = sorted(values)
            t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            values = dict(zip(keys, (t / self.dist.world).tolist()))
        dead = self.dead(tokens_seen)
        return {"step": step + 1, "tokens": tokens_seen, "lr": lr_at(self.cfg, step), "lam": lam, **values,
                "dead_in": dead["in"].float().mean().item(), "dead_out": dead["out"].float().mean().item()}


def resume_config(out: str, overrides: dict[str, Any]) -> TrainConfig:
    """The config of the run in ``out``, with runtime options (and any others) overridden."""
    meta = st.open_store(out, "jsae", require_complete=False).meta
    known = {f.name for f in fields(TrainConfig)} - {"out", "overwrite", "resume"}
    saved = {**meta.get("run_options", {}), **meta["config"], **overrides}
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}  # JSON keeps a tuple as a list
    return TrainConfig(**{k: v for k, v in saved.items() if k in known}, out=out, resume=True)


def _check_output(cfg: TrainConfig, url: str, acts_url: str) -> dict[str, Any] | None:
    """What is at the output: None (a new run), or the metadata of a run to resume or that is
    complete. Read-only, so every process of a distributed run can ask."""
    existing = st.check_writable(url, "jsae", identity(cfg), overwrite=cfg.overwrite, reads=[acts_url])
    if existing is not None and not existing.get("complete") and not cfg.resume:
        step = existing.get("checkpoint_step")
        raise StoreError(f"{url} holds an interrupted run of this config" + (f" (checkpoint at step {step})" if step else ""),
                         hint="pass --resume to continue it, or --overwrite to start again")
    if existing is None and cfg.resume:
        raise StoreError(f"--resume: there is no run of this config to resume at {url}", hint="drop --resume to start a new run")
    return existing


def _new_store_meta(cfg: TrainConfig, acts: Activations) -> dict[str, Any]:
    return {"acts_store": acts.url, "d_model": acts.d_model, "d_mlp": int(acts.meta["d_mlp"]), "n_latents": cfg.latents,
            "k": cfg.k, "lam": cfg.lam, "n_steps": cfg.n_steps, "model": acts.meta.get("model"),
            "layer": acts.meta.get("layer"), "mlp": acts.meta.get("mlp"), "context_size": acts.context_size,
            "data": acts.meta.get("data"),
            "run_options": {k: v for k, v in runtime(cfg).items() if k not in ("out", "overwrite", "resume")}}


def train(cfg: TrainConfig, reporter: Reporter = SILENT) -> TrainResult:
    if cfg.wandb:
        tracking.require()  # a missing package is said before anything is created
    acts = Activations.open(cfg.acts)
    dist = init_dist(cfg.device)
    device = _device(cfg, dist)
    acts.compute_on(device)  # a lazy store's model, loaded and checked before anything is written
    cfg = cfg.resolved(acts.d_model, acts.n_kept(acts.n_tokens, cfg.include_bos), dist.world)
    if acts.n_chunks < cfg.data_lanes:
        raise ConfigError(f"the activations store has {acts.n_chunks} chunks, fewer than {cfg.data_lanes} data lanes",
                          hint="harvest more tokens, or use fewer processes")
    url = st.resolve_url(cfg.out or default_out(cfg))
    existing = _check_output(cfg, url, acts.url)
    if existing is not None and existing.get("complete"):
        reporter.note(f"{url} is already trained; nothing to do")
        return TrainResult(url, existing.get("tokens_per_second", 0.0), existing.get("final_metrics", {}),
                           existing.get("n_steps", 0))
    _barrier(dist)  # every process has looked before rank 0 creates anything
    writing = st.writing(url, "jsae", identity(cfg), overwrite=cfg.overwrite, reads=[acts.url]) if dist.main \
        else contextlib.nullcontext((None, False))
    with writing as (store, _):
        if store is not None and existing is None:
            store.update_meta(**_new_store_meta(cfg, acts))
            _append_history(store, [])
        with tracking.training_run(cfg, store, reporter) as tracker:  # rank 0 only: the others have no store
            _barrier(dist)
            result = _run(cfg, acts, dist, device, url, store, existing is not None, reporter, tracker)
            if tracker is not None:
                tracker.summary(tracking.final_summary(result.metrics, result.tokens_per_second, result.steps, cfg.latents))
            return result


def _run(cfg: TrainConfig, acts: Activations, dist: Dist, device: torch.device, url: str, store: st.Store | None,
         resuming: bool, reporter: Reporter, tracker: tracking.Tracker | None) -> TrainResult:
    """Train from the last checkpoint (or the start) to the end; rank 0 writes ``store``."""
    trainer = _Trainer(cfg, acts, dist, device)
    start = 0
    if resuming:
        state = _load_checkpoint(store or st.open_store(url, "jsae", require_complete=False), trainer.jsae, trainer.opt,
                                 trainer.last_fired)
        start = state["step"] if state else 0
        reporter.note(f"resuming {url} at step {start} of {cfg.n_steps}")
        if store is not None:
            _truncate_history(store, start)
            if tracker is not None:
                tracking.replay(tracker, store)  # what a killed process may not have sent
    reporter.note(f"training 2 × {cfg.latents:,} latents, k={cfg.k}, λ={cfg.lam:g} on {format_count(cfg.tokens)} tokens "
                  f"({cfg.n_steps} steps of {cfg.batch_size}) of {acts.url} on {device}"
                  + (f" × {dist.world} processes" if dist.world > 1 else ""))
    stream = BatchStream(acts, batch_size=cfg.batch_size, lanes=cfg.data_lanes, rank=dist.rank, world=dist.world,
                         seed=cfg.seed, buffer_tokens=cfg.buffer_tokens, include_bos=cfg.include_bos, start_batch=start,
                         reader_threads=cfg.reader_threads, pinned=device.type == "cuda")
    reporter.start("train", (cfg.n_steps - start) * cfg.batch_size, "tokens")
    try:
        loop = _loop(cfg, trainer, stream, start, store, dist, reporter, tracker)
    finally:
        stream.close()
        reporter.finish()
    if loop.data_wait > DATA_WAIT_WARN:
        reporter.note(f"note: training waited for data {loop.data_wait:.0%} of the time; raise --reader-threads (now "
                      f"{cfg.reader_threads}) or --buffer-tokens, or read from a store harvested with --compression none "
                      "or on a faster disk")
    trainer.check_weights(cfg.n_steps)
    final = {**_finite({k: v for k, v in loop.last.items() if k not in ("step", "tokens", "lr")}), "data_wait": loop.data_wait}
    if store is not None:
        _append_history(store, loop.pending)
        save_jsae(store, trainer.jsae)
        if "checkpoint" in store.group and not cfg.keep_checkpoint:
            del store.group["checkpoint"]  # optimiser state is 3x the weights; a finished run needs none
        store.mark_complete(checkpoint_step=None, final_metrics=final, tokens_per_second=loop.tokens_per_second)
    _barrier(dist)
    return TrainResult(url, loop.tokens_per_second, final, cfg.n_steps)


# Above this share of wall time spent waiting for batches, training says what to change.
DATA_WAIT_WARN = 0.25


@dataclass
class _LoopResult:
    last: dict[str, float]
    pending: list[dict[str, float]]
    tokens_per_second: float
    data_wait: float
    """Share of the wall time (after the first step) spent waiting for the next batch."""


def _loop(cfg: TrainConfig, trainer: _Trainer, stream: BatchStream, start: int, store: st.Store | None, dist: Dist,
          reporter: Reporter, tracker: tracking.Tracker | None) -> _LoopResult:
    device = trainer.device
    pending: list[dict[str, float]] = []
    last: dict[str, float] = {}
    clock: float | None = None  # starts after the first step, which pays for warm-up allocations
    waited = window_wait = 0.0
    window_start = saved_at = time.perf_counter()
    for step in range(start, cfg.n_steps):
        before = time.perf_counter()
        x, y = next(stream)
        wait = time.perf_counter() - before
        x = x.to(device, non_blocking=True).float()  # on CUDA: pinned, in the stored precision
        y = y.to(device, non_blocking=True).float() if y is not None else None
        log = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.n_steps
        metrics = trainer.step(step, x, y, step * cfg.batch_size, log)
        if clock is None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            clock = time.perf_counter()
        else:
            waited += wait
        window_wait += wait
        if metrics:
            now = time.perf_counter()
            metrics["data_wait"] = window_wait / max(now - window_start, 1e-9)
            window_wait, window_start = 0.0, now
            pending.append(metrics)
            if tracker is not None:  # queued: never waits on W&B
                tracker.log(tracking.metrics(metrics, cfg.latents), step=int(metrics["step"]))
            last = metrics
        shown = {"loss": last["loss"], "fvu_in": last["fvu_in"], "fvu_out": last["fvu_out"], "J>0.01": last["j_count"],
                 "wait": last["data_wait"]} if last else {}
        reporter.advance(cfg.batch_size, **shown)
        done = step + 1
        if done < cfg.n_steps and _checkpoint_due(cfg, done, log, saved_at, dist, device):
            trainer.check_weights(done)  # never checkpoint a diverged run over the last good one
            if store is not None:
                _append_history(store, pending)
                pending = []
                _save_checkpoint(store, trainer.jsae, trainer.opt, {"step": done}, trainer.last_fired)
                store.update_meta(checkpoint_step=done)
            _barrier(dist)
            saved_at = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - clock if clock else 0.0
    timed_steps = cfg.n_steps - start - 1
    tps = timed_steps * cfg.batch_size / elapsed if elapsed > 0 and timed_steps > 0 else 0.0
    return _LoopResult(last, pending, tps, waited / elapsed if elapsed > 0 else 0.0)


def _checkpoint_due(cfg: TrainConfig, done: int, log: bool, saved_at: float, dist: Dist, device: torch.device) -> bool:
    """Every --checkpoint-every steps, and at a logging step once --checkpoint-minutes have passed
    since the last checkpoint. Rank 0's clock decides for every process of a distributed run,
    since all of them write the checkpoint together."""
    if cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
        return True
    if not (cfg.checkpoint_minutes and log):
        return False
    due = time.perf_counter() - saved_at >= 60 * cfg.checkpoint_minutes
    if dist.world > 1:
        flag = torch.tensor([float(due)], device=device)
        torch.distributed.broadcast(flag, src=0)
        due = bool(flag.item())
    return due


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        torch.distributed.barrier()
