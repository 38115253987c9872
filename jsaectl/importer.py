"""`jsaectl import`: a JSAE pair trained by the paper's reference code (or exported by
`jsaectl export --format jsae-pair`) into a jsae store that every analysis reads.

The pair folder holds the reference's ``cfg.json`` and ``sae_weights.safetensors``: both SAEs
in SAELens orientation (``_W_enc, _b_enc, _W_dec, _b_dec`` and their ``_out`` twins) and, from
its training pair, the MLP in TransformerLens's layout (``mlp.W_in [d, m]`` …). The import
checks the pair against the activations store it will be analysed with — d_model, the layer of
its hook, and the MLP weights it carries — and refuses a mismatch rather than produce numbers
about another MLP. The weights are copied unchanged (float32), except that an encoder which
subtracts ``b_dec`` first (``apply_b_dec_to_input``) is rewritten exactly without it:
``b_enc ← b_enc − b_dec · W_enc``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch

from jsaectl import store as st
from jsaectl.acts import Activations
from jsaectl.configs import ImportConfig
from jsaectl.errors import ConfigError
from jsaectl.jsae import JSAE
from jsaectl.trained import SAE_PARAMS, save_jsae
from jsaectl.progress import SILENT, Reporter
from jsaectl.sae import TopKSAE

# Hooks that name layer L's MLP input: the reference's (an unprocessed HookedTransformer),
# TransformerLens 3's bridge (jsaectl's saelens export), and the old jsae-pair export's.
_HOOK_IN = re.compile(r"^blocks\.(\d+)\.(ln2\.hook_normalized|mlp\.hook_in)$")
# The MLP weights of a training pair must equal the activations store's to this tolerance
# (the same float32 weights, transposed: they are compared exactly in practice).
_MLP_TOL = {"rtol": 1e-5, "atol": 1e-7}


@dataclass
class ImportResult:
    store: str
    k: int
    n_latents: int
    lam: float | None
    mlp_checked: bool
    already_complete: bool = False

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def read_pair(folder: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """(cfg, tensors, sha256 of the weights file) of a pair folder, with one-line errors."""
    cfg_path, weights_path = os.path.join(folder, "cfg.json"), os.path.join(folder, "sae_weights.safetensors")
    for path in (cfg_path, weights_path):
        if not os.path.isfile(path):
            raise ConfigError(f"{folder} holds no {os.path.basename(path)}",
                              hint="give a folder saved by the reference's SAEPair.save_model or `jsaectl export --format jsae-pair`")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{cfg_path} is not JSON ({e})", hint="the pair's cfg.json is damaged") from None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{weights_path} is not a readable safetensors file ({e})", hint="the pair's weights are damaged") from None
    with open(weights_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return cfg, tensors, digest


def _check(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], acts: Activations, folder: str) -> tuple[int, int]:
    """(k, layer) of a pair that fits ``acts``; a one-line refusal otherwise."""
    missing = [f"_{p}{s}" for s in ("", "_out") for p in SAE_PARAMS if f"_{p}{s}" not in tensors]
    if missing:
        raise ConfigError(f"{folder} is not a JSAE pair: its weights lack {', '.join(missing)}",
                          hint="a single SAE cannot be imported; a pair holds _W_enc … and _W_enc_out …")
    act = cfg.get("activation_fn_str", cfg.get("activation_fn"))
    k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if act != "topk" or not isinstance(k, int):
        raise ConfigError(f"{folder} has activation {act!r}; jsaectl's SAEs are TopK (activation_fn_kwargs.k)",
                          hint="only TopK pairs can be imported")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ConfigError(f"{folder} normalises its inputs ({cfg['normalize_activations']}); jsaectl's SAEs read raw x and y",
                          hint="only pairs trained with normalize_activations: none can be imported")
    d_in = tensors["_W_enc"].shape[0]
    if d_in != acts.d_model:
        raise ConfigError(f"{folder} has d_in {d_in}, the activations store {acts.url} d_model {acts.d_model}",
                          hint="--acts must come from the model and layer the pair was trained on")
    match = _HOOK_IN.match(str(cfg.get("hook_name", "")))
    if match is None:
        raise ConfigError(f"{folder} reads hook {cfg.get('hook_name')!r}, not an MLP's input",
                          hint="a JSAE pair reads blocks.L.ln2.hook_normalized (the reference) or blocks.L.mlp.hook_in")
    layer = int(match.group(1))
    if layer != int(acts.meta["layer"]):
        raise ConfigError(f"{folder} was trained on layer {layer}, the activations store {acts.url} holds layer {acts.meta['layer']}",
                          hint=f"harvest layer {layer}: jsaectl harvest MODEL --layer {layer}")
    return k, layer


def _check_mlp(tensors: dict[str, torch.Tensor], acts: Activations, folder: str) -> bool:
    """Compare the pair's MLP (TransformerLens layout) with the activations store's; False when
    the pair carries none."""
    if "mlp.W_in" not in tensors:
        return False
    mlp = acts.mlp()
    for name, ours in mlp.tensors().items():
        theirs = tensors.get(f"mlp.{name}")
        if theirs is None:
            raise ConfigError(f"{folder} carries no mlp.{name}, which the MLP of {acts.url} has",
                              hint="--acts must come from the model and layer the pair was trained on")
        theirs = theirs.t() if name.startswith("W_") else theirs
        if theirs.shape != ours.shape or not torch.allclose(theirs.float(), ours, **_MLP_TOL):
            diff = (theirs.float() - ours).abs().max().item() if theirs.shape == ours.shape else f"shape {tuple(theirs.shape)}"
            raise ConfigError(f"the MLP weights in {folder} differ from those of {acts.url} (mlp.{name}: {diff})",
                              hint="--acts must come from the model (and revision, and random init) the pair was trained on")
    return True


def _sae(tensors: dict[str, torch.Tensor], suffix: str, k: int, apply_b_dec: bool) -> TopKSAE:
    W_enc, b_enc = tensors[f"_W_enc{suffix}"].float(), tensors[f"_b_enc{suffix}"].float()
    W_dec, b_dec = tensors[f"_W_dec{suffix}"].float(), tensors[f"_b_dec{suffix}"].float()
    if apply_b_dec:  # (x − b_dec) W + b = x W + (b − b_dec W), computed in float64 for one rounding
        b_enc = (b_enc.double() - b_dec.double() @ W_enc.double()).float()
    sae = TopKSAE(W_enc.shape[0], W_enc.shape[1], k)
    with torch.no_grad():
        for name, value in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
            getattr(sae, name).copy_(value)
    return sae.requires_grad_(False)


def default_out(cfg: ImportConfig, digest: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(os.path.abspath(cfg.pair).rstrip("/"))).strip("-") or "pair"
    return os.path.join("runs", f"jsae-imported-{name}-{digest[:8]}.zarr")


def import_pair(cfg: ImportConfig, reporter: Reporter = SILENT) -> ImportResult:
    pair_cfg, tensors, digest = read_pair(cfg.pair)
    acts = Activations.open(cfg.acts)
    k, layer = _check(pair_cfg, tensors, acts, cfg.pair)
    checked = _check_mlp(tensors, acts, cfg.pair)
    at = cfg.jacobian_at or (pair_cfg.get("jsaectl") or {}).get("jacobian_at", "x")
    identity = {"pair": os.path.abspath(cfg.pair), "weights_sha256": digest, "acts": acts.url, "jacobian_at": at}
    url = st.resolve_url(cfg.out or default_out(cfg, digest))
    lam = pair_cfg.get("jacobian_coefficient")
    existing = st.check_writable(url, "jsae", identity, overwrite=cfg.overwrite, reads=[acts.url])
    if existing is not None and existing.get("complete"):
        reporter.note(f"{url} is already imported; nothing to do")
        return ImportResult(url, k, existing["n_latents"], lam, checked, already_complete=True)
    apply_b_dec = bool(pair_cfg.get("apply_b_dec_to_input", False))
    jsae = JSAE(_sae(tensors, "", k, apply_b_dec), _sae(tensors, "_out", k, apply_b_dec), acts.mlp(), at)
    if not checked:
        reporter.note(f"note: {cfg.pair} carries no MLP weights, so nothing checks that --acts is its model and layer")
    with st.writing(url, "jsae", identity, overwrite=cfg.overwrite, reads=[acts.url]) as (store, _):
        save_jsae(store, jsae)
        store.mark_complete(
            acts_store=acts.url, d_model=acts.d_model, d_mlp=int(acts.meta["d_mlp"]), n_latents=jsae.n_latents, k=k,
            lam=lam, n_steps=None, model=acts.meta.get("model"), layer=layer, mlp=acts.meta.get("mlp"),
            context_size=acts.context_size, data=acts.meta.get("data"), final_metrics={},
            imported={"pair": os.path.abspath(cfg.pair), "weights_sha256": digest, "mlp_checked": checked,
                      "apply_b_dec_to_input_folded": apply_b_dec, "hook_name": pair_cfg.get("hook_name"),
                      "model_name": pair_cfg.get("model_name"), "jsaectl": pair_cfg.get("jsaectl")})
    return ImportResult(url, k, jsae.n_latents, lam, checked)
