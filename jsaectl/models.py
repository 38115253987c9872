"""Load a Hugging Face causal LM, find one layer's MLP, extract its weights, and tap it.

The MLP is found structurally rather than from a per-family table: the decoder layers are
the ``ModuleList`` with ``num_hidden_layers`` entries, the MLP is the layer's ``mlp`` /
``feed_forward`` child (or the layer itself when it holds ``fc1``/``fc2`` directly, as in
OPT), and its linears are recognised by the names every family uses. The activation is
identified by evaluating the module's own activation on a grid. Whatever is extracted is
checked against the real module's output on real tokens before anything is stored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, get_args

import torch
from torch import nn

from jsaectl.configs import BUNDLED_MODEL, InitScheme
from jsaectl import hub
from jsaectl.errors import ModelError, first_line
from jsaectl.mlp import ACTIVATIONS, MLPWeights, get_activation, identify_activation

# (gate, up, down) names of gated MLPs; up is stored as W_in, gate as W_gate.
_GATED = [("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2")]
# A fused [gate; up] projection (Phi-3): the first half of its output is the gate.
_FUSED = [("gate_up_proj", "down_proj")]
# (in, out) names of plain MLPs.
_PLAIN = [
    ("c_fc", "c_proj"),  # GPT-2, GPT-Neo, GPT-BigCode, StarCoder2
    ("dense_h_to_4h", "dense_4h_to_h"),  # GPT-NeoX/Pythia, Bloom, Falcon
    ("fc_in", "fc_out"),  # GPT-J, CodeGen
    ("fc1", "fc2"),  # Phi, OPT
    ("up_proj", "down_proj"),  # MPT
]
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "ff", "mlp_block")
_ACT_NAMES = ("act_fn", "act", "activation_fn", "activation", "gelu_impl", "act_func")
_ACT_CONFIG_KEYS = ("hidden_act", "activation_function", "hidden_activation", "activation")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}



def bundled_model_path() -> str:
    from importlib import resources

    return str(resources.files("jsaectl") / "assets" / "model")


def resolve_model_name(name: str) -> str:
    """``jsaectl-demo`` names the bundled model; everything else is passed to transformers."""
    return bundled_model_path() if name == BUNDLED_MODEL else name


# ---------------------------------------------------------------------------------------------
# Loading


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)




def from_pretrained(loader: Any, name: str, what: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(name)`` with errors a user can act on and no minute-long hang.

    A local directory or a model already in the Hugging Face cache loads without network;
    anything else is downloaded only after a quick check that the Hub answers at all. A
    pickled checkpoint is only ever read with ``torch.load(weights_only=True)`` (transformers'
    default): one that holds more than tensors is refused, never executed.
    """
    import pickle

    try:
        return _from_pretrained(loader, name, what, **kwargs)
    except pickle.UnpicklingError:
        raise ModelError(f"refusing the {what} of {name}: its pickled checkpoint (.bin) holds objects other than tensors, "
                         "and unpickling them could run code",
                         hint="convert it to safetensors on a machine you trust, or use a model that ships safetensors") from None


