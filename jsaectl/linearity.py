"""The paper's checks that f_s, the map from input to output latents, is mostly linear.

Sweep: for a sampled token and a pair of active latents (input i, output o), move the input
latent's value from 0 to max(5, a + 1) in 100 steps along its decoder direction, re-encode
the MLP's output with the output SAE (TopK included) and classify the curve of output o:
*linear* when a straight line fits it (mean squared residual < 0.01), *JumpReLU-like* when
it is zero on one end and a straight line on the rest, *other* otherwise.

Ablation: remove one unit of each active input latent (x − W_dec_x[i]) and compare every
active output latent's change with the Jacobian's prediction −J[o, i]; they agree when
within 0.1. Also reported: the share of ablations after which the output SAE's active set is
unchanged, and the agreement among those (where only f's curvature can make them disagree).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from jsaectl.trained import LoadedJSAE

SWEEP_POINTS = 100
RESIDUAL = 1e-2
AGREE = 0.1


def _fit_residual(t: np.ndarray, v: np.ndarray) -> float:
    if len(t) < 3:
        return 0.0
    A = np.stack([t, np.ones_like(t)], 1)
    coef, *_ = np.linalg.lstsq(A, v, rcond=None)
    return float(np.mean((A @ coef - v) ** 2))


def classify(t: np.ndarray, v: np.ndarray) -> str:
    if _fit_residual(t, v) < RESIDUAL:
        return "linear"
    zero = v <= 0
    if zero.any() and not zero.all():
        edge = np.flatnonzero(np.diff(zero.astype(np.int8)))
        if len(edge) == 1 and _fit_residual(t[~zero], v[~zero]) < RESIDUAL:  # one flat zero region at one end
            return "jumprelu"
    return "other"


def _encode_value(model: LoadedJSAE, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """The output SAE's value of ``latents [R]`` on f(x) (0 when not in the top k) for MLP inputs ``x [R, d]``."""
    code = model.jsae.encode("out", x)
    hit = code.indices == latents[:, None]
    return (code.values * hit).sum(1)


@torch.no_grad()
def linearity_checks(model: LoadedJSAE, n_tokens: int, n_pairs: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n_tokens = min(n_tokens, model.acts.n_tokens)
    candidates = np.flatnonzero(model.acts.keep(0, n_tokens, model.include_bos))
    rows = np.sort(rng.choice(candidates, size=min(n_pairs, len(candidates)), replace=False))
    x = torch.stack([model.acts.rows("x", int(r), int(r) + 1)[0] for r in rows]).to(model.device)
    # J's evaluation point, as the JSAE decides it: x, or x̂ (then J's rows, jac_out, are the
    # output SAE's code of f(x̂)).
    batch = model.analyse(x, torch.from_numpy(rows).to(model.device))
    base = model.jsae.evaluation_point(batch.x, model.sae("in").decode(batch.code_in.values, batch.code_in.indices))
    W_dec = model.sae("in").W_dec
    # The ablation's "before": the output SAE on f(base), computed as the "after" is (not the
    # stored y), so the difference is the ablation's alone.
    before_code = model.jsae.encode("out", base)
    before = torch.zeros(len(rows), model.n_latents, device=model.device).scatter_(1, before_code.indices, before_code.values)
    before_set = before > 0

    kinds: dict[str, int] = {"linear": 0, "jumprelu": 0, "other": 0}
    agree = total = 0
    kept_agree = kept_total = 0  # the ablations after which the output SAE's active set is the same
    for b in range(len(rows)):
        ins = torch.nonzero(batch.code_in.values[b] > 0).squeeze(1)
        outs = torch.nonzero(batch.jac_out.values[b] > 0).squeeze(1)
        if len(ins) == 0 or len(outs) == 0:
            continue
        j = int(ins[rng.integers(len(ins))])
        i = int(outs[rng.integers(len(outs))])
        lat_in, lat_out = batch.code_in.indices[b, j], batch.jac_out.indices[b, i]
        a = float(batch.code_in.values[b, j])
        t = torch.linspace(0, max(5.0, a + 1), SWEEP_POINTS, device=model.device)
        xs = base[b] + (t - a)[:, None] * W_dec[lat_in]
        v = _encode_value(model, xs, lat_out.expand(SWEEP_POINTS))
        kinds[classify(t.cpu().numpy(), v.cpu().numpy())] += 1
        # Ablation: one unit less of each active input latent, all active outputs compared with J.
        xa = base[b] - W_dec[batch.code_in.indices[b, ins]]  # [n_in, d]
        code = model.jsae.encode("out", xa)
        for r, jj in enumerate(ins.tolist()):
            after = torch.zeros(model.n_latents, device=model.device).scatter_(0, code.indices[r], code.values[r])
            out_ids = batch.jac_out.indices[b, outs]
            delta = after[out_ids] - before[b, out_ids]
            predicted = -batch.J[b, outs, jj]
            ok = int(((delta - predicted).abs() < AGREE).sum())
            agree += ok
            total += len(outs)
            if torch.equal(after > 0, before_set[b]):
                kept_agree += ok
                kept_total += len(outs)
    n = sum(kinds.values())
    return {"pairs": n, **{k: v / n if n else 0.0 for k, v in kinds.items()},
            "ablation_agree": agree / total if total else 0.0, "ablation_checks": total,
            "ablation_topk_kept": kept_total / total if total else 0.0,
            "ablation_agree_topk_kept": kept_agree / kept_total if kept_total else 0.0,
            "residual_threshold": RESIDUAL, "agree_within": AGREE}
