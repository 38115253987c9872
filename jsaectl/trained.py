"""A trained JSAE and its stores: load and save its weights, and run it over an activations
store for the analyses (jacobian, maxact, linearity, compare, report, trace, contrast)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import zarr

from jsaectl import store as st
from jsaectl.acts import Activations, read_mlp, write_mlp
from jsaectl.configs import JACOBIAN_AT
from jsaectl.errors import ConfigError, StoreError, shown
from jsaectl.jsae import JSAE
from jsaectl.mlp import MLPWeights
from jsaectl.options import is_int
from jsaectl.sae import Encoded, TopKSAE

SAE_PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
# Each SAE weight's shape, in the attrs of its group (SAELens orientation).
SAE_SHAPES = {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)}


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
    """``site_of`` for people: `EleutherAI/pythia-70m@v0 layer 3 (random init tl, seed 0)`."""
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


def _count(value: Any) -> bool:
    """A positive integer as JSON holds one (not a bool, not 4.0)."""
    return is_int(value) and value >= 1


def jsae_problems(group: zarr.Group, meta: dict[str, Any]) -> list[tuple[str, str]]:
    """``(where, what is wrong)`` for every way the SAEs of a jsae store disagree with its attrs:
    each SAE's d_in = the store's d_model and d_sae = its n_latents (so both SAEs have one width),
    k an integer with 1 ≤ k ≤ d_sae and the store's k, and every weight present with exactly the
    shape these imply (a [1, n] bias would broadcast into wrong numbers, not fail). Values are not
    read here: ``load_sae`` refuses non-finite ones, verify checks every chunk. Never raises."""
    problems = [("", f"has {key} {shown(meta.get(key))} in its attrs, not a positive integer")
                for key in ("d_model", "n_latents") if not _count(meta.get(key))]
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    if config.get("jacobian_at", "x") not in JACOBIAN_AT:
        problems.append(("", f"has jacobian_at {shown(config.get('jacobian_at'))} in its config, not one of {', '.join(JACOBIAN_AT)}"))
    for name in ("sae_in", "sae_out"):
        problems += _sae_problems(group, name, meta)
    return problems


def _sae_problems(group: zarr.Group, name: str, meta: dict[str, Any]) -> list[tuple[str, str]]:
    """``jsae_problems`` of one SAE (``sae_in`` or ``sae_out``)."""
    node = group.get(name)
    if not isinstance(node, zarr.Group):
        return [(name, "is missing (a jsae store holds sae_in and sae_out)")]
    attrs, problems, dims = dict(node.attrs), [], {}
    for key, ours in (("d_in", "d_model"), ("d_sae", "n_latents")):
        value, want = attrs.get(key), meta.get(ours)
        if not _count(value):
            problems.append((name, f"has {key} {shown(value)} in its attrs, not a positive integer"))
        elif _count(want) and value != want:
            same = " (both SAEs of a JSAE have n_latents latents)" if key == "d_sae" else ""
            problems.append((name, f"has {key} {value} in its attrs, the store's {ours} is {want}{same}"))
        dims[key] = value if _count(value) else want
    k, n = attrs.get("k"), dims["d_sae"]
    if not _count(k) or (_count(n) and k > n):
        problems.append((name, f"has k {shown(k)} in its attrs; k must be an integer with 1 ≤ k ≤ d_sae = {n}"))
    elif _count(meta.get("k")) and k != meta["k"]:
        problems.append((name, f"has k {k} in its attrs, the store's k is {meta['k']} (both SAEs of a JSAE use one k)"))
    if all(_count(v) for v in dims.values()):
        for param, axes in SAE_SHAPES.items():
            problems += _array_problems(group, f"{name}/{param}", tuple(dims[a] for a in axes))
    return problems


def _array_problems(group: zarr.Group, path: str, shape: tuple[int, ...]) -> list[tuple[str, str]]:
    array = group.get(path)
    if not isinstance(array, zarr.Array):
        return [(path, "is missing (a jsae store has it)")]
    if tuple(array.shape) != shape:
        return [(path, f"has shape {tuple(array.shape)}, the attrs say {shape}")]
    if getattr(array.dtype, "kind", "f") != "f":
        return [(path, f"has dtype {array.dtype}, not a float type")]
    return []


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
    problems = jsae_problems(store.group, store.meta)
    if problems:  # a damaged, hand-edited or older store: named here, before any number is computed from it
        where, what = problems[0]
        more = f" (and {len(problems) - 1} more problem{'s' * (len(problems) > 2)})" if len(problems) > 1 else ""
        raise StoreError(f"{store.url}: {where or 'the store'} {what}{more}",
                         hint="run `jsaectl verify` on it; re-import it (`jsaectl import`) or retrain it (`jsaectl train --overwrite`)")
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
    jacobian: st.Store | None = None
    """The jacobian store the JSAE was opened through (None when opened as a jsae store)."""

    @classmethod
    def open(cls, url: str, *, acts: str | None = None, device: torch.device | str = "cpu",
             include_bos: bool = False) -> LoadedJSAE:
        opened = st.open_store(url, ("jsae", "jacobian"))
        jacobian = opened if opened.kind == "jacobian" else None
        # A jacobian store stands for the JSAE it was made from, over the activations it analysed
        # (the rows its examples and labels point to); a jsae store, over its training activations.
        store = st.open_store(jacobian.meta["jsae_store"], "jsae") if jacobian else opened
        acts_url = acts or (jacobian or store).meta["acts_store"]
        try:
            activations = Activations.open(acts_url)
        except StoreError as e:
            if acts:
                raise
            what = "the jacobian store analysed" if jacobian else "this JSAE was trained on"
            raise StoreError(f"the activations {what} are gone ({e.message})",
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
        if not mlp.same_as(jsae.mlp):
            raise ConfigError(f"{acts_url} records other MLP weights than the JSAE {store.url} was trained with",
                              hint="--acts must come from the same model (and revision) and layer")
        activations.compute_on(device)  # a lazy store's model: loaded and checked once the pairing is right
        return cls(store, activations, jsae, device, include_bos, jacobian)

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
