"""`jsaectl import`: a JSAE pair trained by the paper's reference code (or exported by
`jsaectl export --format jsae-pair`) into a jsae store that every analysis reads.

The pair folder holds the reference's ``cfg.json`` and ``sae_weights.safetensors``: both SAEs
in SAELens orientation (``_W_enc, _b_enc, _W_dec, _b_dec`` and their ``_out`` twins) and, from
its training pair, the MLP in TransformerLens's layout (``mlp.W_in [d, m]`` …). The import
checks the pair against the activations store it will be analysed with — d_model, the layer of
its hook, and the MLP weights it carries — and refuses a mismatch rather than produce numbers
about another MLP; it refuses a damaged pair too (non-finite weights or ones float32 cannot hold,
shapes that would only broadcast, two SAEs of different widths, k outside 1…n, a λ that is not a
finite number, a cfg.json field of the wrong type), all before anything is created. The
weights are copied unchanged (float32), except that an encoder which subtracts ``b_dec`` first
(``apply_b_dec_to_input``) is rewritten exactly without it: ``b_enc ← b_enc − b_dec · W_enc``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch

from jsaectl import store as st
from jsaectl.acts import Activations
from jsaectl.configs import JACOBIAN_AT, ImportConfig
from jsaectl.errors import ConfigError, shown
from jsaectl.jsae import JSAE
from jsaectl.options import is_int, is_number
from jsaectl.trained import SAE_PARAMS, SAE_SHAPES, save_jsae
from jsaectl.progress import SILENT, Reporter
from jsaectl.sae import TopKSAE

# Hooks that name layer L's MLP input: the reference's (an unprocessed HookedTransformer),
# TransformerLens 3's bridge (jsaectl's saelens export), and the old jsae-pair export's.
_HOOK_IN = re.compile(r"^blocks\.(\d+)\.(ln2\.hook_normalized|mlp\.hook_in)$")
# The MLP weights of a training pair must equal the activations store's to this tolerance
# (the same float32 weights, transposed: they are compared exactly in practice).
_MLP_TOL = {"rtol": 1e-5, "atol": 1e-7}
# The cfg.json fields the import reads, with the JSON types they may have when present: a
# hand-edited cfg is refused by name rather than read as something else (``"false"`` is truthy).
_CFG_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "hook_name": ((str,), "a string"),
    "activation_fn_str": ((str,), "a string"),
    "activation_fn": ((str,), "a string"),
    "activation_fn_kwargs": ((dict,), "an object"),
    "apply_b_dec_to_input": ((bool,), "a boolean"),
    "normalize_activations": ((str, type(None)), "a string or null"),
    "jsaectl": ((dict, type(None)), "an object or null"),
}
_JSON_TYPES = ((bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "a string"), (list, "an array"),
               (dict, "an object"), (type(None), "null"))
_SAE_KEYS = frozenset(f"_{p}{s}" for s in ("", "_out") for p in SAE_PARAMS)
_DAMAGED = "the pair's weights are damaged, or it is not a JSAE pair; export or save it again"


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
    _check_cfg_types(cfg, cfg_path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{weights_path} is not a readable safetensors file ({e})", hint="the pair's weights are damaged") from None
    with open(weights_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return cfg, tensors, digest


def _json_type(value: Any) -> str:
    return next(name for kind, name in _JSON_TYPES if isinstance(value, kind))


def _check_cfg_types(cfg: Any, path: str) -> None:
    """Refuse a cfg.json that is not an object, or whose fields the import reads have other types."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} holds {_json_type(cfg)}, not a JSON object", hint="the pair's cfg.json is damaged")
    for key, (types, wanted) in _CFG_TYPES.items():
        if key in cfg and not isinstance(cfg[key], types):
            raise ConfigError(f"{path}: {key} is {_json_type(cfg[key])} ({shown(cfg[key])}), not {wanted}",
                              hint="the pair's cfg.json is damaged; save or export the pair again")


