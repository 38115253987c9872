"""A transformer MLP as a pure function of its stored weights, and its derivative.

Plain MLP:  f(x) = W_out · act(W_in · x + b_in) + b_out
Gated MLP:  f(x) = W_out · (act(W_gate · x + b_gate) ⊙ (W_in · x + b_in)) + b_out
(for Llama-style models W_in is ``up_proj`` and W_gate is ``gate_proj``).

Weights are in ``nn.Linear`` orientation: ``W_in [m, d]``, ``W_out [d, m]``, where d is the
model width and m the MLP width. Activation functions are named exactly; each comes with its
closed-form derivative, which the Jacobian needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_tanh_grad(z: Tensor) -> Tensor:
    inner = _SQRT_2_OVER_PI * (z + 0.044715 * z**3)
    t = torch.tanh(inner)
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z * z)


def _gelu_grad(z: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(z * _INV_SQRT_2)) + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI


def _sigmoid_scaled_grad(z: Tensor, a: float) -> Tensor:
    s = torch.sigmoid(a * z)
    return s + a * z * s * (1 - s)


@dataclass(frozen=True)
class Activation:
    name: str
    fn: Callable[[Tensor], Tensor]
    grad: Callable[[Tensor], Tensor]
    aliases: tuple[str, ...] = ()


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("relu", F.relu, lambda z: (z > 0).to(z.dtype)),
        Activation("gelu", F.gelu, _gelu_grad, ("gelu_python",)),
        # GPT-2's gelu_new, gelu_fast, gelu_pytorch_tanh and Bloom's gelu are all this formula.
        Activation(
            "gelu_tanh",
            lambda z: F.gelu(z, approximate="tanh"),
            _gelu_tanh_grad,
            ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python_tanh"),
        ),
        Activation("quick_gelu", lambda z: z * torch.sigmoid(1.702 * z), lambda z: _sigmoid_scaled_grad(z, 1.702)),
        Activation("silu", F.silu, lambda z: _sigmoid_scaled_grad(z, 1.0), ("swish",)),
        Activation("relu2", lambda z: F.relu(z) ** 2, lambda z: 2 * F.relu(z), ("relu_squared",)),
    ]
}


def get_activation(name: str) -> Activation:
    for act in ACTIVATIONS.values():
        if name == act.name or name in act.aliases:
            return act
    raise KeyError(name)


def identify_activation(fn: Callable[[Tensor], Tensor]) -> str | None:
    """Name the catalog activation that ``fn`` computes, by evaluating it on a grid.

    Matching values, not class names, is what makes this robust across transformers
    versions and custom modules (Bloom's hand-written gelu is gelu_tanh to float precision).
    """
    z = torch.linspace(-12.0, 12.0, 4801, dtype=torch.float32)
    with torch.no_grad():
        try:
            got = fn(z.clone()).float()
        except Exception:
            return None
    if got.shape != z.shape:
        return None
    best, best_err = None, float("inf")
    for act in ACTIVATIONS.values():
        err = ((got - act.fn(z)).abs() / (1 + z.abs())).max().item()
        if err < best_err:
            best, best_err = act.name, err
    # The closest two catalog entries (gelu vs gelu_tanh) differ by ~5e-4; float32 noise is ~1e-6.
    return best if best_err < 2e-5 else None


@dataclass
class MLPWeights:
    """The weights of one MLP in float32 (or float64 for reference checks)."""

    W_in: Tensor  # [m, d]
    b_in: Tensor  # [m]
    W_out: Tensor  # [d, m]
    b_out: Tensor  # [d]
    activation: str
    W_gate: Tensor | None = None  # [m, d], gated MLPs only
    b_gate: Tensor | None = None  # [m]

    @property
    def gated(self) -> bool:
        return self.W_gate is not None

    @property
    def d_model(self) -> int:
        return self.W_in.shape[1]

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[0]

    @property
    def act(self) -> Activation:
        return get_activation(self.activation)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MLPWeights:
        move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return MLPWeights(
            move(self.W_in), move(self.b_in), move(self.W_out), move(self.b_out),
            self.activation, move(self.W_gate), move(self.b_gate),
        )

    def tensors(self) -> dict[str, Tensor]:
        out = {"W_in": self.W_in, "b_in": self.b_in, "W_out": self.W_out, "b_out": self.b_out}
        if self.gated:
            out |= {"W_gate": self.W_gate, "b_gate": self.b_gate}
        return out

    def same_as(self, other: MLPWeights) -> bool:
        """The same weights, bit for bit (gated or not, every tensor; compared on the CPU)."""
        ours, theirs = self.tensors(), other.tensors()
        return ours.keys() == theirs.keys() and all(torch.equal(ours[k].cpu(), theirs[k].cpu()) for k in ours)

    def hidden(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Pre-activations: ``(z, g)`` with z = W_in x + b_in and, gated, g = W_gate x + b_gate."""
        z = F.linear(x, self.W_in, self.b_in)  # [B, m]
        g = F.linear(x, self.W_gate, self.b_gate) if self.gated else None
        return z, g

    def forward(self, x: Tensor) -> Tensor:
        """y = f(x) for ``x [B, d]`` -> ``[B, d]``."""
        z, g = self.hidden(x)
        h = self.act.fn(g) * z if self.gated else self.act.fn(z)
        return F.linear(h, self.W_out, self.b_out)

    def forward_and_slopes(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``f(x)`` and :meth:`slopes`, sharing the pre-activations."""
        z, g = self.hidden(x)
        if not self.gated:
            return F.linear(self.act.fn(z), self.W_out, self.b_out), [self.act.grad(z)]
        gate = self.act.fn(g)
        return F.linear(gate * z, self.W_out, self.b_out), [gate, self.act.grad(g) * z]

    def slopes(self, x: Tensor) -> list[Tensor]:
        """The diagonal factors of df/dx = W_out · (diag(a) W_in + diag(c) W_gate), each ``[B, m]``.

        Plain: ``[a]`` with ``a = act'(z)``. Gated: ``[a, c]`` with ``a = act(g)`` (the slope
        through W_in = up_proj) and ``c = act'(g) ⊙ z`` (through W_gate).
        """
        z, g = self.hidden(x)
        if not self.gated:
            return [self.act.grad(z)]
        return [self.act.fn(g), self.act.grad(g) * z]
