"""The JSAE pair and the closed-form Jacobian between its latents.

For one token with active input latents A_x, active output latents A_y and MLP slopes at
the evaluation point, the Jacobian of ``f_s = e_y ∘ f ∘ d_x`` restricted to active latents is

    plain MLP:  J = W_enc_y[:, A_y]^T · W_out · diag(a) · W_in · W_dec_x[A_x]^T       [k_out, k_in]
    gated MLP:  J = W_enc_y[:, A_y]^T · W_out · (diag(a) W_in + diag(c) W_gate) · W_dec_x[A_x]^T

with ``a = act'(z)`` (plain) or ``a = act(g), c = act'(g) ⊙ z`` (gated), see ``MLPWeights.slopes``.
Rows whose output latent's TopK value is not positive are zero (its ReLU is flat there).

Computed as the reference code does, through two per-step products

    U_T = W_enc_y^T · W_out      [n, m]        V = W_dec_x · W_in^T (and W_dec_x · W_gate^T)   [n, m]

so ``J_b = (U_T[A_y] ⊙ a_b) · V[A_x]^T``, but with a hand-written gradient: autograd's
backward through the per-token gathers of ``U_T`` and ``V`` rows is where the published
method spends most of its time. Here the gradient is ``sign(J)``-weighted batched matmuls
and one accumulating scatter per side, computed chunk by chunk in the same pass as J (the
work is memory-bound: each chunk's gathered rows are reused while still in cache).
"""

from __future__ import annotations

from typing import NamedTuple
from collections.abc import Sequence

import torch

from jsaectl.mlp import MLPWeights
from jsaectl.sae import Encoded, TopKSAE

Tensor = torch.Tensor

# Tokens per chunk of the per-token contraction. Small on purpose: a chunk's gathered blocks
# ([chunk, k, m] each) then stay in the CPU's cache between the forward product and the
# gradient products that reuse them, instead of round-tripping through memory.
CHUNK_BYTES = 8 << 20


