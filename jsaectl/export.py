"""Export a JSAE, or its Jacobian connections, into formats other tools load.

Weight formats read a jsae store (a jacobian store stands for the JSAE it was made from,
through its ``jsae_store`` attribute):

* ``saelens``: ``sae_in/`` and ``sae_out/``, each a SAELens v6 folder (``cfg.json`` +
  ``sae_weights.safetensors``, architecture ``topk``) that ``SAE.load_from_disk`` loads.
* ``sparsify``: ``layers.{L}.mlp_in/`` and ``layers.{L}.mlp_out/``, each an EleutherAI
  sparsify folder (``cfg.json`` + ``sae.safetensors``) that ``SparseCoder.load_from_disk``
  loads. sparsify subtracts ``b_dec`` before encoding and jsaectl does not, so the export
  folds it into the encoder bias: ``encoder.bias = b_enc + b_dec @ W_enc``.
* ``jsae-pair``: the reference JSAE code's single-folder pair (``SAEPair.save_model``):
  ``sae_weights.safetensors`` with ``_W_enc, _b_enc, _W_dec, _b_dec`` and their ``_out``
  twins, and its ``cfg.json``.

Connection formats read a jacobian store: one row per stored (input, output) latent pair,
strongest first, in ``connections.csv`` or ``connections.jsonl``.

Everything is written into a hidden temporary folder beside ``out`` and moved into place
at the end, so an interrupted export never leaves files that look complete.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from jsaectl import __version__
from jsaectl import store as st
from jsaectl.configs import CONNECTION_FORMATS, WEIGHT_FORMATS, ExportConfig
from jsaectl.connections import COLUMNS, FIELDS
from jsaectl.errors import ConfigError, StoreError
from jsaectl.progress import SILENT, Reporter
from jsaectl.acts import Activations, bos_skipped
from jsaectl.jsae import JSAE
from jsaectl.trained import load_jsae
from jsaectl.sae import TopKSAE

# sae-lens reads a cfg.json whose metadata names no sae_lens_version >= 6 through its
# pre-6.0 converter (which renames and drops keys); this marks the file as v6 format.
SAELENS_FORMAT_VERSION = "6.0.0"
# TransformerLens names of the two sites as TransformerLens 3's TransformerBridge (which runs
# the Hugging Face model itself, unmodified) hooks them: the MLP module's input and output.
# Checked equal to what jsaectl harvests for GPT-2, GPT-NeoX, Llama, Gemma 2, Phi and GPT-J.
# (The jsae-pair export names the reference code's hooks instead; see docs/export.md.)
TL_HOOK_IN = "blocks.{layer}.mlp.hook_in"
TL_HOOK_OUT = "blocks.{layer}.mlp.hook_out"
_ROWS_PER_BLOCK = 1 << 16


@dataclass
class ExportResult:
    out: str
    """Absolute path of the export directory."""
    format: str
    files: list[str] = field(default_factory=list)
    """Absolute paths of the files written."""

    def summary(self) -> dict[str, Any]:
        return {"out": self.out, "format": self.format, "files": self.files}


def export(cfg: ExportConfig, reporter: Reporter = SILENT) -> ExportResult:
    """Write ``cfg.store`` in ``cfg.format`` to ``cfg.out``. Every refusal (bad format, wrong
    store kind, non-empty ``out``) happens before anything is written."""
    source = _open_source(cfg.store, cfg.format)
    out = _check_out(cfg.out, cfg.overwrite, [cfg.store])  # source is cfg.store or the JSAE it follows
    writer = _WRITERS[cfg.format]
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".partial", dir=parent)
    try:
        writer(source, tmp, cfg, reporter)
        written = _relative_files(tmp)
        _commit(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, cfg.format, [os.path.join(out, f) for f in written])


# --------------------------------------------------------------------------------------------
# Inputs and the output directory


def _open_source(url: str, fmt: str) -> st.Store:
    """The store the format reads: a jsae store for weights, a jacobian store for connections."""
    if not url:
        raise ConfigError("no store given", hint="pass a jsae or jacobian store")
    store = st.open_store(url, ("activations", "jsae", "jacobian"))
    if store.kind == "activations":
        raise StoreError(f"{store.url} is {st.describe(store.meta)}; export reads a jsae store (--format "
                         f"{', '.join(WEIGHT_FORMATS)}) or a jacobian store (--format {', '.join(CONNECTION_FORMATS)})",
                         hint=f"train a JSAE on it first: jsaectl train {store.url}")
    if fmt in CONNECTION_FORMATS:
        if store.kind != "jacobian":
            raise StoreError(f"--format {fmt} reads a jacobian store, and {store.url} is {st.describe(store.meta)}",
                             hint="run `jsaectl jacobian` on it first, or export its weights with one of: "
                             + ", ".join(WEIGHT_FORMATS))
        return store
    if store.kind == "jacobian":
        # A jacobian store stands for the JSAE it analysed, as in `jsaectl compare`.
        return st.open_store(store.meta["jsae_store"], "jsae")
    return store


def _check_out(out: str, overwrite: bool, reads: list[str]) -> str:
    """--out: never a store the export reads or follows; a non-empty folder only with --overwrite."""
    url = st.check_output_dir(out, reads)
    if os.path.isdir(url) and os.listdir(url) and not overwrite:
        raise StoreError(f"{url} already exists and is not empty",
                         hint="pass --overwrite to replace the files this format writes there, or choose another --out")
    return url


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _relative_files(root: str) -> list[str]:
    found = []
    for folder, _, names in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, n), root) for n in names]
    return sorted(found)


def _commit(tmp: str, out: str) -> None:
    """Move the finished export from ``tmp`` into ``out``: the whole folder when ``out`` is
    new or empty; otherwise each top-level entry, replacing only the entries it writes."""
    if not os.path.exists(out) or not os.listdir(out):
        if os.path.exists(out):
            os.rmdir(out)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the export is not
        os.rename(tmp, out)
        return
    old = os.path.join(tmp, ".replaced")
    os.mkdir(old)
    for name in sorted(os.listdir(tmp)):
        if name == ".replaced":
            continue
        src, dst = os.path.join(tmp, name), os.path.join(out, name)
        # os.replace swaps a file for a file atomically; a folder must first move aside.
        if os.path.lexists(dst) and (os.path.isdir(dst) or os.path.isdir(src)):
            os.rename(dst, os.path.join(old, name))
        os.replace(src, dst)


# --------------------------------------------------------------------------------------------
# What the weight formats share


@dataclass
class _Source:
    """The JSAE of a jsae store and the facts about it that exports record."""

    url: str
    jsae: JSAE
    meta: dict[str, Any]

    @classmethod
    def load(cls, store: st.Store) -> _Source:
        mlp = None
        if "mlp" not in store.group:  # a store from before the MLP was kept with the SAEs
            try:
                mlp = Activations.open(store.meta["acts_store"]).mlp()
            except StoreError as e:
                raise StoreError(f"{store.url} predates keeping the MLP beside the SAEs, and its activations store is gone "
                                 f"({e.message})", hint="train it again with this jsaectl") from None
        return cls(store.url, load_jsae(store, mlp=mlp), store.meta)

    def sae(self, side: str) -> TopKSAE:
        return self.jsae.sae(side)

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])

    @property
    def model_name(self) -> str:
        return str((self.meta.get("model") or {}).get("name", ""))

    @property
    def bos(self) -> bool:
        return bool((self.meta.get("data") or {}).get("bos"))

    @property
    def skipped_bos(self) -> bool:
        """Training left out the BOS token at position 0 of each context."""
        return bos_skipped(self.meta, self.meta["config"].get("include_bos", False))

    @property
    def dataset(self) -> str:
        return str((self.meta.get("data") or {}).get("source", ""))

    def tl_hook(self, side: str) -> str:
        """TransformerBridge's name of the activation each SAE reads (the saelens export)."""
        return (TL_HOOK_IN if side == "in" else TL_HOOK_OUT).format(layer=self.layer)

    def provenance(self, side: str | None = None) -> dict[str, Any]:
        info = {"created_by": f"jsaectl {__version__}", "store": self.url, "layer": self.layer, "lam": self.meta.get("lam"),
                "jacobian_at": self.jsae.at}
        return info if side is None else {**info, "side": side}


