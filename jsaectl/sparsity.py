"""How sparse a token's Jacobian is: every per-token measure jsaectl reports, defined once.

All functions take ``J [B, k_out, k_in]`` (rows of inactive output latents are zero) and
return one value per token ``[B]`` or, for threshold counts, ``[B, len(thresholds)]``.

* ``counts``: entries with |J| > t, the paper's measure (its Figure 1 counts these over k²
  with BOS left out, as jsaectl does). It falls when J gets *sparser* and also when all of
  J just gets *smaller*.
* ``normalised_counts``: entries with |J| > t · rms(J), where rms is the token's root mean
  square over its k² entries (the reference code's ``l2t`` norm, ``sqrt(mean J²)``): scale
  free, so it falls only when J's mass concentrates.
* ``mass_count``: how many of the largest |J| entries hold 90% of the token's Σ|J|.
* ``gini``: the Gini coefficient of the token's k² values |J|: 0 when all are equal, → 1
  when one entry holds everything (``Σ_ij |a_i − a_j| / (2 n Σ a)``, n = k²).
"""

from __future__ import annotations

import torch

from jsaectl.configs import NORMALISED_THRESHOLDS, THRESHOLDS

Tensor = torch.Tensor

HEADLINE = 0.01  # the paper's headline threshold for "a non-zero Jacobian entry"
MASS_SHARE = 0.9


def counts(J: Tensor, thresholds: Tensor) -> Tensor:
    """``[B, T]`` entries with |J| above each threshold."""
    return (J.abs().flatten(1)[:, :, None] > thresholds).sum(1)


def rms(J: Tensor) -> Tensor:
    """``[B]`` root mean square of each token's k² entries (the reference's ``l2t``)."""
    return J.pow(2).flatten(1).mean(1).sqrt()


def normalised_counts(J: Tensor, thresholds: Tensor) -> Tensor:
    """``[B, T]`` entries with |J| above each threshold times the token's rms |J| (all-zero
    tokens count 0)."""
    scale = rms(J)
    above = J.abs().flatten(1)[:, :, None] > thresholds * scale[:, None, None]
    return above.sum(1) * (scale > 0)[:, None]


def _ascending(J: Tensor) -> Tensor:
    """``[B, k²]`` each token's |J| sorted ascending (shared by mass_count and gini)."""
    return J.abs().flatten(1).sort(1).values


def mass_count(J: Tensor, share: float = MASS_SHARE, ascending: Tensor | None = None) -> Tensor:
    """``[B]`` how many of the largest |J| entries hold ``share`` of Σ|J| (0 for an all-zero J)."""
    largest_first = (ascending if ascending is not None else _ascending(J)).flip(1)
    total = largest_first.sum(1, keepdim=True)
    below = (largest_first.cumsum(1) < share * total).sum(1)
    return torch.where(total.squeeze(1) > 0, below + 1, torch.zeros_like(below))


def gini(J: Tensor, ascending: Tensor | None = None) -> Tensor:
    """``[B]`` Gini coefficient of each token's |J| entries (0 for an all-zero J).

    With the values sorted ascending, ``Σ_ij |a_i − a_j| = 2 Σ_i (2i − n − 1) a_(i)`` (i from 1),
    so the coefficient costs one sort, not n² differences."""
    a = (ascending if ascending is not None else _ascending(J)).double()
    n = a.shape[1]
    weights = 2 * torch.arange(1, n + 1, device=a.device, dtype=a.dtype) - n - 1
    total = a.sum(1)
    return torch.where(total > 0, (a * weights).sum(1) / (n * total.clamp_min(1e-300)), torch.zeros_like(total))


class Summary:
    """Every per-token measure above, summed over the tokens of a stream of Jacobians, in
    bounded memory; ``result`` gives the means (the jacobian store's ``sparsity`` attrs and
    compare's rows)."""

    def __init__(self, k: int, thresholds: tuple[float, ...] = THRESHOLDS,
                 normalised: tuple[float, ...] = NORMALISED_THRESHOLDS, device: torch.device | str = "cpu") -> None:
        self.k, self.thresholds, self.normalised = k, tuple(sorted(thresholds)), tuple(sorted(normalised))
        self._t = torch.tensor(self.thresholds, device=device)
        self._n = torch.tensor(self.normalised, device=device)
        self.above = torch.zeros(len(self.thresholds), dtype=torch.float64)
        self.above_rms = torch.zeros(len(self.normalised), dtype=torch.float64)
        self.mass90 = self.gini = self.abs_sum = 0.0
        self.tokens = 0

    def add(self, J: Tensor) -> None:
        self.above += counts(J, self._t).sum(0).double().cpu()
        self.above_rms += normalised_counts(J, self._n).sum(0).double().cpu()
        ascending = _ascending(J)
        self.mass90 += float(mass_count(J, ascending=ascending).sum())
        self.gini += float(gini(J, ascending=ascending).sum())
        self.abs_sum += float(J.abs().sum())
        self.tokens += J.shape[0]

    def result(self) -> dict:
        n, k2 = max(1, self.tokens), self.k**2
        per = lambda total: {"mean_count": float(total) / n, "fraction": float(total) / n / k2}  # noqa: E731
        return {
            "tokens": self.tokens,
            "above": {f"{t:g}": per(c) for t, c in zip(self.thresholds, self.above.tolist())},
            "above_rms": {f"{t:g}": per(c) for t, c in zip(self.normalised, self.above_rms.tolist())},
            "mass90": per(self.mass90),
            "gini": self.gini / n,
            "mean_abs": self.abs_sum / n / k2,
        }