def _float32(tensors: dict[str, torch.Tensor], folder: str) -> dict[str, torch.Tensor]:
    """The SAE and MLP tensors as float32 (what is stored and compared), refused when one is not a
    float tensor or is not finite there: NaN or inf, or a float64 value beyond float32's range."""
    out = {}
    for name, value in tensors.items():
        if not (name.startswith("mlp.") or name in _SAE_KEYS):
            continue  # not read by the import
        if not value.is_floating_point():
            raise ConfigError(f"{folder}: {name} has dtype {value.dtype}, not a float type", hint=_DAMAGED)
        out[name] = value.float()
        if not torch.isfinite(out[name]).all():
            why = "values beyond float32's range (they would become inf)" if torch.isfinite(value).all() else \
                "non-finite values (NaN or inf)"
            raise ConfigError(f"{folder}: {name} holds {why}", hint=_DAMAGED)
    return out


def _check_shapes(tensors: dict[str, torch.Tensor], folder: str) -> tuple[int, int]:
    """(d_in, n_latents) of a pair whose eight SAE tensors have exactly the shapes a JSAE needs:
    both SAEs of one width on one d_in, and no bias that would only broadcast ([1, n] or [])."""
    missing = [f"_{p}{s}" for s in ("", "_out") for p in SAE_PARAMS if f"_{p}{s}" not in tensors]
    if missing:
        raise ConfigError(f"{folder} is not a JSAE pair: its weights lack {', '.join(missing)}",
                          hint="a single SAE cannot be imported; a pair holds _W_enc … and _W_enc_out …")
    W_enc, W_enc_out = tensors["_W_enc"], tensors["_W_enc_out"]
    if W_enc.ndim != 2:
        raise ConfigError(f"{folder}: _W_enc has shape {list(W_enc.shape)}, not [d_in, d_sae]", hint=_DAMAGED)
    d, n = W_enc.shape
    if W_enc_out.ndim == 2 and tuple(W_enc_out.shape) != (d, n):
        raise ConfigError(f"{folder}: the output SAE's _W_enc_out is {list(W_enc_out.shape)}, the input SAE's _W_enc "
                          f"{[d, n]}: a JSAE's two SAEs read the same d_model and have the same number of latents",
                          hint="import a pair whose SAEs have the same width")
    for suffix in ("", "_out"):
        for param, axes in SAE_SHAPES.items():
            shape = tuple({"d_in": d, "d_sae": n}[axis] for axis in axes)
            found = tuple(tensors[f"_{param}{suffix}"].shape)
            if found != shape:
                raise ConfigError(f"{folder}: _{param}{suffix} has shape {list(found)}, not {list(shape)} "
                                  f"(d_in {d}, d_sae {n})", hint=_DAMAGED)
    return d, n


def _check_k(cfg: dict[str, Any], n: int, folder: str) -> int:
    """The TopK k of the pair: an integer (bools and floats such as 32.0 are refused; the reference
    writes an int) with 1 ≤ k ≤ n_latents."""
    act = cfg.get("activation_fn_str", cfg.get("activation_fn"))
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if act != "topk" or "k" not in kwargs:
        raise ConfigError(f"{folder} has activation {act!r}; jsaectl's SAEs are TopK (activation_fn_kwargs.k)",
                          hint="only TopK pairs can be imported")
    k = kwargs["k"]
    if not is_int(k) or not 1 <= k <= n:
        raise ConfigError(f"{folder}: activation_fn_kwargs.k is {shown(k)}; it must be an integer with 1 ≤ k ≤ d_sae = {n}",
                          hint="the pair's cfg.json is damaged; save or export the pair again")
    return k