def _weights(sae: TopKSAE) -> dict[str, torch.Tensor]:
    """SAELens orientation, float32, contiguous (safetensors refuses views)."""
    return {name: getattr(sae, name).detach().to(torch.float32).contiguous()
            for name in ("W_enc", "b_enc", "W_dec", "b_dec")}


def _save_tensors(tensors: dict[str, torch.Tensor], path: str) -> None:
    from safetensors.torch import save_file

    save_file(tensors, path, metadata={"format": "pt"})
    os.chmod(path, 0o666 & ~_umask())  # safetensors makes it private; the export's files are alike


def _save_json(data: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------------------------
# saelens


def saelens_cfg(jsae: _Source, side: str) -> dict[str, Any]:
    """A SAELens v6 TopK cfg.json: encode ``ReLU(TopK(x @ W_enc + b_enc))``, decode
    ``a @ W_dec + b_dec``, with nothing subtracted, normalised or rescaled on the way."""
    sae = jsae.sae(side)
    return {
        "architecture": "topk",
        "d_in": sae.d_in,
        "d_sae": sae.n_latents,
        "k": sae.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        # Ours selects the top k of the raw pre-activations; our decoder rows have unit
        # norm, so True would select the same latents, but False is exact by construction.
        "rescale_acts_by_decoder_norm": False,
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": None,  # trained by jsaectl, not SAELens
            "model_name": jsae.model_name,
            # The bridge's hook names (a processed HookedTransformer has no hook for x; docs/export.md).
            "model_class_name": "TransformerBridge",
            "hook_name": jsae.tl_hook(side),
            "hook_head_index": None,
            "prepend_bos": jsae.bos,
            # Training skipped position 0 (the BOS token) but not the EOS separators inside
            # a context, which may be the same token: a position slice says that exactly.
            "exclude_special_tokens": False,
            "seqpos_slice": [1, None] if jsae.skipped_bos else [None],
            "context_size": int(jsae.meta["context_size"]),
            "dataset_path": jsae.dataset,
            "neuronpedia_id": None,
            "jsaectl": {**jsae.provenance(side), "partner": "sae_out" if side == "in" else "sae_in",
                        "partner_hook_name": jsae.tl_hook("out" if side == "in" else "in")},
        },
    }


