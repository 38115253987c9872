"""Reading an activations store (written by harvest): x, y, tokens and the MLP weights."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from jsaectl import store as st
from jsaectl.errors import StoreError
from jsaectl.mlp import MLPWeights


# The exponent bits that are all ones exactly for inf and NaN, by stored precision.
_EXPONENT = {"float16": (np.uint16, 0x7C00), "bfloat16": (np.uint16, 0x7F80), "float32": (np.uint32, 0x7F800000)}


def nonfinite(raw: np.ndarray, store_dtype: str) -> np.ndarray:
    """Where stored values are NaN or inf, from their bits (no conversion: ~1 ms a 4096-row
    batch at d_model 768)."""
    bits, mask = _EXPONENT[store_dtype]
    return (raw.view(bits) & mask) == mask


def decode_rows(raw: np.ndarray, store_dtype: str) -> torch.Tensor:
    """Stored rows -> float32 tensor (bfloat16 is stored as its uint16 bit pattern)."""
    if store_dtype == "bfloat16":
        return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(np.ascontiguousarray(raw)).float()


@dataclass
class Activations:
    """An open, complete activations store. A lazy one (``harvest --lazy``) computes x from its
    tokens once :meth:`compute_on` has loaded and checked its model (see lazy.py)."""

    store: st.Store
    _model: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, url: str, device: torch.device | str | None = None) -> Activations:
        """The store at ``url``; with ``device``, ready to read x there (a lazy store's model is
        loaded and checked now, before the caller creates anything)."""
        acts = cls(st.open_store(url, "activations"))
        if device is not None:
            acts.compute_on(device)
        return acts

    @property
    def lazy(self) -> bool:
        return bool(self.meta.get("lazy"))

    def compute_on(self, device: torch.device | str) -> None:
        """Where a lazy store's x is computed: loads its model there and checks it against the
        store's fingerprint and witness (nothing to do for a stored store)."""
        if self.lazy:
            self.model(device)

    def model(self, device: torch.device | str) -> Any:
        """The language model this store's x comes from (:class:`jsaectl.lazy.StoreModel`), on
        ``device``, checked against the store: what new text runs through (trace, contrast)."""
        if self._model is None or self._model.device != torch.device(device):
            from jsaectl.lazy import StoreModel

            self._model = StoreModel(self, device)
        return self._model

    @property
    def lazy_x(self) -> Any:
        """What computes a lazy store's x: its model (loaded on the CPU if no reader chose a device)."""
        return self._model if self._model is not None else self.model("cpu")

    @property
    def url(self) -> str:
        return self.store.url

    @property
    def meta(self) -> dict[str, Any]:
        return self.store.meta

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def d_model(self) -> int:
        return int(self.meta["d_model"])

    @property
    def context_size(self) -> int:
        return int(self.meta["context_size"])

    @property
    def rows_per_chunk(self) -> int:
        return int(self.meta["contexts_per_chunk"]) * self.context_size

    @property
    def n_chunks(self) -> int:
        return -(-self.n_tokens // self.rows_per_chunk)

    @property
    def has_y(self) -> bool:
        return "y" in self.store.group

    @property
    def store_dtype(self) -> str:
        return self.meta["store_dtype"]

    def chunk_range(self, c: int) -> tuple[int, int]:
        lo = c * self.rows_per_chunk
        return lo, min(self.n_tokens, lo + self.rows_per_chunk)

    def read(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Raw stored rows ``[lo, hi)`` of x or y (decode with :func:`decode_rows`); a lazy
        store's x computed (float32)."""
        if name == "x" and self.lazy:
            return self.lazy_x.rows(lo, hi)
        return self.store.array(name)[lo:hi]

    def rows(self, name: str, lo: int, hi: int) -> torch.Tensor:
        """Rows ``[lo, hi)`` of x or y as float32, refused if any value is not finite."""
        raw = self.read(name, lo, hi)
        self.check_finite(raw, f"{name} rows {lo:,}–{hi:,}")
        return decode_rows(raw, self.store_dtype)

    def check_finite(self, raw: np.ndarray, what: str) -> None:
        """Refuse stored rows holding NaN or inf (harvest never writes them; a store changed
        since, checksums and all, could hold them)."""
        if nonfinite(raw, self.store_dtype).any():
            raise StoreError(f"{self.url}: {what} hold non-finite values (NaN or inf)",
                             hint="a result computed from them would be meaningless; `jsaectl verify --repair` re-harvests them")

    def tokens(self, lo: int, hi: int) -> np.ndarray:
        return self.store.array("tokens")[lo:hi]

    @property
    def bos(self) -> bool:
        """Whether every context starts with a BOS token (then position 0 is never text)."""
        return bool(self.meta.get("data", {}).get("bos"))

    def position(self, rows: np.ndarray) -> np.ndarray:
        """Position within its context of each row: contexts are fixed-length and start at row 0."""
        return rows % self.context_size

    # --- which rows are read: the one rule for BOS, used by training and every analysis

    def skips_bos(self, include_bos: bool) -> bool:
        return bos_skipped(self.meta, include_bos)

    def keep(self, lo: int, hi: int, include_bos: bool) -> np.ndarray:
        """``[hi - lo]`` bool: which of rows ``[lo, hi)`` are read."""
        rows = np.arange(lo, hi)
        return self.position(rows) != 0 if self.skips_bos(include_bos) else np.ones(hi - lo, dtype=bool)

    def n_kept(self, n_rows: int, include_bos: bool) -> int:
        """How many of the first ``n_rows`` rows are read."""
        return self.n_kept_between(0, min(n_rows, self.n_tokens), include_bos)

    def n_kept_between(self, lo: int, hi: int, include_bos: bool) -> int:
        """How many of rows ``[lo, hi)`` are read (position 0 falls on every context_size-th row)."""
        if not self.skips_bos(include_bos):
            return hi - lo
        T = self.context_size
        return (hi - lo) - (-(-hi // T) - -(-lo // T))

    def batches(self, n_rows: int, batch_size: int, include_bos: bool,
                device: torch.device | str = "cpu") -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
        """``(rows, x, y)`` for the kept rows among the first ``n_rows``, in order, on ``device``;
        y is the stored MLP output, or None where the store has none (then y = f(x))."""
        n_rows = min(n_rows, self.n_tokens)
        for lo in range(0, n_rows, batch_size):
            hi = min(n_rows, lo + batch_size)
            keep = self.keep(lo, hi, include_bos)
            x = self.rows("x", lo, hi)[torch.from_numpy(keep)]
            y = self.rows("y", lo, hi)[torch.from_numpy(keep)] if self.has_y else None
            yield np.arange(lo, hi)[keep], x.to(device), (y.to(device) if y is not None else None)

    def xy(self, lo: int, hi: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """All rows ``[lo, hi)`` of x and the stored y (or None), BOS included: a context's window."""
        y = self.rows("y", lo, hi).to(device) if self.has_y else None
        return self.rows("x", lo, hi).to(device), y

    @cached_property
    def vocab(self) -> np.ndarray:
        return self.store.group["vocab"][...]

    @cached_property
    def _vocab_bytes(self) -> tuple[np.ndarray, np.ndarray] | None:
        g = self.store.group
        return (g["vocab_bytes/data"][...], g["vocab_bytes/offsets"][...]) if "vocab_bytes" in g else None

    def token_texts(self, ids: np.ndarray) -> list[str]:
        """How each token of a run of consecutive tokens reads (characters split over tokens
        are shown whole on the token that completes them)."""
        from jsaectl.text import decode_window

        if self._vocab_bytes is None:
            return [str(self.vocab[i]) for i in ids]
        return decode_window(ids, *self._vocab_bytes)

    def mlp(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> MLPWeights:
        return read_mlp(self.store, device, dtype)


def bos_skipped(meta: dict[str, Any], include_bos: bool) -> bool:
    """Whether rows at position 0 are left out, by the metadata of an activations store (or of
    a jsae store, which copies it): they hold the BOS token, whose activations are outliers that
    say nothing about the text (unless ``include_bos``)."""
    return bool((meta.get("data") or {}).get("bos")) and not include_bos


def read_mlp(store: st.Store, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> MLPWeights:
    """The MLP weights in ``mlp/`` of an activations or jsae store, refused if one is not finite."""
    g = store.group["mlp"]
    get = lambda name: torch.from_numpy(store.finite(f"mlp/{name}")).to(device=device, dtype=dtype) if name in g else None  # noqa: E731
    return MLPWeights(get("W_in"), get("b_in"), get("W_out"), get("b_out"), g.attrs["activation"], get("W_gate"), get("b_gate"))


def write_mlp(store: st.Store, mlp: MLPWeights, **attrs: Any) -> None:
    """``mlp/``: the weights in float32 and attrs naming the activation exactly."""
    g = st.race_safe(store.group.require_group, "mlp")
    for name, tensor in mlp.tensors().items():
        st.write_array(g, name, tensor.detach().float().cpu().numpy())
    g.attrs.update({"activation": mlp.activation, "gated": mlp.gated, "d_model": mlp.d_model, "d_mlp": mlp.d_mlp, **attrs})