def _chunk_tokens(k: int, m: int, budget: int = CHUNK_BYTES) -> int:
    return max(1, budget // (k * m * 4))


class _JacobianL1(torch.autograd.Function):
    """(U_T, V_1..V_t, s_1..s_t, idx_y, idx_x, mask_y) -> (Σ|J|, J).

    ``J_b = Σ_t (U_T[idx_y_b] ⊙ s_t[b]) · V_t[idx_x_b]^T``, rows masked by ``mask_y``.
    Only Σ|J| is differentiable; J comes back detached for metrics.

    The gradient of Σ|J| is sign(J) times the upstream scalar, so it is computed here, in the
    same pass over each chunk as J itself (``eager_grad``), while the chunk's gathered rows are
    still in cache; ``backward`` only scales it. Nothing of size [B, k, m] is ever stored.
    """

    @staticmethod
    def forward(ctx, U_T: Tensor, idx_y: Tensor, idx_x: Tensor, mask_y: Tensor, chunk: int, n_terms: int,
                eager_grad: bool, *vs_and_slopes: Tensor) -> tuple[Tensor, Tensor]:
        Vs, slopes = vs_and_slopes[:n_terms], vs_and_slopes[n_terms:]
        need = ctx.needs_input_grad
        want_U = eager_grad and need[0]
        want_V = [eager_grad and need[7 + i] for i in range(n_terms)]
        want_s = [eager_grad and need[7 + n_terms + i] for i in range(n_terms)]
        dU = torch.zeros_like(U_T) if want_U else None
        dVs = [torch.zeros_like(V) if w else None for V, w in zip(Vs, want_V)]
        dss = [torch.zeros_like(s) if w else None for s, w in zip(slopes, want_s)]
        B, k_out = idx_y.shape
        J = torch.empty(B, k_out, idx_x.shape[1], dtype=U_T.dtype, device=U_T.device)
        for lo in range(0, B, chunk):
            hi = min(B, lo + chunk)
            iy, ix = idx_y[lo:hi], idx_x[lo:hi]
            Ug = U_T[iy]  # [c, k_out, m]
            Vg = [V[ix] for V in Vs]  # [c, k_in, m] each
            Vsg = [v * s[lo:hi, None, :] for v, s in zip(Vg, slopes)]  # V rows scaled by the MLP's slopes
            Jc = torch.bmm(Ug, Vsg[0].transpose(1, 2))
            for v in Vsg[1:]:
                Jc.baddbmm_(Ug, v.transpose(1, 2))
            Jc *= mask_y[lo:hi, :, None]
            J[lo:hi] = Jc
            if not eager_grad:
                continue
            G = torch.sign(Jc)  # d|J|/dJ; masked rows are 0
            if want_U:  # dU rows: G · (V ⊙ s)
                dUg = torch.bmm(G, Vsg[0])
                for v in Vsg[1:]:
                    dUg.baddbmm_(G, v)
                dU.index_add_(0, iy.reshape(-1), dUg.reshape(-1, dUg.shape[-1]))
            for i, s in enumerate(slopes):
                if want_V[i]:  # dV rows: (G^T · U) ⊙ s
                    dVs[i].index_add_(0, ix.reshape(-1), (torch.bmm(G.transpose(1, 2), Ug) * s[lo:hi, None, :]).reshape(-1, Ug.shape[-1]))
                if want_s[i]:  # ds_h = Σ_ij G_ij U_ih V_jh
                    dss[i][lo:hi] = (torch.bmm(G, Vg[i]) * Ug).sum(1)
        ctx.grads = (dU, dVs, dss)
        ctx.mark_non_differentiable(J)
        return J.abs().sum(), J

    @staticmethod
    def backward(ctx, grad_sum: Tensor, _grad_J: Tensor) -> tuple:
        dU, dVs, dss = ctx.grads
        if dU is None and all(d is None for d in dVs + dss) and any(ctx.needs_input_grad):
            raise RuntimeError("jacobian_l1 was called without eager_grad, so it cannot be differentiated")
        scale = lambda t: None if t is None else t * grad_sum  # noqa: E731
        return (scale(dU), None, None, None, None, None, None, *map(scale, dVs), *map(scale, dss))


def jacobian_factors(sae_in: TopKSAE, sae_out: TopKSAE, mlp: MLPWeights) -> tuple[Tensor, list[Tensor]]:
    """The per-step products ``U_T = W_enc_y^T W_out [n, m]`` and ``V = W_dec_x W_in^T [n, m]``
    (plus ``W_dec_x W_gate^T`` for gated MLPs). Differentiable w.r.t. the SAE weights."""
    U_T = sae_out.W_enc.t() @ mlp.W_out  # [n, d] @ [d, m]
    Vs = [sae_in.W_dec @ mlp.W_in.t()]  # [n, d] @ [d, m]
    if mlp.gated:
        Vs.append(sae_in.W_dec @ mlp.W_gate.t())
    return U_T, Vs


def jacobian_l1(U_T: Tensor, Vs: Sequence[Tensor], slopes: Sequence[Tensor], idx_y: Tensor, idx_x: Tensor,
                mask_y: Tensor, chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """``(Σ_b Σ_ij |J_b[i, j]|, J [B, k_out, k_in])``; the sum is differentiable."""
    chunk = chunk or _chunk_tokens(idx_y.shape[1], U_T.shape[1])
    eager_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (U_T, *Vs, *slopes))
    # Always in U_T's precision: under bf16 autocast the sign of small entries of J (the whole
    # gradient) would be noise, and index_add_ refuses to mix a bf16 source with a float32 sum.
    dtype = U_T.dtype
    with torch.autocast(U_T.device.type, enabled=False):
        return _JacobianL1.apply(U_T, idx_y, idx_x, mask_y.to(dtype), chunk, len(Vs), eager_grad,
                                 *(V.to(dtype) for V in Vs), *(s.to(dtype) for s in slopes))


def mass_count(J: Tensor, share: float = 0.9) -> Tensor:
    """Per token, how many of the largest |J| entries hold ``share`` of Σ|J|  ``[B]``.

    A scale-free sparsity measure: the paper's counts of |J| above fixed thresholds also fall
    when the whole Jacobian just gets smaller; this one falls only when its mass concentrates
    in fewer entries. Tokens whose J is all zero count 0.
    """
    flat = J.abs().flatten(1)
    sorted_, _ = flat.sort(1, descending=True)
    total = sorted_.sum(1, keepdim=True)
    below = (sorted_.cumsum(1) < share * total).sum(1)
    return torch.where(total.squeeze(1) > 0, below + 1, torch.zeros_like(below))


class PairOutput(NamedTuple):
    code_in: Encoded
    x_hat: Tensor
    code_out: Encoded
    y_hat: Tensor
    jac_abs_sum: Tensor | None
    J: Tensor | None


def slopes_at(mlp: MLPWeights, x_eval: Tensor) -> list[Tensor]:
    a, c = mlp.slopes(x_eval)
    return [a] if c is None else [a, c]


def pair_forward(sae_in: TopKSAE, sae_out: TopKSAE, mlp: MLPWeights, x: Tensor, y: Tensor, *,
                 with_jacobian: bool, jacobian_at: str = "x", slopes: list[Tensor] | None = None) -> PairOutput:
    """Both SAEs on ``x [B, d]`` and ``y = f(x) [B, d]`` and, if asked, the Jacobian between them.

    ``jacobian_at="x"`` takes the MLP slopes at the true input (``slopes`` may pass them in,
    precomputed with y); ``"reconstruction"`` at x̂, so the gradient also flows through the
    slopes into the input SAE.
    """
    code_in, x_hat = sae_in(x)
    code_out, y_hat = sae_out(y)
    if not with_jacobian:
        return PairOutput(code_in, x_hat, code_out, y_hat, None, None)
    if jacobian_at == "reconstruction":
        slopes = slopes_at(mlp, x_hat)
    elif slopes is None:
        slopes = slopes_at(mlp, x)
    U_T, Vs = jacobian_factors(sae_in, sae_out, mlp)
    mask_y = code_out.pre_values > 0
    total, J = jacobian_l1(U_T, Vs, slopes, code_out.indices, code_in.indices, mask_y)
    return PairOutput(code_in, x_hat, code_out, y_hat, total, J)
