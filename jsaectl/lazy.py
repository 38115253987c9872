"""The language model behind an activations store, and lazy stores, whose readers compute x.

:class:`StoreModel` is the model an activations store's x comes from, loaded on a device and
checked against the store (its architecture and layer L's MLP): what `trace` and `contrast`
run new text through, and what reads a lazy store.

x is a pure function of the tokens and the model. A lazy store (``harvest --lazy``) keeps the
tokens (2 bytes each for vocabularies up to 65,536), the vocabulary, the MLP's weights and what
identifies the model, but no x. A reader (:class:`StoreModel`) loads the model, runs it to layer L's
MLP input as harvest does (the forward pass stops there), on the reader's own device, one
chunk at a time with harvest's own batch composition: on the CPU, x is then bit-identical to
what a stored float32 harvest writes (tested). On CUDA the chunk is computed on a side stream
by the reader threads, while the training step runs.

A lazy store cannot silently change meaning. It records

* ``fingerprint``: the sha256 of every parameter that layer L's MLP input depends on (found
  once, at harvest, by differentiating x with respect to every parameter of the model), and
  the dtype the checkpoint was saved in;
* ``witness``: x of the first batch harvest ran, as the sha256 of its float32 bytes and, in
  ``lazy/witness_x``, float32 rows sampled along the first context.

Before a reader uses the model it checks, in order: that the model loads (with a hint when it
is not available), that its architecture and layer L's MLP are the recorded ones, that every
fingerprinted parameter is unchanged (naming those that are not), and that x of the first
batch agrees with the witness (bit for bit, or within the precision of another device).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from jsaectl import store as st
from jsaectl.errors import ModelError, StoreError
from jsaectl.models import LoadedModel, MLPSite, MLPTap, load_model, locate_mlp, resolve_model_name

if TYPE_CHECKING:
    from jsaectl.acts import Activations

WITNESS_ROWS = 64  # rows of the first context kept in float32
CACHE_BYTES = 256 << 20  # computed chunks kept for readers that come back (maxact windows, linearity)
# How far x computed now may be from the witness, relative to its norm: float32 on another
# device or library build differs by ~1e-6; any other model, revision or precision by far more.
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 2e-2}


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its bits
        t = t.view(torch.int16)
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def dependencies(tap: MLPTap, ids: torch.Tensor) -> list[str]:
    """The names of the parameters that layer L's MLP input depends on: x of a short input,
    differentiated with respect to every parameter of the model."""
    named = [(n, p) for n, p in tap.model.named_parameters() if p.is_floating_point()]
    try:
        for _, p in named:
            p.requires_grad_(True)
        x, _ = tap(ids, grad=True)
        grads = torch.autograd.grad(x.float().sum(), [p for _, p in named], allow_unused=True)
    finally:
        for _, p in named:
            p.requires_grad_(False)
    return [n for (n, _), g in zip(named, grads) if g is not None]


def fingerprint(model: torch.nn.Module, names: list[str]) -> dict[str, str]:
    params = dict(model.named_parameters())
    return {name: _tensor_digest(params[name]) for name in names if name in params}


def witness_rows(context_size: int) -> np.ndarray:
    return np.unique(np.linspace(0, context_size - 1, min(WITNESS_ROWS, context_size)).round().astype(np.int64))


def record(store: st.Store, loaded: LoadedModel, tap: MLPTap, ids: torch.Tensor, x: torch.Tensor,
           batch_contexts: int, contexts_per_block: int, model_path: str | None) -> dict[str, Any]:
    """Write the witness arrays of a lazy store and return its ``lazy`` attrs. ``ids [B, T]`` is
    harvest's first batch and ``x [B, T, d]`` its MLP input (computed by ``tap``)."""
    model = loaded.model
    x32 = x.float()
    rows = witness_rows(x.shape[1])
    g = st.race_safe(store.group.require_group, "lazy")
    st.write_array(g, "witness_x", x32[0, torch.from_numpy(rows).to(x.device)].cpu().numpy())
    st.write_array(g, "witness_rows", rows)
    names = dependencies(tap, ids[:1, : min(ids.shape[1], 16)])
    return {"model_path": model_path, "batch_contexts": batch_contexts, "contexts_per_block": contexts_per_block,
            "checkpoint_dtype": loaded.provenance.get("checkpoint_dtype"), "fingerprint": fingerprint(model, names),
            "witness": {"contexts": int(ids.shape[0]), "sha256": _tensor_digest(x32), "device": x.device.type}}