def _from_pretrained(loader: Any, name: str, what: str, **kwargs: Any) -> Any:
    if os.path.isdir(name):
        try:
            return loader.from_pretrained(name, **kwargs)
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"cannot load the {what} in {name}: {first_line(e)}",
                             hint="the directory should hold what save_pretrained() writes") from e
    if _looks_like_path(name):
        raise ModelError(f"no model directory at {name}", hint="give a local save_pretrained() directory or a Hub id such as gpt2")
    try:
        return loader.from_pretrained(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass  # not cached: download below
    if hub.offline():
        raise ModelError(f"the {what} for {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                         hint="unset HF_HUB_OFFLINE to download it, or give a local directory")
    if not hub.reachable():
        raise ModelError(f"cannot download the {what} for {name!r}: the Hugging Face Hub is unreachable (no network?)",
                         hint="give a local save_pretrained() directory, or download it on a machine with network into the HF cache")
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the {what} {name!r}: {first_line(e)}",
                         hint="check the model id and revision (private models need `hf auth login`)") from e


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    provenance: dict[str, Any] = field(default_factory=dict)


def load_model(
    name: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    random_init: bool = False,
    seed: int = 0,
    init_scheme: str = "tl",
) -> LoadedModel:
    """Load a causal LM and its tokenizer, or with ``random_init`` the same architecture with
    random weights drawn by ``init_scheme`` (see "How --random-init draws the weights" below),
    reproducibly from ``seed``."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # jsaectl draws its own progress; transformers' bars and advice would interleave with it.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    path = resolve_model_name(name)
    config = from_pretrained(AutoConfig, path, "model config", **common)
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"{name} is an encoder-decoder model ({config.model_type})", hint="jsaectl harvests decoder-only causal LMs")
    tokenizer = from_pretrained(AutoTokenizer, path, "tokenizer", **common)
    torch_dtype = DTYPES[dtype]
    if init_scheme not in get_args(InitScheme):
        raise ModelError(f"unknown --init-scheme {init_scheme!r}", hint="choose one of: " + ", ".join(get_args(InitScheme)))
    try:
        if random_init and init_scheme == "hf":
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        else:
            model = from_pretrained(AutoModelForCausalLM, path, "model weights", dtype=torch_dtype, **common)
            if random_init:
                _transformer_lens_init(model, seed)
    except ValueError as e:  # an architecture AutoModelForCausalLM does not know
        raise ModelError(f"{name} is not a causal LM that transformers can load: {first_line(e)}",
                         hint="harvest with --trust-remote-code if the model ships its own code and you trust it") from e
    model.eval().requires_grad_(False).to(device)
    provenance = {
        "name": name,
        "revision": revision,
        "architecture": type(model).__name__,
        "model_type": config.model_type,
        "n_layers": getattr(config, "num_hidden_layers", None),
        "random_init": random_init,
        "seed": seed if random_init else None,
        "init_scheme": init_scheme if random_init else None,
        "dtype": dtype,
        "checkpoint_dtype": _saved_dtype(config),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "vocab_size": len(tokenizer),
    }
    return LoadedModel(model, tokenizer, provenance)


def _saved_dtype(config: Any) -> str | None:
    """The precision the checkpoint's weights were saved in, as its config says (None: unsaid)."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return None if dtype is None else str(dtype).removeprefix("torch.")


# How --random-init draws the weights.
#   tl: what the paper's reference code does (TransformerLens's `init_weights()` on the
#       unprocessed model): every weight matrix (the parameters with two or more dimensions:
#       embeddings, attention, MLP, unembedding) drawn from N(0, 0.8/√d_model); biases and norm
#       gains keep their trained values. (TransformerLens draws tied embeddings twice; a model
#       whose embedding and unembedding are one tensor, such as GPT-2, draws it once.)
#   hf: the architecture's own Hugging Face initialiser (`from_config`), e.g. GPT-2's N(0, 0.02)
#       with zero biases and unit norm gains: a much smaller MLP output.


def _transformer_lens_init(model: nn.Module, seed: int) -> None:
    d_model = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd")
    std = 0.8 / d_model**0.5
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)


# ---------------------------------------------------------------------------------------------
# Finding the MLP


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks: the shortest-named ModuleList of num_hidden_layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    candidates = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod) == n]
    if not candidates:
        raise ModelError(f"cannot find the decoder layers of {type(model).__name__}",
                         hint="jsaectl supports standard Hugging Face causal LMs; please report this architecture")
    return min(candidates, key=lambda c: (c[0].count("."), len(c[0])))[1]


def _linear(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [out, in], b [out]) in float32 on the CPU, from nn.Linear or GPT-2's Conv1D."""
    weight = module.weight.detach().float().cpu()
    if type(module).__name__ == "Conv1D":  # transformers' Conv1D stores [in, out]
        weight = weight.t()
    bias = getattr(module, "bias", None)
    b = bias.detach().float().cpu() if bias is not None else torch.zeros(weight.shape[0])
    return weight.contiguous(), b


