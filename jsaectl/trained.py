"""A trained JSAE and its stores: load and save its weights, and run it over an activations
store for the analyses (jacobian, maxact, linearity, compare)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from jsaectl import store as st
from jsaectl.acts import Activations, read_mlp, write_mlp
from jsaectl.errors import ConfigError, StoreError
from jsaectl.jsae import JSAE
from jsaectl.mlp import MLPWeights
from jsaectl.sae import Encoded, TopKSAE

SAE_PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


class Batch(NamedTuple):
    rows: torch.Tensor
    """``[B]`` row numbers in the activations store."""
    code_in: Encoded
    code_out: Encoded
    """The output SAE's code of the true output y (its reconstruction, its latents' activations)."""
    jac_out: Encoded | None
    """The output SAE's code at the evaluation point: J's rows (``code_out`` when at x)."""
    x: torch.Tensor
    y: torch.Tensor
    J: torch.Tensor | None
    """``[B, k, k]``: rows are the output latents ``jac_out.indices``, columns the inputs ``code_in.indices``."""


def site_of(meta: dict[str, Any]) -> tuple:
    """(model, revision, layer, random init, seed, init scheme) of an activations or jsae store: the MLP it is about.
    Local model paths compare by their resolved location."""
    model = meta.get("model") or {}
    name = str(model.get("name"))
    if os.path.isdir(name):
        name = os.path.realpath(name)
    random_init = bool(model.get("random_init"))
    scheme = (model.get("init_scheme") or "hf") if random_init else None
    return (name, model.get("revision"), meta.get("layer"), random_init, model.get("seed") if random_init else None, scheme)


def describe_site(meta: dict[str, Any]) -> str:
    """``site_of`` for people: `EleutherAI/pythia-70m@v0 layer 3 (random init, seed 0)`."""
    model = meta.get("model") or {}
    revision = f"@{model['revision']}" if model.get("revision") else ""
    random = f" (random init {model.get('init_scheme') or 'hf'}, seed {model.get('seed')})" if model.get("random_init") else ""
    return f"{model.get('name')}{revision} layer {meta.get('layer')}{random}"


# ---------------------------------------------------------------------------------------------
# Weights in a jsae store: sae_in/, sae_out/ and mlp/ (the MLP the JSAE was trained on)


def save_jsae(store: st.Store, jsae: JSAE) -> None:
    """Write both SAEs (SAELens orientation, float32) and the MLP's weights into a jsae store."""
    for name, sae in (("sae_in", jsae.sae_in), ("sae_out", jsae.sae_out)):
        g = store.group.require_group(name)
        for param in SAE_PARAMS:
            st.write_array(g, param, getattr(sae, param).detach().float().cpu().numpy())
        g.attrs.update({"d_in": sae.d_in, "d_sae": sae.n_latents, "k": sae.k, "architecture": "topk",
                        "apply_b_dec_to_input": False, "site": "mlp_in" if name == "sae_in" else "mlp_out"})
    write_mlp(store, jsae.mlp)


def load_sae(store: st.Store, name: str, device: torch.device | str = "cpu") -> TopKSAE:
    """One SAE of a jsae store (``sae_in`` or ``sae_out``), refused if a weight is not finite."""
    attrs = store.group[name].attrs
    sae = TopKSAE(int(attrs["d_in"]), int(attrs["d_sae"]), int(attrs["k"]), device=device)
    with torch.no_grad():
        for param in SAE_PARAMS:
            getattr(sae, param).copy_(torch.from_numpy(store.finite(f"{name}/{param}")))
    return sae.requires_grad_(False)


def load_jsae(store: st.Store, device: torch.device | str = "cpu", mlp: MLPWeights | None = None) -> JSAE:
    """The frozen JSAE of a jsae store, evaluated where it was trained (``jacobian_at``). A
    store from before the MLP was kept beside the SAEs needs ``mlp`` (its activations')."""
    if mlp is None:
        if "mlp" not in store.group:
            raise StoreError(f"{store.url} holds no MLP weights (it predates them)",
                             hint="analyse it with its activations store present, or train it again")
        mlp = read_mlp(store, device)
    at = store.meta["config"].get("jacobian_at", "x")
    return JSAE(load_sae(store, "sae_in", device), load_sae(store, "sae_out", device), mlp.to(device=device), at)


# ---------------------------------------------------------------------------------------------
# A JSAE over an activations store


@dataclass
class LoadedJSAE:
    store: st.Store
    acts: Activations
    jsae: JSAE
    device: torch.device
    include_bos: bool = False

    @classmethod
    def open(cls, url: str, *, acts: str | None = None, device: torch.device | str = "cpu",
             include_bos: bool = False) -> LoadedJSAE:
        store = st.open_store(url, ("jsae", "jacobian"))
        if store.kind == "jacobian":  # it stands for the JSAE it was made from
            store = st.open_store(store.meta["jsae_store"], "jsae")
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
        mlp = activations.mlp(device)
        jsae = load_jsae(store, device, mlp=None if "mlp" in store.group else mlp)
        if not all(torch.equal(a, b) for a, b in zip(mlp.tensors().values(), jsae.mlp.tensors().values())):
            raise ConfigError(f"{acts_url} records other MLP weights than the JSAE {store.url} was trained with",
                              hint="--acts must come from the same model (and revision) and layer")
        return cls(store, activations, jsae, device, include_bos)

    @property
    def k(self) -> int:
        return self.jsae.k

    @property
    def n_latents(self) -> int:
        return self.jsae.n_latents

    @property
    def mlp(self) -> MLPWeights:
        return self.jsae.mlp

    @property
    def jacobian_at(self) -> str:
        return self.jsae.at

    def sae(self, side: str) -> TopKSAE:
        return self.jsae.sae(side)

    @torch.no_grad()
    def analyse(self, x: torch.Tensor, rows: torch.Tensor, y: torch.Tensor | None = None, jacobian: str = "value") -> Batch:
        """Both codes of ``x [B, d]`` (y: the stored MLP output, or None for f(x)) and as much
        of the Jacobian as asked (see ``JSAE.forward``)."""
        out = self.jsae(x, y, jacobian=jacobian)
        return Batch(rows, out.code_in, out.code_out, out.jac_out, x, out.y, out.J)

    def analysed_rows(self, n_tokens: int) -> int:
        """How many of the first ``n_tokens`` rows are analysed (BOS rows are skipped)."""
        return self.acts.n_kept(n_tokens, self.include_bos)

    def batches(self, n_tokens: int, batch_size: int, jacobian: str = "value") -> Iterator[Batch]:
        """The analysis of the first ``n_tokens`` rows of the activations store, in order."""
        for rows, x, y in self.acts.batches(n_tokens, batch_size, self.include_bos, self.device):
            yield self.analyse(x, torch.from_numpy(rows).to(self.device), y, jacobian)

    def window(self, lo: int, hi: int, jacobian: str = "off") -> Batch:
        """The analysis of rows ``[lo, hi)`` as they are (a context shown around an example)."""
        x, y = self.acts.xy(lo, hi, self.device)
        return self.analyse(x, torch.arange(lo, hi, device=self.device), y, jacobian)

    @torch.no_grad()
    def codes(self, side: str, n_tokens: int, batch_size: int) -> Iterator[tuple[torch.Tensor, Encoded]]:
        """``(rows, code)`` of one SAE only: the cheap path when the other SAE and J are not needed."""
        for rows, x, y in self.acts.batches(n_tokens, batch_size, self.include_bos, self.device):
            yield torch.from_numpy(rows).to(self.device), self.jsae.encode(side, x, y)