class StoreModel:
    """The model an activations store's x comes from, on ``device``, checked at once against the
    store (and, for a lazy store, its fingerprint and witness); it computes a lazy store's x."""

    def __init__(self, acts: Activations, device: torch.device | str) -> None:
        self.acts, self.device = acts, torch.device(device)
        self.info: dict[str, Any] = acts.meta.get("lazy") or {}
        self.loaded, self.site = self._load()
        self.tap = MLPTap(self.loaded.model, self.site)
        self._lock = threading.Lock()  # one forward at a time: the tap holds what its hooks saw
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.bit_identical = self._check()

    # --- loading and checking

    def _load(self) -> tuple[LoadedModel, MLPSite]:
        config = self.acts.meta["config"]
        name = self.info.get("model_path") or config["model"]
        try:
            loaded = load_model(name, revision=config.get("revision"), dtype=config.get("model_dtype") or "float32",
                                device=self.device, random_init=bool(config.get("random_init")), seed=config.get("seed") or 0,
                                init_scheme=config.get("init_scheme") or "tl")
        except ModelError as e:
            why = "is a lazy store and its x is computed" if self.info else "was harvested"
            raise ModelError(f"{self.acts.url} {why} with {resolve_model_name(name)}, which cannot be loaded here: {e.message}",
                             hint="make the model available (a local folder, or the Hugging Face cache)"
                             + (", or harvest without --lazy on a machine that has it" if self.info else "")) from None
        site = locate_mlp(loaded.model, int(self.acts.meta["layer"]))
        return loaded, site

    def _refuse(self, what: str) -> StoreError:
        name = self.info.get("model_path") or self.acts.meta["config"]["model"]
        kind = "a lazy store" if self.info else "an activations store"
        return StoreError(f"{self.acts.url} is {kind}, and the model {name} {what}: x computed with it would not be "
                          "the store's", hint="make that name load the revision and weights the store was harvested with, or "
                          "harvest again (with --overwrite)")

    def _check(self) -> bool:
        """Refuse a model that is not the one the store was harvested with; for a lazy store, True
        when x of the first batch is bit-identical to the witness, False when within the tolerance."""
        meta, prov = self.acts.meta, self.loaded.provenance
        recorded = meta.get("model") or {}
        for key in ("model_type", "n_layers", "vocab_size"):
            if recorded.get(key) is not None and prov.get(key) != recorded.get(key):
                raise self._refuse(f"has {key} {prov.get(key)}, the store's had {recorded.get(key)}")
        then, now = self.info.get("checkpoint_dtype"), self.loaded.provenance.get("checkpoint_dtype")
        saved = f" (its checkpoint is saved in {now}; the store's was {then})" if then != now else ""
        if not self.site.weights.same_as(self.acts.mlp()):
            raise self._refuse(f"has other weights in layer {meta['layer']}'s MLP than the store recorded{saved}")
        if not self.info:  # a stored store keeps x itself: nothing more to match
            return False
        self._check_fingerprint(saved)
        return self._check_witness()

    def _check_fingerprint(self, saved: str) -> None:
        expected: dict[str, str] = self.info["fingerprint"]
        found = fingerprint(self.loaded.model, list(expected))
        differ = [n for n in expected if found.get(n) != expected[n]]
        if not differ:
            return
        missing = [n for n in differ if n not in found]
        what = f"lacks {', '.join(missing[:3])}" if missing else \
            f"has other values in {len(differ)} of the {len(expected)} parameters layer {self.acts.meta['layer']}'s MLP input " \
            f"depends on ({', '.join(differ[:3])}{', …' if len(differ) > 3 else ''}){saved}"
        raise self._refuse(what)

    def _check_witness(self) -> bool:
        w = self.info["witness"]
        contexts = min(int(w["contexts"]), self.acts.n_tokens // self.acts.context_size)
        ids = torch.from_numpy(self.acts.tokens(0, contexts * self.acts.context_size).astype(np.int64))
        x = self.forward(ids.reshape(contexts, -1)).float()
        if _tensor_digest(x) == w["sha256"]:
            return True
        rows = self.acts.store.array("lazy/witness_rows")[...]
        expected = torch.from_numpy(self.acts.store.finite("lazy/witness_x"))
        got = x[0, torch.from_numpy(rows)].cpu()
        err = float(((got - expected).norm(dim=1) / expected.norm(dim=1).clamp_min(1e-12)).max())
        bound = TOLERANCE.get(self.acts.meta["config"].get("model_dtype") or "float32", 1e-4)
        if not err < bound:
            raise self._refuse(f"computes another x for the store's first tokens (relative error {err:.2g} > {bound:g}), "
                               "although its weights match: another transformers version, attention implementation "
                               "or config")
        return False

    # --- computing

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids [B, T]`` -> x ``[B, T, d]`` in the model's precision, on the device."""
        with self._lock:
            if self._side is None:
                x, _ = self.tap(ids.to(self.device))
                return x
            with torch.cuda.stream(self._side):
                x, _ = self.tap(ids.to(self.device, non_blocking=True))
                x = x.clone()
            torch.cuda.current_stream(self.device).wait_stream(self._side)
            return x

    def chunk(self, c: int) -> np.ndarray:
        """x of chunk ``c`` ``[rows, d]`` float32, computed as harvest computes a chunk: its
        contexts in batches of harvest's --batch-size, from the chunk's first context."""
        with self._lock:
            if c in self._cache:
                self._cache.move_to_end(c)
                return self._cache[c]
        lo, hi = self.acts.chunk_range(c)
        T = self.acts.context_size
        ids = torch.from_numpy(self.acts.tokens(lo, hi).astype(np.int64)).reshape(-1, T)
        per = int(self.info["batch_contexts"])
        parts = [self.forward(ids[b : b + per]).float().reshape(-1, self.acts.d_model).cpu().numpy()
                 for b in range(0, len(ids), per)]
        x = np.concatenate(parts)
        with self._lock:
            self._cache[c] = x
            while sum(v.nbytes for v in self._cache.values()) > CACHE_BYTES and len(self._cache) > 1:
                self._cache.popitem(last=False)
        return x

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """x of rows ``[lo, hi)``, from the chunks that hold them."""
        size = self.acts.rows_per_chunk
        parts = []
        for c in range(lo // size, (hi - 1) // size + 1 if hi > lo else lo // size):
            start = c * size
            parts.append(self.chunk(c)[max(lo, start) - start : min(hi, start + size) - start])
        return np.concatenate(parts) if parts else np.zeros((0, self.acts.d_model), dtype=np.float32)