def _write_saelens(store: st.Store, tmp: str, cfg: ExportConfig, reporter: Reporter) -> None:
    jsae = _Source.load(store)
    for side in ("in", "out"):
        folder = os.path.join(tmp, f"sae_{side}")
        os.mkdir(folder)
        _save_tensors(_weights(jsae.sae(side)), os.path.join(folder, "sae_weights.safetensors"))
        _save_json(saelens_cfg(jsae, side), os.path.join(folder, "cfg.json"))


# --------------------------------------------------------------------------------------------
# sparsify


def sparsify_hookpoint(layer: int, side: str) -> str:
    """Folder names of the sparsify export. They label the two sites; they are not module
    paths (an HF MLP's input is no module's output, and the base model's layer list is
    called ``h``, ``layers`` or ``blocks`` depending on the family)."""
    return f"layers.{layer}.mlp_{side}"


def sparsify_tensors(sae: TopKSAE) -> dict[str, torch.Tensor]:
    """sparsify encodes ``TopK(ReLU((x - b_dec) @ encoder.weight.T + encoder.bias))``; with
    ``encoder.bias = b_enc + b_dec @ W_enc`` that is exactly ``x @ W_enc + b_enc``."""
    w = _weights(sae)
    folded = (w["b_enc"].double() + w["b_dec"].double() @ w["W_enc"].double()).float()  # float64: one rounding
    return {"encoder.weight": w["W_enc"].t().contiguous(), "encoder.bias": folded,
            "W_dec": w["W_dec"], "b_dec": w["b_dec"]}


