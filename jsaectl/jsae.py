"""The JSAE: both SAEs and the MLP between them, and the closed-form Jacobian of
``f_s = e_y ∘ f ∘ d_x``, the map from input-SAE latents to output-SAE latents.

The JSAE alone decides where the Jacobian is evaluated (``at``; ``JSAE.evaluation_point``,
used by ``forward`` and ``entries``). Training (with the penalty's gradient) and every analysis
(jacobian, maxact, linearity, compare, report, trace, contrast) run it through these:

* ``"x"`` (default; the reference code's training): the MLP's slopes at the true input x, and
  the output SAE's active latents those of y = f(x) (or of the stored y);
* ``"reconstruction"`` (f_s exactly, as the paper writes it): slopes at x̂ = d_x(e_x(x)), and
  the output SAE's active latents those of e_y(f(x̂)) — what the reference's ``evals.py``
  evaluates. The reconstruction losses still compare y with ŷ = d_y(e_y(y)).

For one token with active input latents A_x, active output latents A_y and MLP slopes at
the evaluation point, the Jacobian of ``f_s = e_y ∘ f ∘ d_x`` restricted to active latents is

    plain MLP:  J = W_enc_y[:, A_y]^T · W_out · diag(a) · W_in · W_dec_x[A_x]^T       [k_out, k_in]
    gated MLP:  J = W_enc_y[:, A_y]^T · W_out · (diag(a) W_in + diag(c) W_gate) · W_dec_x[A_x]^T

with ``a = act'(z)`` (plain) or ``a = act(g), c = act'(g) ⊙ z`` (gated), see ``MLPWeights.slopes``.
Rows whose output latent's kept TopK value is not positive are zero: the SAE applies ReLU
after TopK, and ReLU's derivative there is 0, so f_s does not move with the input (the
reference code keeps those rows: it differentiates the output SAE's pre-activations).

Computed as the reference code does, through two per-step products

    U_T = W_enc_y^T · W_out      [n, m]        V = W_dec_x · W_in^T (and W_dec_x · W_gate^T)   [n, m]

so ``J_b = (U_T[A_y] ⊙ a_b) · V[A_x]^T``, but with a hand-written gradient: autograd's
backward through the per-token gathers of ``U_T`` and ``V`` rows is where the published
method spends most of its time. Here the gradient is ``sign(J)``-weighted batched matmuls
and one accumulating scatter per side, computed chunk by chunk in the same pass as J (the
work is memory-bound: each chunk's gathered rows are reused while still in cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from jsaectl.configs import JACOBIAN_AT
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


# What a forward computes of the Jacobian: nothing, the output SAE's code at the evaluation
# point (the rows J would have), J without gradient, or J with the penalty's gradient.
JACOBIAN_MODES = ("off", "codes", "value", "grad")


class JSAEOutput(NamedTuple):
    code_in: Encoded
    """e_x(x): the input SAE's code ``[B, k]``."""
    x_hat: Tensor
    """``[B, d]`` d_x(e_x(x))."""
    code_out: Encoded
    """e_y(y): the output SAE's code of the true output."""
    y: Tensor
    """``[B, d]`` the MLP output: the stored y, or f(x)."""
    y_hat: Tensor
    """``[B, d]`` d_y(e_y(y))."""
    jac_out: Encoded | None
    """The output SAE's code at the evaluation point, whose latents are J's rows: ``code_out``
    at x, e_y(f(x̂)) at the reconstruction. None when ``jacobian="off"``."""
    J: Tensor | None
    """``[B, k_out, k_in]`` (detached): rows ``jac_out.indices``, columns ``code_in.indices``."""
    jac_sum: Tensor | None
    """Σ_b Σ_ij |J_b[i, j]|, differentiable when ``jacobian="grad"``."""

    @property
    def jac_mean(self) -> Tensor:
        """The penalty's term: mean |J| over tokens, k_out and k_in (the reference's ``J.abs().mean()``)."""
        return self.jac_sum / self.J.numel()


def active_pairs(code_in: Encoded, jac_out: Encoded, n_latents: int) -> tuple[Tensor, Tensor]:
    """The entries of J that join two active latents, ``both [B, k_out, k_in]``, and the key of
    each entry's (input, output) latent pair, ``input * n_latents + output`` ``[B, k_out, k_in]``."""
    both = (jac_out.values > 0)[:, :, None] & (code_in.values > 0)[:, None, :]
    keys = code_in.indices[:, None, :] * n_latents + jac_out.indices[:, :, None]
    return both, keys


