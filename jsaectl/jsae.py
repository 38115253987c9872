"""The JSAE pair and the closed-form Jacobian between its latents.

For one token with active input latents A_x, active output latents A_y and MLP slopes at
the evaluation point, the Jacobian of ``f_s = e_y ∘ f ∘ d_x`` restricted to active latents is

    plain MLP:  J = W_enc_y[:, A_y]^T · W_out · diag(a) · W_in · W_dec_x[A_x]^T       [k_out, k_in]
    gated MLP:  J = W_enc_y[:, A_y]^T · W_out · (diag(a) W_in + diag(c) W_gate) · W_dec_x[A_x]^T

with ``a = act'(z)`` (plain) or ``a = act(g), c = act'(g) ⊙ z`` (gated), see ``MLPWeights.slopes``.
Rows whose output latent's TopK value is not positive are zero (its ReLU is flat there).

Computed as the reference code does, through two per-step products

    U_T = W_enc_y^T · W_out      [n, m]        V = W_dec_x · W_in^T (and W_dec_x · W_gate^T)   [n, m]

so ``J_b = (U_T[A_y] ⊙ a_b) · V[A_x]^T``, but with a hand-written backward: autograd's
backward through the per-token gathers of ``U_T`` and ``V`` rows is where the published
method spends most of its time. Here the backward is ``sign(J)``-weighted batched matmuls
and one ``index_add_`` per side, chunked over tokens so memory stays bounded.
"""

from __future__ import annotations

from typing import NamedTuple
from collections.abc import Sequence

import torch

from jsaectl.mlp import MLPWeights
from jsaectl.sae import Encoded, TopKSAE

Tensor = torch.Tensor

# Tokens per chunk of the per-token contraction: bounds the gathered [chunk, k, m] blocks.
DEFAULT_CHUNK_ELEMENTS = 1 << 23


def _chunk_tokens(k: int, m: int, elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    return max(1, elements // (k * m))


class _JacobianL1(torch.autograd.Function):
    """(U_T, V_1..V_t, s_1..s_t, idx_y, idx_x, mask_y) -> (Σ|J|, J).

    ``J_b = Σ_t (U_T[idx_y_b] ⊙ s_t[b]) · V_t[idx_x_b]^T``, rows masked by ``mask_y``.
    Only Σ|J| is differentiable; J comes back detached for metrics.
    """

    @staticmethod
    def forward(ctx, U_T: Tensor, idx_y: Tensor, idx_x: Tensor, mask_y: Tensor, chunk: int, n_terms: int,
                *vs_and_slopes: Tensor) -> tuple[Tensor, Tensor]:
        Vs, slopes = vs_and_slopes[:n_terms], vs_and_slopes[n_terms:]
        B, k_out = idx_y.shape
        J = torch.empty(B, k_out, idx_x.shape[1], dtype=U_T.dtype, device=U_T.device)
        for lo in range(0, B, chunk):
            hi = min(B, lo + chunk)
            Ug = U_T[idx_y[lo:hi]]  # [c, k_out, m]
            Jc = sum(torch.bmm(Ug * s[lo:hi, None, :], V[idx_x[lo:hi]].transpose(1, 2)) for V, s in zip(Vs, slopes))
            J[lo:hi] = Jc * mask_y[lo:hi, :, None]
        ctx.save_for_backward(U_T, idx_y, idx_x, J, *Vs, *slopes)
        ctx.chunk, ctx.n_terms = chunk, n_terms
        ctx.mark_non_differentiable(J)
        return J.abs().sum(), J

    @staticmethod
    def backward(ctx, grad_sum: Tensor, _grad_J: Tensor) -> tuple:
        U_T, idx_y, idx_x, J, *rest = ctx.saved_tensors
        t = ctx.n_terms
        Vs, slopes = rest[:t], rest[t:]
        want_U = ctx.needs_input_grad[0]
        want_V = [ctx.needs_input_grad[6 + i] for i in range(t)]
        want_s = [ctx.needs_input_grad[6 + t + i] for i in range(t)]
        dU = torch.zeros_like(U_T) if want_U else None
        dVs = [torch.zeros_like(V) if w else None for V, w in zip(Vs, want_V)]
        dss = [torch.zeros_like(s) if w else None for s, w in zip(slopes, want_s)]
        for lo in range(0, J.shape[0], ctx.chunk):
            hi = min(J.shape[0], lo + ctx.chunk)
            G = torch.sign(J[lo:hi]) * grad_sum  # [c, k_out, k_in]; masked rows are 0 already
            iy, ix = idx_y[lo:hi], idx_x[lo:hi]
            Ug = U_T[iy]  # [c, k_out, m]
            dUg = None
            for i, (V, s) in enumerate(zip(Vs, slopes)):
                Vs_g = V[ix] * s[lo:hi, None, :]  # [c, k_in, m]: V rows scaled by the slopes
                if want_U:  # dUg = G · (V ⊙ s)
                    dUg = torch.bmm(G, Vs_g) if dUg is None else dUg.baddbmm_(G, Vs_g)
                if want_V[i]:  # dV = (G^T · U) ⊙ s
                    dVs[i].index_put_((ix,), torch.bmm(G.transpose(1, 2), Ug) * s[lo:hi, None, :], accumulate=True)
                if want_s[i]:  # ds_h = Σ_ij G_ij U_ih V_jh
                    dss[i][lo:hi] = (torch.bmm(G, V[ix]) * Ug).sum(1)
            if want_U:
                dU.index_put_((iy,), dUg, accumulate=True)
        return (dU, None, None, None, None, None, *dVs, *dss)


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
    return _JacobianL1.apply(U_T, idx_y, idx_x, mask_y.to(U_T.dtype), chunk, len(Vs), *Vs, *slopes)


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
