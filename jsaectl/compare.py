"""Stage: the price and the payoff of Jacobian sparsity, run against run.

For each JSAE (a jacobian store stands for the JSAE it was made from), on the same tokens:

* reconstruction: explained variance and FVU of each SAE, L0, dead latents (never active in
  the evaluated tokens);
* Jacobian sparsity: mean count per token of |J| above each threshold (and over k²), mean |J|,
  and the scale-free count of entries holding 90% of Σ|J|;
* splicing each SAE into the language model, alone: the input SAE's x̂
  replaces the MLP input, or the output SAE's ŷ the MLP output. CE-loss score
  ``(CE_zero − CE_sae) / (CE_zero − CE_clean)`` with CE_zero the loss with the MLP output
  zeroed; KL score ``(KL_zero − KL_sae) / KL_zero`` with KL from the clean next-token
  distribution. The model is the one named in the activations store's provenance (the same
  random re-initialisation for --random-init stores). SAEs are spliced, and the MLP output
  zeroed for the baseline, at every position but position 0 when the contexts start with BOS
  (which compare, like training by default, leaves out), so that the score's numerator and
  denominator change the same positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from jsaectl import store as st
from jsaectl.configs import CompareConfig
from jsaectl.errors import ConfigError, ModelError
from jsaectl import sparsity, tracking
from jsaectl.trained import LoadedJSAE, describe_site, site_of
from jsaectl.progress import SILENT, Reporter


# Below this (nats per token) zero-ablating the MLP barely matters, and the CE score, a ratio
# over that difference, is noise (a randomly initialised model's MLP can even hurt the loss).
MIN_CE_GAP = 1e-3


@dataclass
class RunMetrics:
    store: str
    name: str
    values: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def resolve_runs(stores: tuple[str, ...]) -> list[str]:
    """jsae store URLs, in order, each once (a jacobian store counts as its JSAE)."""
    if not stores:
        raise ConfigError("no stores to compare", hint="give jsae (or jacobian) stores as arguments or one per line on stdin")
    out: list[str] = []
    for url in stores:
        s = st.open_store(url, ("jsae", "jacobian"))
        jsae = s.url if s.kind == "jsae" else st.resolve_url(s.meta["jsae_store"])
        if jsae not in out:
            out.append(jsae)
    return out


def _name(meta: dict[str, Any]) -> str:
    model = meta.get("model") or {}
    base = str(model.get("name", "?")).rstrip("/").split("/")[-1]
    rand = " (random init)" if model.get("random_init") else ""
    return f"{base}{rand} L{meta.get('layer')} λ={meta.get('lam'):g}"


def _check_compatible(runs: list[LoadedJSAE]) -> list[str]:
    notes = []
    ks = {r.k for r in runs}
    if len(ks) > 1:
        notes.append(f"the runs have different k ({', '.join(map(str, sorted(ks)))}): compare the Jacobian sparsity "
                     "as a fraction of k², not as counts")
    # (--acts of another site was refused when the runs were opened)
    sites = {site_of(r.store.meta): describe_site(r.store.meta) for r in runs}
    if len(sites) > 1:
        notes.append("the runs come from different sites (" + "; ".join(sorted(sites.values())) + "): their CE/KL "
                     "scores and Jacobian sparsity are each relative to their own MLP, not to one another's")
    return notes


@torch.no_grad()
def _reconstruction(run: LoadedJSAE, cfg: CompareConfig) -> dict[str, float]:
    sums: dict[str, float] = {}
    fired = {"in": torch.zeros(run.n_latents, dtype=torch.bool), "out": torch.zeros(run.n_latents, dtype=torch.bool)}
    summary = sparsity.Summary(run.k, cfg.thresholds, cfg.normalised_thresholds, run.device)
    n = 0
    for batch in run.batches(cfg.tokens, cfg.batch_size):
        for side, v, sae, code in (("in", batch.x, run.sae("in"), batch.code_in), ("out", batch.y, run.sae("out"), batch.code_out)):
            v_hat = sae.decode(code.values, code.indices)
            err = ((v - v_hat) ** 2).sum(-1)
            var = ((v - v.mean(0)) ** 2).sum(-1)
            sums[f"ev_{side}"] = sums.get(f"ev_{side}", 0.0) + float((1 - err / var.clamp_min(1e-12)).sum())
            sums[f"err_{side}"] = sums.get(f"err_{side}", 0.0) + float(err.sum())
            sums[f"var_{side}"] = sums.get(f"var_{side}", 0.0) + float(var.sum())
            sums[f"l0_{side}"] = sums.get(f"l0_{side}", 0.0) + float((code.values > 0).sum())
            fired[side][code.indices[code.values > 0].cpu()] = True
        summary.add(batch.J)
        n += len(batch.rows)
    out = {}
    for side in ("in", "out"):
        out[f"ev_{side}"] = sums[f"ev_{side}"] / n
        out[f"fvu_{side}"] = sums[f"err_{side}"] / sums[f"var_{side}"]
        out[f"l0_{side}"] = sums[f"l0_{side}"] / n
        out[f"dead_{side}"] = 1 - float(fired[side].float().mean())
    return {**out, **sparsity_values(summary.result()), "tokens": n}


def sparsity_values(result: dict[str, Any]) -> dict[str, float]:
    """A sparsity summary (``sparsity.Summary.result``) as compare's flat keys: ``j>0.01`` and
    ``j>0.01_frac`` (|J| above a threshold, per token and over k²), ``j>1rms`` (above a
    multiple of the token's rms |J|), ``j_mass90``, ``j_gini``, ``mean_abs_j``."""
    out: dict[str, float] = {}
    for group, suffix in (("above", ""), ("above_rms", "rms")):
        for t, row in result[group].items():
            out[f"j>{t}{suffix}"], out[f"j>{t}{suffix}_frac"] = row["mean_count"], row["fraction"]
    out["j_mass90"], out["j_mass90_frac"] = result["mass90"]["mean_count"], result["mass90"]["fraction"]
    out["j_gini"], out["mean_abs_j"] = result["gini"], result["mean_abs"]
    return out


class _Splicer:
    """Runs the language model with layer L's MLP input or output replaced."""

    def __init__(self, run: LoadedJSAE, loaded: Any, site: Any) -> None:
        self.run, self.loaded, self.site = run, loaded, site
        self.mode = "clean"
        self._handles = [site.input_module.register_forward_pre_hook(self._pre, with_kwargs=True),
                         site.output_module.register_forward_hook(self._post)]

    def _keep(self, shape: torch.Size, where: str) -> torch.Tensor:
        """Positions the SAE replaces: all but a BOS position 0 (left out, as in training), laid
        out as the module sees them (``[B, T, d]``, or ``[B·T, d]`` as OPT flattens them)."""
        B, T = self._ids_shape
        if math.prod(shape[:-1]) != B * T:
            raise ModelError(f"layer {self.site.layer}'s MLP {where} has shape {tuple(shape)}, not one row per token "
                             f"of the [{B}, {T}] batch", hint="--eval-tokens 0 skips the splice scores; please report this architecture")
        mask = torch.ones(B, T, dtype=torch.bool, device=self.run.device)
        if self.run.acts.skips_bos(self.run.include_bos):
            mask[:, 0] = False
        return mask.reshape(*shape[:-1], 1)

    def _spliced(self, v: torch.Tensor, sae: Any, where: str) -> torch.Tensor:
        """``v`` with every replaced position swapped for the SAE's reconstruction (or for 0
        when ``sae`` is None: the zero-ablation baseline touches the same positions)."""
        keep = self._keep(v.shape, where)
        if sae is None:
            return torch.where(keep, torch.zeros_like(v), v)
        code = sae.encode(v.reshape(-1, v.shape[-1]).float())
        v_hat = sae.decode(code.values, code.indices).reshape(v.shape).to(v.dtype)
        return torch.where(keep, v_hat, v)

    def _pre(self, module: Any, args: tuple, kwargs: dict) -> Any:
        if self.mode != "sae_in":
            return None
        if not (args and isinstance(args[0], torch.Tensor)):  # keywords only: the splice would silently do nothing
            raise ModelError(f"layer {self.site.layer}'s MLP input is not its first positional argument; cannot splice the input SAE",
                             hint="--eval-tokens 0 skips the splice scores; please report this architecture")
        return (self._spliced(args[0], self.run.sae("in"), "input"), *args[1:]), kwargs

    def _post(self, module: Any, args: tuple, output: Any) -> Any:
        if self.mode not in ("zero", "sae_out"):
            return None
        y = output[0] if isinstance(output, tuple) else output
        new = self._spliced(y, self.run.sae("out") if self.mode == "sae_out" else None, "output")
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def logits(self, ids: torch.Tensor, mode: str) -> torch.Tensor:
        self.mode, self._ids_shape = mode, tuple(ids.shape)
        try:
            return self.loaded.model(input_ids=ids, use_cache=False).logits.float()
        finally:
            self.mode = "clean"

    def close(self) -> None:
        for h in self._handles:
            h.remove()


@torch.no_grad()
def _splice_scores(run: LoadedJSAE, cfg: CompareConfig, model_cache: dict, reporter: Reporter) -> dict[str, float]:
    from jsaectl.models import load_model, locate_mlp

    prov = run.acts.meta.get("model") or {}
    key = (prov.get("name"), prov.get("revision"), prov.get("random_init"), prov.get("seed"), prov.get("init_scheme"),
           prov.get("dtype"))
    if key not in model_cache:
        reporter.note(f"loading {prov.get('name')}" + (" (random init)" if prov.get("random_init") else "") + " for the CE/KL scores")
        model_cache[key] = load_model(prov["name"], revision=prov.get("revision"), dtype=prov.get("dtype") or "float32",
                                      device=run.device, random_init=bool(prov.get("random_init")), seed=prov.get("seed") or 0,
                                      init_scheme=prov.get("init_scheme") or "hf")  # stores from before the scheme: hf
    loaded = model_cache[key]
    site = locate_mlp(loaded.model, int(run.acts.meta["layer"]))
    stored = run.acts.mlp("cpu")
    if not all(torch.allclose(getattr(site.weights, w), getattr(stored, w), rtol=1e-3, atol=1e-6) for w in ("W_in", "W_out")):
        raise ModelError(f"the model loaded for the CE/KL scores ({prov.get('name')}) has other MLP weights at layer "
                         f"{run.acts.meta['layer']} than the activations store {run.acts.url} recorded",
                         hint="the model changed since the harvest (harvest with a pinned --revision), or pass --eval-tokens 0 to skip the splice scores")
    splicer = _Splicer(run, loaded, site)
    T = run.acts.context_size
    n_ctx = max(1, min(cfg.eval_tokens // T, run.acts.n_tokens // T))
    ce = {m: 0.0 for m in ("clean", "zero", "sae_in", "sae_out")}
    kl = {m: 0.0 for m in ("zero", "sae_in", "sae_out")}
    count = 0
    per_batch = max(1, cfg.batch_size // T)
    try:
        for c0 in range(0, n_ctx, per_batch):
            c1 = min(n_ctx, c0 + per_batch)
            ids = torch.from_numpy(run.acts.tokens(c0 * T, c1 * T).reshape(c1 - c0, T).astype(np.int64)).to(run.device)
            target = ids[:, 1:].reshape(-1)
            clean_logp = F.log_softmax(splicer.logits(ids, "clean")[:, :-1].reshape(-1, loaded.model.config.vocab_size), -1)
            ce["clean"] += float(F.nll_loss(clean_logp, target, reduction="sum"))
            for mode in ("zero", "sae_in", "sae_out"):
                logp = F.log_softmax(splicer.logits(ids, mode)[:, :-1].reshape(-1, clean_logp.shape[-1]), -1)
                ce[mode] += float(F.nll_loss(logp, target, reduction="sum"))
                kl[mode] += float(F.kl_div(logp, clean_logp, log_target=True, reduction="sum"))
            count += target.numel()
    finally:
        splicer.close()
    ce = {m: v / count for m, v in ce.items()}
    kl = {m: v / count for m, v in kl.items()}
    out = {"ce_clean": ce["clean"], "ce_zero": ce["zero"], "eval_tokens": count}
    for side in ("in", "out"):
        out[f"ce_{side}"] = ce[f"sae_{side}"]
        gap = ce["zero"] - ce["clean"]
        out[f"ce_score_{side}"] = (ce["zero"] - ce[f"sae_{side}"]) / gap if gap > MIN_CE_GAP else math.nan
        out[f"kl_{side}"] = kl[f"sae_{side}"]
        out[f"kl_score_{side}"] = (kl["zero"] - kl[f"sae_{side}"]) / kl["zero"] if kl["zero"] > 0 else math.nan
    return out


def compare(cfg: CompareConfig, reporter: Reporter = SILENT) -> tuple[list[RunMetrics], list[str]]:
    """Metrics per run (in the order given) and notes for the reader."""
    from jsaectl.device import pick_device

    if cfg.wandb:
        tracking.require()  # a missing package is said before the minutes of work
    device = pick_device(cfg.device)
    urls = resolve_runs(cfg.stores)
    runs = [LoadedJSAE.open(u, acts=cfg.acts, device=device) for u in urls]
    notes = _check_compatible(runs)
    if cfg.acts is None:
        notes.append("evaluated on each run's own training activations (in-sample); pass --acts for held-out text")
    model_cache: dict = {}
    results = []
    reporter.start("compare", len(runs), "runs")
    for url, run in zip(urls, runs):
        values = _reconstruction(run, cfg)
        if cfg.eval_tokens > 0:
            values |= _splice_scores(run, cfg, model_cache, reporter)
            if values["ce_zero"] - values["ce_clean"] <= MIN_CE_GAP:
                notes.append(f"{_name(run.store.meta)}: zeroing the MLP output does not raise the loss ({values['ce_clean']:.3f} → "
                             f"{values['ce_zero']:.3f} nats), so its CE-loss scores are undefined (shown as –)")
        meta = run.store.meta
        info = {"lam": meta.get("lam"), "k": run.k, "n_latents": run.n_latents, "layer": meta.get("layer"),
                "model": (meta.get("model") or {}).get("name"), "random_init": bool((meta.get("model") or {}).get("random_init")),
                "acts": run.acts.url, "wandb": meta.get("wandb")}
        results.append(RunMetrics(url, _name(meta), values, info))
        reporter.advance(1)
    reporter.finish()
    if cfg.wandb:
        tracking.log_compare(cfg.wandb, results, [run.store for run in runs], reporter)
    return results, notes
