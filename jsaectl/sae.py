"""A TopK sparse autoencoder with a sparse-aware backward.

Encoding: ``s = ReLU(TopK(x @ W_enc + b_enc))`` (no pre-encoder bias subtraction);
decoding: ``x̂ = s @ W_dec + b_dec``, computed from the k active rows only. Weights are in
SAELens orientation: ``W_enc [d, n]``, ``b_enc [n]``, ``W_dec [n, d]``, ``b_dec [d]``.

Why a hand-written encoder backward: autograd would form the gradient of the dense
pre-activations ``[B, n]`` and multiply it by x, as expensive as the forward matmul. Only
the ``B·k`` kept pre-activations receive a gradient, so the weight gradient is a sparse
matrix product, a small fraction of that cost (sparsify does the same).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class _TopKEncode(torch.autograd.Function):
    """(x, W_enc, b_enc) -> TopK values and indices of ``x @ W_enc + b_enc``.

    Gradients flow to W_enc and b_enc only: an SAE's input is data, never a parameter.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor]:
        pre = torch.addmm(b_enc, x, W_enc)  # [B, n]
        values, indices = pre.topk(k, dim=1, sorted=False)  # [B, k] each
        ctx.save_for_backward(x, indices)
        ctx.n = W_enc.shape[1]
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices: Tensor) -> tuple[None, Tensor, Tensor, None]:
        x, indices = ctx.saved_tensors
        B, k = indices.shape
        grad_values = grad_values.to(x.dtype)
        rows = torch.arange(B, device=x.device).repeat_interleave(k)
        # G [n, B] holds the B·k gradients of the kept pre-activations; dW_enc = (G @ x)^T.
        G = torch.sparse_coo_tensor(torch.stack([indices.reshape(-1), rows]), grad_values.reshape(-1),
                                    (ctx.n, B), check_invariants=False)
        grad_W = torch.sparse.mm(G, x).t().contiguous()  # [d, n]
        grad_b = torch.bincount(indices.reshape(-1), weights=grad_values.reshape(-1), minlength=ctx.n).to(x.dtype)
        return None, grad_W, grad_b, None


class _SparseDecode(torch.autograd.Function):
    """(values [B, k], indices [B, k], W_dec [n, d]) -> Σ_j values_j · W_dec[indices_j]  [B, d].

    autograd's embedding_bag backward sorts all B·k indices every step; here the weight
    gradient is one sparse matrix product and the value gradient one batched dot product.
    """

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(values, indices, W_dec)
        return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        values, indices, W_dec = ctx.saved_tensors
        B, k = indices.shape
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_values = torch.bmm(W_dec[indices], grad_out.unsqueeze(-1)).squeeze(-1)  # [B, k]
        if ctx.needs_input_grad[2]:
            rows = torch.arange(B, device=grad_out.device).repeat_interleave(k)
            S = torch.sparse_coo_tensor(torch.stack([indices.reshape(-1), rows]), values.reshape(-1).to(grad_out.dtype),
                                        (W_dec.shape[0], B), check_invariants=False)
            grad_W = torch.sparse.mm(S, grad_out)  # [n, d]
        return grad_values, None, grad_W


class Encoded(NamedTuple):
    values: Tensor
    """``[B, k]`` activations of the kept latents, after ReLU (so possibly 0)."""
    indices: Tensor
    """``[B, k]`` which latents were kept (in no particular order)."""
    pre_values: Tensor
    """``[B, k]`` the kept pre-activations before ReLU (their sign says which are active)."""


class TopKSAE(nn.Module):
    def __init__(self, d_in: int, n_latents: int, k: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.d_in, self.n_latents, self.k = d_in, n_latents, k
        W_dec = torch.empty(n_latents, d_in, device=device, dtype=dtype)
        # Kaiming-uniform decoder, rows at unit norm, encoder its transpose, biases 0
        # (the reference JSAE/SAELens TopK initialisation).
        bound = (6.0 / d_in) ** 0.5  # kaiming_uniform_ with fan_in = d_in and a = 0
        W_dec.uniform_(-bound, bound, generator=generator)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.t().clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(n_latents, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, device=device, dtype=dtype))

    def encode(self, x: Tensor) -> Encoded:
        pre, indices = _TopKEncode.apply(x, self.W_enc, self.b_enc, self.k)
        return Encoded(F.relu(pre), indices, pre)

    def decode(self, values: Tensor, indices: Tensor) -> Tensor:
        """``x̂ [B, d]`` from the k active latents: a gather of k decoder rows per token."""
        return _SparseDecode.apply(values.to(self.W_dec.dtype), indices, self.W_dec) + self.b_dec

    def forward(self, x: Tensor) -> tuple[Encoded, Tensor]:
        code = self.encode(x)
        return code, self.decode(code.values, code.indices)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def encode_dense(self, x: Tensor) -> Tensor:
        """``[B, n]`` latent activations with zeros off the top k (for checks: the tests compare with it)."""
        code = self.encode(x)
        return torch.zeros(x.shape[0], self.n_latents, dtype=x.dtype, device=x.device).scatter_(1, code.indices, code.values)
