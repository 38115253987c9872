"""The closed-form Jacobian and the hand-written backwards, against autograd references in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jsaectl.jsae import JSAE, jacobian_factors, jacobian_l1
from jsaectl.mlp import ACTIVATIONS, MLPWeights, get_activation, identify_activation
from jsaectl.sae import TopKSAE

D, M, N, K, B = 12, 20, 48, 5, 7
KINDS = [(name, False) for name in ACTIVATIONS] + [("silu", True), ("gelu_tanh", True), ("gelu", True)]


def _mlp(activation: str, gated: bool, g: torch.Generator) -> MLPWeights:
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    gate = (r(M, D) / D**0.5, 0.1 * r(M)) if gated else (None, None)
    return MLPWeights(r(M, D) / D**0.5, 0.1 * r(M), r(D, M) / M**0.5, 0.1 * r(D), activation, *gate)


def _pair(g: torch.Generator) -> tuple[TopKSAE, TopKSAE]:
    sae_in = TopKSAE(D, N, K, generator=g, dtype=torch.float64)
    sae_out = TopKSAE(D, N, K, generator=g, dtype=torch.float64)
    with torch.no_grad():
        for sae in (sae_in, sae_out):
            sae.W_enc.add_(0.3 * torch.randn(sae.W_enc.shape, generator=g, dtype=torch.float64))
            sae.b_dec.normal_(generator=g)
        sae_in.b_enc.normal_(0.0, 0.2, generator=g)
        sae_out.b_enc.normal_(0.0, 0.5, generator=g)
    return sae_in, sae_out


def _encode_dense(sae: TopKSAE, v: torch.Tensor) -> torch.Tensor:
    """Plain-autograd TopK encoder (the reference: differentiable w.r.t. its input)."""
    pre = v @ sae.W_enc + sae.b_enc
    values, indices = pre.topk(K, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))


def _f(mlp: MLPWeights, x: torch.Tensor) -> torch.Tensor:
    """The MLP written out here, independently of MLPWeights.forward."""
    act = get_activation(mlp.activation).fn
    if mlp.gated:
        return (act(x @ mlp.W_gate.T + mlp.b_gate) * (x @ mlp.W_in.T + mlp.b_in)) @ mlp.W_out.T + mlp.b_out
    return act(x @ mlp.W_in.T + mlp.b_in) @ mlp.W_out.T + mlp.b_out


def _jsae(sae_in: TopKSAE, sae_out: TopKSAE, mlp: MLPWeights, at: str) -> JSAE:
    return JSAE(sae_in, sae_out, mlp, at)


@pytest.mark.parametrize("activation,gated", KINDS)
@pytest.mark.parametrize("at", ["x", "reconstruction"])
def test_closed_form_jacobian_equals_jacrev_of_f_s(activation, gated, at):
    """J from JSAE.forward against torch.func.jacrev of the composed function itself: at x̂,
    f_s(s) = e_y(f(d_x(s))) with its own dense TopK; at x, s ↦ e_y(f(x + d_x(s) − d_x(s0)))."""
    g = torch.Generator().manual_seed(hash((activation, gated, at)) % 2**31)
    mlp = _mlp(activation, gated, g)
    sae_in, sae_out = _pair(g)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    with torch.no_grad():
        # Shift the output biases so that about half of the kept values are not positive.
        at_point = _f(mlp, x) if at == "x" else _f(mlp, _encode_dense(sae_in, x) @ sae_in.W_dec + sae_in.b_dec)
        sae_out.b_enc -= (at_point @ sae_out.W_enc + sae_out.b_enc).topk(K, dim=1).values.median() - 1e-3
        out = _jsae(sae_in, sae_out, mlp, at)(x, jacobian="value")
    masked_rows = 0
    for b in range(B):
        s0 = _encode_dense(sae_in, x[b : b + 1])[0]
        if at == "x":
            f_s = lambda s: _encode_dense(sae_out, _f(mlp, (x[b] + (s - s0) @ sae_in.W_dec)[None]))[0]  # noqa: E731
            point = x[b]
        else:
            f_s = lambda s: _encode_dense(sae_out, _f(mlp, (s @ sae_in.W_dec + sae_in.b_dec)[None]))[0]  # noqa: E731
            point = s0 @ sae_in.W_dec + sae_in.b_dec
            torch.testing.assert_close(point, out.x_hat[b])
        pre_out = _f(mlp, point[None])[0] @ sae_out.W_enc + sae_out.b_enc
        rows = pre_out.topk(K).indices  # the output SAE's active set at the evaluation point
        assert set(rows.tolist()) == set(out.jac_out.indices[b].tolist())
        J_ref = torch.func.jacrev(f_s)(s0)[out.jac_out.indices[b]][:, out.code_in.indices[b]]
        masked_rows += int((out.jac_out.pre_values[b] <= 0).sum())
        torch.testing.assert_close(out.J[b], J_ref, rtol=1e-9, atol=1e-11)
    assert masked_rows > 0, "the test should include output latents whose TopK value is not positive"
    if at == "reconstruction":  # f(x̂) is not f(x): the output SAE's active sets differ somewhere
        assert not torch.equal(out.jac_out.indices.sort(1).values, out.code_out.indices.sort(1).values)


def _naive_abs_sum(U_T, Vs, slopes, idx_y, idx_x, mask_y):
    """The published method: gather, einsum, autograd."""
    total = 0
    for V, s in zip(Vs, slopes):
        total = total + torch.einsum("bim,bm,bjm->bij", U_T[idx_y], s, V[idx_x])
    return (total * mask_y[:, :, None]).abs().sum()


@pytest.mark.parametrize("gated", [False, True])
def test_handwritten_backward_equals_autograd(gated):
    g = torch.Generator().manual_seed(1)
    mlp = _mlp("gelu", gated, g)
    U_T = torch.randn(N, M, generator=g, dtype=torch.float64, requires_grad=True)
    Vs = [torch.randn(N, M, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2 if gated else 1)]
    slopes = [torch.randn(B, M, generator=g, dtype=torch.float64, requires_grad=True) for _ in Vs]
    idx_y = torch.stack([torch.randperm(N, generator=g)[:K] for _ in range(B)])
    idx_x = torch.stack([torch.randperm(N, generator=g)[:K] for _ in range(B)])
    mask = torch.rand(B, K, generator=g) > 0.3
    inputs = [U_T, *Vs, *slopes]
    ours, _ = jacobian_l1(U_T, Vs, slopes, idx_y, idx_x, mask, chunk=3)  # chunks of 3 tokens: 7 = 3 + 3 + 1
    ref = _naive_abs_sum(U_T, Vs, slopes, idx_y, idx_x, mask)
    torch.testing.assert_close(ours, ref)
    for got, want in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(ref, inputs)):
        torch.testing.assert_close(got, want)
    assert mlp.gated == gated


@pytest.mark.parametrize("activation,gated", [("gelu_tanh", False), ("silu", True)])
@pytest.mark.parametrize("at", ["x", "reconstruction"])
def test_penalty_gradient_wrt_the_sae_weights_equals_autograd(activation, gated, at):
    """End to end: d Σ|J| / d(SAE weights) from JSAE.forward (what training runs) against an
    all-autograd reference (dense TopK encoder, the MLP's slopes at x or at x̂ through
    autograd, the output SAE's active set at that point, gather + einsum)."""
    g = torch.Generator().manual_seed(5)
    mlp = _mlp(activation, gated, g)
    sae_in, sae_out = _pair(g)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    params = [sae_in.W_enc, sae_in.b_enc, sae_in.W_dec, sae_in.b_dec, sae_out.W_enc, sae_out.b_enc]
    out = _jsae(sae_in, sae_out, mlp, at)(x, jacobian="grad")
    ours = torch.autograd.grad(out.jac_sum, params, allow_unused=True)

    x_hat = _encode_dense(sae_in, x) @ sae_in.W_dec + sae_in.b_dec
    point = x_hat if at == "reconstruction" else x
    slopes = mlp.slopes(point)
    U_T, Vs = jacobian_factors(sae_in, sae_out, mlp)
    dense_out = _encode_dense(sae_out, _f(mlp, point.detach()))
    rows = out.jac_out.indices
    mask = dense_out.gather(1, rows) > 0
    ref = _naive_abs_sum(U_T, Vs, slopes, rows, out.code_in.indices, mask)
    want = torch.autograd.grad(ref, params, allow_unused=True)
    torch.testing.assert_close(out.jac_sum, ref)
    for p, got, exp in zip(params, ours, want):
        zero = torch.zeros_like(p)
        torch.testing.assert_close(zero if got is None else got, zero if exp is None else exp)
    # At x̂ the penalty also moves the input SAE's encoder (through the slopes); at x it cannot.
    assert (want[0] is not None and want[0].abs().sum() > 0) == (at == "reconstruction")


def test_penalty_is_computed_in_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(6)
    U_T = torch.randn(N, M, generator=g, requires_grad=True)
    Vs = [torch.randn(N, M, generator=g, requires_grad=True)]
    slopes = [torch.randn(B, M, generator=g)]
    idx_y = torch.stack([torch.randperm(N, generator=g)[:K] for _ in range(B)])
    idx_x = torch.stack([torch.randperm(N, generator=g)[:K] for _ in range(B)])
    mask = torch.ones(B, K, dtype=torch.bool)
    plain, J = jacobian_l1(U_T, Vs, slopes, idx_y, idx_x, mask)
    grads = torch.autograd.grad(plain, [U_T, *Vs])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto, J_auto = jacobian_l1(U_T, Vs, slopes, idx_y, idx_x, mask)
        grads_auto = torch.autograd.grad(auto, [U_T, *Vs])
    assert J_auto.dtype == torch.float32
    torch.testing.assert_close(J_auto, J)
    for got, want in zip(grads_auto, grads):
        torch.testing.assert_close(got, want)


def test_sparse_encoder_backward_equals_dense_autograd():
    g = torch.Generator().manual_seed(2)
    sae = TopKSAE(D, N, K, generator=g, dtype=torch.float64)
    with torch.no_grad():
        sae.b_enc.normal_(generator=g)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    target = torch.randn(B, D, generator=g, dtype=torch.float64)
    code, x_hat = sae(x)
    loss = ((x_hat - target) ** 2).sum() + code.values.sum()
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    ours = torch.autograd.grad(loss, params)
    dense = _encode_dense(sae, x)
    ref_loss = ((dense @ sae.W_dec + sae.b_dec - target) ** 2).sum() + dense.sum()
    for got, want in zip(ours, torch.autograd.grad(ref_loss, params)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_derivatives_and_identification(name):
    act = get_activation(name)
    z = torch.linspace(-6, 6, 997, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(act.fn(z).sum(), z)
    torch.testing.assert_close(act.grad(z.detach()), auto)
    assert identify_activation(act.fn) == name


def test_gated_slopes_are_the_mlp_derivative():
    g = torch.Generator().manual_seed(3)
    mlp = _mlp("silu", True, g)
    x = torch.randn(D, generator=g, dtype=torch.float64)
    a, c = mlp.slopes(x[None])
    closed = mlp.W_out @ (a[0, :, None] * mlp.W_in + c[0, :, None] * mlp.W_gate)
    torch.testing.assert_close(closed, torch.func.jacrev(lambda v: mlp.forward(v[None])[0])(x))


def test_factors_shapes():
    g = torch.Generator().manual_seed(4)
    sae_in, sae_out = _pair(g)
    U_T, Vs = jacobian_factors(sae_in, sae_out, _mlp("relu", True, g))
    assert U_T.shape == (N, M) and [V.shape for V in Vs] == [(N, M), (N, M)]