def _is_moe(block: nn.Module, config: Any) -> bool:
    name = type(block).__name__.lower()
    if any(s in name for s in ("moe", "sparse", "expert")):
        return True
    if any(hasattr(block, a) for a in ("experts", "router", "shared_expert")):
        return True
    n_experts = next((getattr(config, k) for k in ("num_local_experts", "num_experts", "n_routed_experts") if getattr(config, k, None)), 0)
    return isinstance(n_experts, int) and n_experts > 1 and not any(hasattr(block, p[0]) for p in _PLAIN + _GATED)


@dataclass
class MLPSite:
    """Where layer ``layer``'s MLP is, what it computes, and which modules to hook."""

    family: str
    layer: int
    n_layers: int
    input_module: nn.Module  # its forward pre-hook sees x (first positional argument)
    output_module: nn.Module  # its forward output is y
    weights: MLPWeights
    description: str  # e.g. "GPTNeoXMLP (dense_h_to_4h -> gelu -> dense_4h_to_h)"


def _activation_of(block: nn.Module, config: Any, family: str) -> str:
    for attr in _ACT_NAMES:
        fn = getattr(block, attr, None)
        if callable(fn) and not isinstance(fn, (nn.Linear,)):
            name = identify_activation(fn)
            if name:
                return name
            raise ModelError(f"the {family} MLP's activation ({type(fn).__name__}) is not one jsaectl can differentiate",
                             hint="supported: " + ", ".join(ACTIVATIONS))
    for key in _ACT_CONFIG_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, str):
            try:
                return get_activation(value).name
            except KeyError:
                raise ModelError(f"the {family} MLP's activation {value!r} is not one jsaectl can differentiate",
                                 hint="supported: " + ", ".join(ACTIVATIONS)) from None
    raise ModelError(f"cannot tell which activation function the {family} MLP uses", hint="please report this architecture")


def locate_mlp(model: nn.Module, layer: int) -> MLPSite:
    config = model.config
    family = config.model_type
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ModelError(f"layer {layer} is out of range: {family} has {len(layers)} layers",
                         hint=f"pick --layer between 0 and {len(layers) - 1}")
    decoder = layers[layer]
    block = next((getattr(decoder, n) for n in _MLP_NAMES if isinstance(getattr(decoder, n, None), nn.Module)), None)
    if block is None and any(hasattr(decoder, p[0]) for p in _PLAIN):
        block = decoder  # OPT-style: fc1/fc2 live in the decoder layer itself
    ffn = block if block is not None else decoder  # an expert block may go by a name _MLP_NAMES lacks
    if _is_moe(ffn, config):
        raise ModelError(f"{family} layer {layer} has a mixture-of-experts MLP ({type(ffn).__name__}), which jsaectl does not support",
                         hint="JSAEs need one dense MLP per layer; pick a dense model")
    if block is None:
        raise ModelError(f"cannot find the MLP of {family} layer {layer} ({type(decoder).__name__})",
                         hint="jsaectl supports standard Hugging Face causal LMs; please report this architecture")
    # With a dedicated MLP module we hook it; OPT-style we hook the first linear's input.
    x_module = block if block is not decoder else None
    act = _activation_of(block, config, family)

    for gate_name, up_name, down_name in _GATED:
        if all(isinstance(getattr(block, n, None), nn.Module) for n in (gate_name, up_name, down_name)):
            W_gate, b_gate = _linear(getattr(block, gate_name))
            W_in, b_in = _linear(getattr(block, up_name))
            W_out, b_out = _linear(getattr(block, down_name))
            weights = MLPWeights(W_in, b_in, W_out, b_out, act, W_gate, b_gate)
            desc = f"{type(block).__name__} (down({act}({gate_name}) * {up_name}))"
            return MLPSite(family, layer, len(layers), x_module or getattr(block, gate_name), getattr(block, down_name), weights, desc)
    for fused_name, down_name in _FUSED:
        if all(isinstance(getattr(block, n, None), nn.Module) for n in (fused_name, down_name)):
            W, b = _linear(getattr(block, fused_name))
            m = W.shape[0] // 2
            W_out, b_out = _linear(getattr(block, down_name))
            weights = MLPWeights(W[m:].contiguous(), b[m:].contiguous(), W_out, b_out, act, W[:m].contiguous(), b[:m].contiguous())
            desc = f"{type(block).__name__} ({down_name}({act}(gate) * up), fused {fused_name})"
            return MLPSite(family, layer, len(layers), x_module or getattr(block, fused_name), getattr(block, down_name), weights, desc)
    for in_name, out_name in _PLAIN:
        if all(isinstance(getattr(block, n, None), nn.Module) for n in (in_name, out_name)):
            W_in, b_in = _linear(getattr(block, in_name))
            W_out, b_out = _linear(getattr(block, out_name))
            weights = MLPWeights(W_in, b_in, W_out, b_out, act)
            desc = f"{type(block).__name__} ({in_name} -> {act} -> {out_name})"
            return MLPSite(family, layer, len(layers), x_module or getattr(block, in_name), getattr(block, out_name), weights, desc)
    names = ", ".join(n for n, _ in block.named_children())
    raise ModelError(f"cannot recognise the linears of the {family} MLP {type(block).__name__} ({names})",
                     hint="please report this architecture")