def _check_lam(cfg: dict[str, Any], folder: str) -> float | int | None:
    """The pair's λ (``jacobian_coefficient``): absent or null, or a finite number."""
    lam = cfg.get("jacobian_coefficient")
    if lam is None:
        return None
    try:
        finite = is_number(lam) and math.isfinite(lam)
    except OverflowError:  # an integer beyond float range
        finite = False
    if not finite:
        raise ConfigError(f"{folder}: jacobian_coefficient is {shown(lam)}, not a finite number",
                          hint="the pair's cfg.json is damaged; save or export the pair again")
    return lam


def _jacobian_at(cfg: ImportConfig, pair_cfg: dict[str, Any]) -> str:
    """--jacobian-at, else the setting jsaectl's export recorded in the pair, else x."""
    if cfg.jacobian_at:
        return cfg.jacobian_at
    at = (pair_cfg.get("jsaectl") or {}).get("jacobian_at", "x")
    if at not in JACOBIAN_AT:
        raise ConfigError(f"{cfg.pair}: jsaectl.jacobian_at is {shown(at)}, not one of {', '.join(JACOBIAN_AT)}",
                          hint="pass --jacobian-at, or export the pair again")
    return at


def _check(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], acts: Activations, folder: str) -> tuple[int, int]:
    """(k, layer) of a pair that fits ``acts``; a one-line refusal otherwise."""
    d_in, n = _check_shapes(tensors, folder)
    k = _check_k(cfg, n, folder)
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ConfigError(f"{folder} normalises its inputs ({cfg['normalize_activations']}); jsaectl's SAEs read raw x and y",
                          hint="only pairs trained with normalize_activations: none can be imported")
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
        if name.startswith("W_") and theirs.ndim == 2:
            theirs = theirs.t()
        if theirs.shape != ours.shape or not torch.allclose(theirs, ours, **_MLP_TOL):  # both float32 (_float32)
            diff = (theirs - ours).abs().max().item() if theirs.shape == ours.shape else f"shape {tuple(theirs.shape)}"
            raise ConfigError(f"the MLP weights in {folder} differ from those of {acts.url} (mlp.{name}: {diff})",
                              hint="--acts must come from the model (and revision, and random init) the pair was trained on")
    return True


def _sae(tensors: dict[str, torch.Tensor], suffix: str, k: int, apply_b_dec: bool, folder: str) -> TopKSAE:
    W_enc, b_enc, W_dec, b_dec = (tensors[f"_{p}{suffix}"] for p in SAE_PARAMS)  # float32 (_float32)
    if apply_b_dec:  # (x − b_dec) W + b = x W + (b − b_dec W), computed in float64 for one rounding
        b_enc = (b_enc.double() - b_dec.double() @ W_enc.double()).float()
        if not torch.isfinite(b_enc).all():  # finite weights whose fold leaves float32's range
            raise ConfigError(f"{folder}: folding _b_dec{suffix} into _b_enc{suffix} (apply_b_dec_to_input) gives values "
                              "beyond float32's range", hint=_DAMAGED)
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
    tensors = _float32(tensors, cfg.pair)
    k, layer = _check(pair_cfg, tensors, acts, cfg.pair)
    checked = _check_mlp(tensors, acts, cfg.pair)
    at = _jacobian_at(cfg, pair_cfg)
    lam = _check_lam(pair_cfg, cfg.pair)
    # Built before the output is looked at, so that every refusal comes before anything is created.
    apply_b_dec = bool(pair_cfg.get("apply_b_dec_to_input", False))
    jsae = JSAE(*(_sae(tensors, s, k, apply_b_dec, cfg.pair) for s in ("", "_out")), acts.mlp(), at)
    identity = {"pair": os.path.abspath(cfg.pair), "weights_sha256": digest, "acts": acts.url, "jacobian_at": at}
    url = st.resolve_url(cfg.out or default_out(cfg, digest))
    existing = st.check_writable(url, "jsae", identity, overwrite=cfg.overwrite, reads=[acts.url])
    if existing is not None and existing.get("complete"):
        reporter.note(f"{url} is already imported; nothing to do")
        return ImportResult(url, k, existing["n_latents"], lam, checked, already_complete=True)
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