class JSAE(nn.Module):
    """Both SAEs (``sae_in`` on the MLP's input, ``sae_out`` on its output) and the MLP's
    weights (not parameters: they are never trained)."""

    def __init__(self, sae_in: TopKSAE, sae_out: TopKSAE, mlp: MLPWeights, at: str = "x") -> None:
        super().__init__()
        if at not in JACOBIAN_AT:
            raise ValueError(f"at must be one of {JACOBIAN_AT}, not {at!r}")
        self.sae_in, self.sae_out, self.mlp, self.at = sae_in, sae_out, mlp, at
        self._frozen_factors: tuple[Tensor, list[Tensor]] | None = None

    @classmethod
    def init(cls, d_model: int, n_latents: int, k: int, mlp: MLPWeights, *, seed: int, at: str = "x",
             device: torch.device | str = "cpu") -> JSAE:
        """A new pair, initialised as the reference does (see TopKSAE), reproducibly from ``seed``."""
        g = torch.Generator().manual_seed(seed)
        sae_in = TopKSAE(d_model, n_latents, k, generator=g).to(device)
        sae_out = TopKSAE(d_model, n_latents, k, generator=g).to(device)
        return cls(sae_in, sae_out, mlp.to(device=device), at)

    @property
    def k(self) -> int:
        return self.sae_in.k

    @property
    def n_latents(self) -> int:
        return self.sae_in.n_latents

    def sae(self, side: str) -> TopKSAE:
        return self.sae_in if side == "in" else self.sae_out

    def encode(self, side: str, x: Tensor, y: Tensor | None = None) -> Encoded:
        """One SAE's code alone (the cheap path when the other SAE and J are not needed): the
        input SAE of x, or the output SAE of y (the stored output, or None for f(x))."""
        if side == "in":
            return self.sae_in.encode(x)
        if y is None:
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                y = self.mlp.forward(x)
        return self.sae_out.encode(y)

    def factors(self) -> tuple[Tensor, list[Tensor]]:
        """U_T and V (see ``jacobian_factors``): recomputed while the weights train, computed
        once for a frozen JSAE (every analysis)."""
        if any(p.requires_grad for p in self.parameters()):
            return jacobian_factors(self.sae_in, self.sae_out, self.mlp)
        if self._frozen_factors is None:
            with torch.no_grad():
                self._frozen_factors = jacobian_factors(self.sae_in, self.sae_out, self.mlp)
        return self._frozen_factors

    def evaluation_point(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Where the MLP's slopes are taken for J: x, or x̂ for ``at="reconstruction"``."""
        return x if self.at == "x" else x_hat.to(torch.promote_types(x_hat.dtype, torch.float32))

    @torch.no_grad()
    def entries(self, x: Tensor, out: JSAEOutput, token: Tensor, in_slot: Tensor, out_slot: Tensor,
                chunk: int = 4096) -> Tensor:
        """``[P]`` the entries ``J[token, out_slot, in_slot]`` alone, as a forward with
        ``jacobian="value"`` would give them where the output latent is active (``out``: the
        forward of ``x`` with at least ``jacobian="codes"``; ask only for active pairs, see
        :func:`active_pairs`): for a few pairs of many tokens, without the k × k of each."""
        with torch.autocast(x.device.type, enabled=False):
            slopes = self.mlp.slopes(self.evaluation_point(x, out.x_hat).float())  # [B, m] each, once per token
        U_T, Vs = self.factors()
        found = []
        for lo in range(0, len(token), chunk):
            t, i, o = token[lo : lo + chunk], in_slot[lo : lo + chunk], out_slot[lo : lo + chunk]
            u = U_T[out.jac_out.indices[t, o]]  # [c, m]
            found.append(sum((u * s[t] * V[out.code_in.indices[t, i]]).sum(1) for V, s in zip(Vs, slopes)))
        return torch.cat(found) if found else x.new_zeros(0)

    def forward(self, x: Tensor, y: Tensor | None = None, *, jacobian: str = "value") -> JSAEOutput:
        """Both codes and reconstructions of ``x [B, d]`` (and of ``y``: the stored MLP output,
        or None for f(x)), and as much of the Jacobian as ``jacobian`` asks for (one of
        JACOBIAN_MODES). The MLP always runs in float32, whatever the autocast."""
        if jacobian not in JACOBIAN_MODES:
            raise ValueError(f"jacobian must be one of {JACOBIAN_MODES}, not {jacobian!r}")
        need_J = jacobian in ("value", "grad")
        grad = jacobian == "grad" and torch.is_grad_enabled()
        no_autocast = torch.autocast(x.device.type, enabled=False)
        slopes = None
        if y is None:
            with torch.no_grad(), no_autocast:
                y, slopes = self.mlp.forward_and_slopes(x) if need_J and self.at == "x" else (self.mlp.forward(x), None)
        code_in, x_hat = self.sae_in(x)
        code_out, y_hat = self.sae_out(y)
        if jacobian == "off":
            return JSAEOutput(code_in, x_hat, code_out, y, y_hat, None, None, None)
        if self.at == "x":
            jac_out = code_out
            if slopes is None and need_J:
                with torch.no_grad(), no_autocast:
                    slopes = self.mlp.slopes(x)
        else:  # f_s at the input code: the MLP at x̂, the output SAE's TopK of f(x̂)
            with torch.set_grad_enabled(grad), no_autocast:  # the penalty's gradient flows through the slopes into e_x, d_x
                y_eval, slopes = self.mlp.forward_and_slopes(self.evaluation_point(x, x_hat))
            with torch.no_grad():
                jac_out = self.sae_out.encode(y_eval.detach())
        if not need_J:
            return JSAEOutput(code_in, x_hat, code_out, y, y_hat, jac_out, None, None)
        with torch.set_grad_enabled(grad):
            U_T, Vs = self.factors()
            # In float32 whatever the autocast: the gradient is sign(J), noise for small bf16 entries.
            wide = torch.promote_types(U_T.dtype, torch.float32)
            total, J = jacobian_l1(U_T.to(wide), [V.to(wide) for V in Vs], slopes, jac_out.indices, code_in.indices,
                                   jac_out.pre_values > 0)
        return JSAEOutput(code_in, x_hat, code_out, y, y_hat, jac_out, J, total)