# ---------------------------------------------------------------------------------------------
# Tapping the MLP


class _Captured(Exception):
    """Raised from a hook to stop the forward pass once the MLP is captured."""


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    raise ModelError("the MLP was called without a tensor input", hint="please report this architecture")


class MLPTap:
    """Runs the model just far enough to see layer L's MLP input (and output).

    Hooks raise as soon as what is wanted is captured, so later blocks and the LM head never
    run: on a 12-layer model at layer 3, most of the forward pass is skipped.
    """

    def __init__(self, model: nn.Module, site: MLPSite) -> None:
        self.model = model
        self.site = site
        self._want_output = self._grad = False
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._handles = [
            site.input_module.register_forward_pre_hook(self._on_input, with_kwargs=True),
            site.output_module.register_forward_hook(self._on_output),
        ]

    def _on_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._x is None:  # gated MLPs call their first linear once; keep the first call
            x = _first_tensor(args, kwargs)
            self._x = x if self._grad else x.detach()
        if not self._want_output:
            raise _Captured

    def _on_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._y = (output[0] if isinstance(output, tuple) else output).detach()
        raise _Captured

    def __call__(self, input_ids: torch.Tensor, with_output: bool = False,
                 grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``input_ids [B, T]`` -> ``x [B, T, d]`` and, if asked, ``y [B, T, d]``; with ``grad``,
        x stays in the autograd graph (to differentiate it with respect to the model's weights)."""
        self._x = self._y = None
        self._want_output, self._grad = with_output, grad
        with torch.set_grad_enabled(grad):
            try:
                self.model(input_ids=input_ids, use_cache=False)
            except _Captured:
                pass
        if self._x is None or (with_output and self._y is None):
            raise ModelError(f"layer {self.site.layer}'s MLP ({self.site.description}) did not run as expected during the forward pass",
                             hint="this architecture computes its MLP in a way jsaectl cannot hook; please report it")
        return self._x, self._y

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def check_reconstruction(site: MLPSite, x: torch.Tensor, y: torch.Tensor, model_dtype: str) -> float:
    """Recompute y from the extracted weights; refuse to go on if it is not the module's y.

    Returns the relative error ``‖f(x) − y‖ / ‖y‖``.
    """
    weights = site.weights.to(device=x.device)
    x32 = x.reshape(-1, x.shape[-1]).float()
    y32 = y.reshape(-1, y.shape[-1]).float()
    rel = ((weights.forward(x32) - y32).norm() / y32.norm().clamp_min(1e-12)).item()
    # float32 matmuls differ by ~1e-6 relative; half-precision models by ~1e-2.
    tolerance = 1e-4 if model_dtype == "float32" else 5e-2
    if not rel < tolerance:
        raise ModelError(
            f"the MLP recomputed from the extracted weights does not match {site.family} layer {site.layer}'s real MLP "
            f"({site.description}): relative error {rel:.2g} > {tolerance:g}",
            hint="jsaectl refuses to store activations it cannot reproduce; please report this architecture",
        )
    return rel
