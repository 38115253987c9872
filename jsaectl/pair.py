"""A trained JSAE loaded from its store, with what every analysis needs: encode a batch of
the MLP's inputs with both SAEs and take the Jacobian between them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import torch

from jsaectl import store as st
from jsaectl.acts import Activations
from jsaectl.errors import ConfigError, StoreError
from jsaectl.jsae import jacobian_factors, jacobian_l1, slopes_at
from jsaectl.mlp import MLPWeights
from jsaectl.sae import Encoded, TopKSAE


class Batch(NamedTuple):
    rows: torch.Tensor
    """``[B]`` row numbers in the activations store."""
    code_in: Encoded
    code_out: Encoded
    x: torch.Tensor
    y: torch.Tensor
    J: torch.Tensor | None
    """``[B, k, k]``: rows are the output latents ``code_out.indices``, columns the inputs."""


def site_of(meta: dict[str, Any]) -> tuple:
    """(model, revision, layer, random init, seed) of an activations or jsae store: the MLP it is about.
    Local model paths compare by their resolved location."""
    model = meta.get("model") or {}
    name = str(model.get("name"))
    if os.path.isdir(name):
        name = os.path.realpath(name)
    random_init = bool(model.get("random_init"))
    return (name, model.get("revision"), meta.get("layer"), random_init, model.get("seed") if random_init else None)


def describe_site(meta: dict[str, Any]) -> str:
    """``site_of`` for people: `EleutherAI/pythia-70m@v0 layer 3 (random init, seed 0)`."""
    model = meta.get("model") or {}
    revision = f"@{model['revision']}" if model.get("revision") else ""
    random = f" (random init, seed {model.get('seed')})" if model.get("random_init") else ""
    return f"{model.get('name')}{revision} layer {meta.get('layer')}{random}"


def load_sae(store: st.Store, name: str, device: torch.device | str = "cpu") -> TopKSAE:
    """One SAE of a jsae store (``sae_in`` or ``sae_out``), refused if a weight is not finite."""
    attrs = store.group[name].attrs
    sae = TopKSAE(int(attrs["d_in"]), int(attrs["d_sae"]), int(attrs["k"]), device=device)
    with torch.no_grad():
        for param in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, param).copy_(torch.from_numpy(store.finite(f"{name}/{param}")))
    return sae.requires_grad_(False)


@dataclass
class LoadedJSAE:
    store: st.Store
    acts: Activations
    sae_in: TopKSAE
    sae_out: TopKSAE
    mlp: MLPWeights
    device: torch.device
    jacobian_at: str = "x"
    include_bos: bool = False

    @classmethod
    def open(cls, url: str, *, acts: str | None = None, device: torch.device | str = "cpu",
             include_bos: bool = False) -> LoadedJSAE:
        store = st.open_store(url, "jsae")
        acts_url = acts or store.meta["acts_store"]
        try:
            activations = Activations.open(acts_url)
        except StoreError as e:
            if acts:
                raise
            raise StoreError(f"the activations this JSAE was trained on are gone ({e.message})",
                             hint="pass --acts with an activations store of the same model and layer") from None
        if acts and site_of(activations.meta) != site_of(store.meta):
            raise ConfigError(f"--acts {acts_url} holds activations of {describe_site(activations.meta)}, "
                              f"but the JSAE was trained on {describe_site(store.meta)}",
                              hint="harvest held-out text with the JSAE's own model and --layer (and --random-init --seed)")
        if activations.d_model != store.meta["d_model"]:
            raise ConfigError(f"{acts_url} has d_model {activations.d_model}, the JSAE {store.meta['d_model']}",
                              hint="--acts must come from the same model and layer")
        device = torch.device(device)
        sae_in = load_sae(store, "sae_in", device)
        sae_out = load_sae(store, "sae_out", device)
        return cls(store, activations, sae_in, sae_out, activations.mlp(device), device,
                   store.meta["config"].get("jacobian_at", "x"), include_bos)

    @cached_property
    def _factors(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """U_T and V of jsae.py: fixed for a trained JSAE, so computed once, not per batch."""
        with torch.no_grad():
            return jacobian_factors(self.sae_in, self.sae_out, self.mlp)

    @property
    def k(self) -> int:
        return self.sae_in.k

    @property
    def n_latents(self) -> int:
        return self.sae_in.n_latents

    def sae(self, side: str) -> TopKSAE:
        return self.sae_in if side == "in" else self.sae_out

    @torch.no_grad()
    def analyse(self, x: torch.Tensor, rows: torch.Tensor, with_jacobian: bool = True, y: torch.Tensor | None = None) -> Batch:
        """Both codes of ``x [B, d]`` and, if asked, the Jacobian (evaluated where training did).
        ``y`` is the stored MLP output when the store has one (as training used it), else f(x)."""
        y_x, slopes = self.mlp.forward_and_slopes(x)
        y = y_x if y is None else y
        code_in, x_hat = self.sae_in(x)
        code_out, _ = self.sae_out(y)
        J = None
        if with_jacobian:
            if self.jacobian_at == "reconstruction":
                slopes = slopes_at(self.mlp, x_hat)
            U_T, Vs = self._factors
            _, J = jacobian_l1(U_T, Vs, slopes, code_out.indices, code_in.indices, code_out.pre_values > 0)
        return Batch(rows, code_in, code_out, x, y, J)

    @property
    def skip_bos(self) -> bool:
        return self.acts.bos and not self.include_bos

    def analysed_rows(self, n_tokens: int) -> int:
        """How many of the first ``n_tokens`` rows are analysed (BOS rows are skipped)."""
        n_tokens = min(n_tokens, self.acts.n_tokens)
        return n_tokens - -(-n_tokens // self.acts.context_size) if self.skip_bos else n_tokens

    def _rows(self, n_tokens: int, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
        """(rows, x, stored y or None) for the first ``n_tokens`` rows, without the BOS rows
        unless ``include_bos``, on the device."""
        n_tokens = min(n_tokens, self.acts.n_tokens)
        for lo in range(0, n_tokens, batch_size):
            hi = min(n_tokens, lo + batch_size)
            rows = np.arange(lo, hi)
            x = self.acts.rows("x", lo, hi)
            y = self.acts.rows("y", lo, hi) if self.acts.has_y else None
            if self.skip_bos:
                keep = torch.from_numpy(self.acts.position(rows) != 0)
                rows, x = rows[keep.numpy()], x[keep]
                y = y[keep] if y is not None else None
            yield rows, x.to(self.device), (y.to(self.device) if y is not None else None)

    def batches(self, n_tokens: int, batch_size: int, with_jacobian: bool = True) -> Iterator[Batch]:
        """Both codes (and J) of the first ``n_tokens`` rows of the activations store, in order."""
        for rows, x, y in self._rows(n_tokens, batch_size):
            yield self.analyse(x, torch.from_numpy(rows).to(self.device), with_jacobian, y)

    @torch.no_grad()
    def codes(self, side: str, n_tokens: int, batch_size: int) -> Iterator[tuple[torch.Tensor, Encoded]]:
        """``(rows, code)`` of one SAE only: the cheap path when the other SAE and J are not needed."""
        sae = self.sae(side)
        for rows, x, y in self._rows(n_tokens, batch_size):
            if side == "out":
                x = y if y is not None else self.mlp.forward(x)
            yield torch.from_numpy(rows).to(self.device), sae.encode(x)


def label(tokens: np.ndarray, vocab: np.ndarray, top: int = 3) -> str:
    """A latent's label: its most frequent tokens among its top activations, e.g. `'von'×7 'der'×4`."""
    tokens = tokens[tokens >= 0]
    if tokens.size == 0:
        return "(never active)"
    ids, counts = np.unique(tokens, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return " ".join(f"{display_token(vocab[ids[i]])}×{counts[i]}" for i in order)


def display_token(text: str) -> str:
    """A token as it reads in a table: quoted, with whitespace made visible."""
    return repr(str(text)).replace("\\n", "⏎")