def sparsify_cfg(sae: TopKSAE) -> dict[str, Any]:
    return {
        "activation": "topk",
        "expansion_factor": max(1, sae.n_latents // sae.d_in),  # informative only: num_latents wins
        "normalize_decoder": True,  # jsaectl keeps decoder rows at unit norm
        "num_latents": sae.n_latents,
        "k": sae.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": sae.d_in,
    }


def _write_sparsify(store: st.Store, tmp: str, cfg: ExportConfig, reporter: Reporter) -> None:
    jsae = _Source.load(store)
    for side in ("in", "out"):
        folder = os.path.join(tmp, sparsify_hookpoint(jsae.layer, side))
        os.mkdir(folder)
        _save_tensors(sparsify_tensors(jsae.sae(side)), os.path.join(folder, "sae.safetensors"))
        _save_json(sparsify_cfg(jsae.sae(side)), os.path.join(folder, "cfg.json"))


# --------------------------------------------------------------------------------------------
# jsae-pair (the reference code's SAEPair)


def pair_tensors(jsae: _Source) -> dict[str, torch.Tensor]:
    """``TrainingSAEPair.state_dict()`` keys: the SAEs' ``_W_enc`` … (input) and ``_W_enc_out`` …
    (output), SAELens orientation, and the MLP's ``mlp.W_in [d, m]``, ``mlp.b_in``, ``mlp.W_out
    [m, d]``, ``mlp.b_out`` in TransformerLens's layout (``x @ W_in``), plus ``mlp.W_gate``
    for a gated MLP (which the reference's training pair cannot load: its MLP is plain)."""
    tensors = {}
    for side, suffix in (("in", ""), ("out", "_out")):
        for name, value in _weights(jsae.sae(side)).items():
            tensors[f"_{name}{suffix}"] = value
    for name, value in jsae.jsae.mlp.tensors().items():
        if name.startswith("W_"):
            value = value.t()  # nn.Linear [out, in] -> TransformerLens [in, out]
        tensors[f"mlp.{name}"] = value.detach().to(torch.float32).contiguous()
    return tensors


# The reference trains on `HookedTransformer.from_pretrained_no_processing(model)` (no folding):
# there `ln2.hook_normalized` is the norm's output after its gain and bias, which is jsaectl's x
# (checked equal on the bundled GPT-NeoX model, to float16 rounding), and `hook_mlp_out` is y.
REF_HOOK_IN = "blocks.{layer}.ln2.hook_normalized"
REF_HOOK_OUT = "blocks.{layer}.hook_mlp_out"


def pair_cfg(jsae: _Source) -> dict[str, Any]:
    """The reference's ``TrainingSAEPairConfig.to_dict()`` with our values: every key its
    ``TrainingSAEPair.load_from_pretrained`` requires, so both of its loaders load the folder
    unchanged (keys it does not know, such as ``hook_name_out`` and ``jsaectl``, it ignores)."""
    sae = jsae.sae("in")
    model = jsae.meta.get("model") or {}
    return {
        # SAEPairConfig
        "architecture": "standard",
        "is_pair": True,
        "d_in": sae.d_in,
        "d_sae": sae.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "model_name": jsae.model_name,
        "randomize_llm_weights": bool(model.get("random_init", False)),
        "hook_name": REF_HOOK_IN.format(layer=jsae.layer),
        "hook_name_out": REF_HOOK_OUT.format(layer=jsae.layer),
        "hook_layer": jsae.layer,
        "hook_head_index": None,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": sae.k},
        "apply_b_dec_to_input": False,
        "finetuning_scaling_factor": False,
        "prepend_bos": jsae.bos,
        "dataset_path": jsae.dataset,
        "dataset_trust_remote_code": False,
        "context_size": int(jsae.meta["context_size"]),
        "normalize_activations": "none",
        "neuronpedia_id": None,
        "model_from_pretrained_kwargs": {},
        "seqpos_slice": [1, None] if jsae.skipped_bos else [None],
        "sparsity_metric": "l1",
        # TrainingSAEPairConfig: no L1 sparsity term (TopK does it), no ghost grads or noise
        "l1_coefficient": 0.0,
        "lp_norm": 1.0,
        "use_ghost_grads": False,
        "normalize_sae_decoder": True,
        "noise_scale": 0.0,
        "decoder_orthogonal_init": False,
        "mse_loss_normalization": None,
        "decoder_heuristic_init": False,
        "init_encoder_as_decoder_transpose": True,
        "scale_sparsity_penalty_by_decoder_norm": False,
        "use_jacobian_loss": True,
        "jacobian_coefficient": jsae.meta.get("lam"),
        "mlp_out_mse_coefficient": 1.0,
        "jsaectl": {**jsae.provenance(), "mlp_activation": jsae.jsae.mlp.activation,
                    "bridge_hook_name": jsae.tl_hook("in"), "bridge_hook_name_out": jsae.tl_hook("out")},
    }


def _write_pair(store: st.Store, tmp: str, cfg: ExportConfig, reporter: Reporter) -> None:
    jsae = _Source.load(store)
    _save_tensors(pair_tensors(jsae), os.path.join(tmp, "sae_weights.safetensors"))
    _save_json(pair_cfg(jsae), os.path.join(tmp, "cfg.json"))


# --------------------------------------------------------------------------------------------
# connections


def _short(value: Any) -> Any:
    """A float32 as its shortest decimal that reads back to the same float32 (numpy's repr),
    so the files neither lose precision nor show float64 noise like 0.10000000149011612."""
    if isinstance(value, np.floating):
        return float(str(value))
    return int(value)


DEFAULT_TOP = 10_000  # connections written when --top is not given (0: all of them)


def connection_rows(store: st.Store, top: int | None, reporter: Reporter = SILENT) -> Iterator[dict[str, Any]]:
    """The stored connections, strongest first, with both latents' labels, read in blocks."""
    g = store.group
    conn = g["connections"]
    top = DEFAULT_TOP if top is None else top
    total = conn["input"].shape[0] if top == 0 else min(top, conn["input"].shape[0])
    in_labels, out_labels = g["latents/in_label"][...], g["latents/out_label"][...]
    reporter.start("export", total, "connections")
    for lo in range(0, total, _ROWS_PER_BLOCK):
        hi = min(total, lo + _ROWS_PER_BLOCK)
        cols = {name: conn[name][lo:hi] for name in COLUMNS}
        for name in ("strength", "mean_abs", "max_abs", "mean"):
            st.check_finite(cols[name], f"{store.url}: connections/{name} rows {lo:,}–{hi:,}")
        for i in range(hi - lo):
            row = {name: _short(cols[name][i]) for name in COLUMNS}
            row["input_label"] = str(in_labels[row["input"]])
            row["output_label"] = str(out_labels[row["output"]])
            yield row
        reporter.advance(hi - lo)
    reporter.finish()


def _write_csv(store: st.Store, tmp: str, cfg: ExportConfig, reporter: Reporter) -> None:
    with open(os.path.join(tmp, "connections.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(connection_rows(store, cfg.top, reporter))


def _write_jsonl(store: st.Store, tmp: str, cfg: ExportConfig, reporter: Reporter) -> None:
    with open(os.path.join(tmp, "connections.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in connection_rows(store, cfg.top, reporter))


_WRITERS: dict[str, Callable[[st.Store, str, ExportConfig, Reporter], None]] = {
    "saelens": _write_saelens,
    "sparsify": _write_sparsify,
    "jsae-pair": _write_pair,
    "connections-csv": _write_csv,
    "connections-jsonl": _write_jsonl,
}
