"""The connections of a jacobian store, queried without recomputing anything.

`jsaectl jacobian` stores every (input latent, output latent) pair's aggregates in
``connections/`` strongest first, and an index by latent in ``index/``: for each side, the
rows of the connections sorted by that side's latent (strongest first within a latent) and
each latent's offsets into them. A query reads only what its answer needs: the first rows
for the strongest connections overall, one latent's slice of the index (and then just those
rows) for a latent's connections.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from jsaectl import store as st
from jsaectl.errors import ConfigError

COLUMNS = ("input", "output", "strength", "count", "mean_abs", "max_abs", "mean")
SORTS = {"strength": "strength", "mean": "mean_abs", "count": "count"}  # --sort name -> column
# Rows per chunk of the connection columns: small, so that a latent's scattered rows are read
# from small chunks (4M pairs: 61 chunks of 256 KB per float32 column).
CHUNK_ROWS = 1 << 16


@dataclass
class Connection:
    input: int
    output: int
    strength: float
    """Σ |J[out, in]| over the analysed tokens / their number."""
    count: int
    """Tokens where both latents were active."""
    mean_abs: float
    max_abs: float
    mean: float
    """Mean signed J over those tokens."""
    input_label: str
    output_label: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write(group: Any, columns: dict[str, np.ndarray], n_latents: int) -> None:
    """``connections/`` (rows strongest first) and ``index/``; ``group`` is the store's root."""
    conn = group.require_group("connections")
    for name in COLUMNS:
        values = columns[name]
        arr = st.create_array(conn, name, shape=values.shape, dtype=values.dtype, chunks=(min(len(values), CHUNK_ROWS) or 1,),
                              dimension_names=("connection",))
        arr[...] = values
    index = group.require_group("index")
    for side in ("input", "output"):
        latents = columns[side]
        rows = np.argsort(latents, kind="stable").astype(np.int64)  # stable: strongest first within a latent
        offsets = np.searchsorted(latents[rows], np.arange(n_latents + 1)).astype(np.int64)
        st.create_array(index, f"by_{side}", shape=rows.shape, dtype="int64", chunks=(min(len(rows), CHUNK_ROWS) or 1,),
                        dimension_names=("connection",))[...] = rows
        st.write_array(index, f"{side}_offsets", offsets)


def _latent_rows(store: st.Store, side: str, latents: tuple[int, ...]) -> np.ndarray:
    """Rows (in the strongest-first order) of every connection with one of ``latents`` on ``side``."""
    if "index" in store.group:
        offsets = store.array(f"index/{side}_offsets")
        by = store.array(f"index/by_{side}")
        parts = []
        for latent in latents:
            lo, hi = (int(v) for v in offsets[latent : latent + 2])
            parts.append(by[lo:hi])
        rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    else:  # a store from before the index: one pass over the column
        rows = np.flatnonzero(np.isin(store.array(f"connections/{side}")[...], latents))
    return np.sort(rows)


def _columns(store: st.Store, rows: np.ndarray) -> dict[str, np.ndarray]:
    conn = {name: store.array(f"connections/{name}") for name in COLUMNS}
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # a run of rows: a slice reads fastest
        cols = {name: arr[int(rows[0]) : int(rows[-1]) + 1] for name, arr in conn.items()}
    else:
        cols = {name: arr.get_orthogonal_selection(rows) if len(rows) else np.zeros(0, dtype=arr.dtype)
                for name, arr in conn.items()}
    for name in ("strength", "mean_abs", "max_abs", "mean"):
        st.check_finite(cols[name], f"{store.url}: connections/{name}")
    return cols


def query(store: st.Store, *, inputs: tuple[int, ...] = (), outputs: tuple[int, ...] = (), top: int = 20,
          min_strength: float = 0.0, sort: str = "strength") -> list[Connection]:
    """The connections from ``inputs`` and/or into ``outputs`` (all when neither is given),
    with strength ≥ ``min_strength``, the ``top`` first by ``sort`` (0: all)."""
    n, total = int(store.meta["n_latents"]), store.array("connections/input").shape[0]
    for latent in (*inputs, *outputs):
        if not 0 <= latent < n:
            raise ConfigError(f"latent id {latent} is out of range: the SAEs have {n} latents (0–{n - 1})")
    if sort not in SORTS:
        raise ConfigError(f"--sort must be one of {', '.join(SORTS)}, not {sort!r}")
    if inputs or outputs:
        side, latents, other = ("input", inputs, outputs) if inputs and (not outputs or len(inputs) <= len(outputs)) \
            else ("output", outputs, inputs)
        rows = _latent_rows(store, side, latents)
        cols = _columns(store, rows)
        if other:
            keep = np.isin(cols["output" if side == "input" else "input"], other)
            cols = {k: v[keep] for k, v in cols.items()}
    elif sort == "strength":  # the rows are in this order: read only the first ones
        strength = store.array("connections/strength")
        end = total if top == 0 else min(total, top)
        if min_strength > 0:
            end = min(end, _first_below(strength, min_strength, total))
        cols = _columns(store, np.arange(end))
    else:
        cols = _columns(store, np.arange(total))
    keep = cols["strength"] >= min_strength
    cols = {k: v[keep] for k, v in cols.items()}
    order = np.argsort(-cols[SORTS[sort]], kind="stable")  # ties keep the strongest-first order
    if top:
        order = order[:top]
    return _connections(store, {k: v[order] for k, v in cols.items()})


def _first_below(strength: Any, threshold: float, total: int) -> int:
    """The first row whose strength is below ``threshold`` (strengths fall along the rows),
    reading one chunk at a time."""
    for lo in range(0, total, CHUNK_ROWS):
        block = strength[lo : lo + CHUNK_ROWS]
        below = np.flatnonzero(block < threshold)
        if len(below):
            return lo + int(below[0])
    return total


def _connections(store: st.Store, cols: dict[str, np.ndarray]) -> list[Connection]:
    in_labels, out_labels = store.array("latents/in_label")[...], store.array("latents/out_label")[...]
    return [Connection(int(cols["input"][i]), int(cols["output"][i]), float(cols["strength"][i]), int(cols["count"][i]),
                       float(cols["mean_abs"][i]), float(cols["max_abs"][i]), float(cols["mean"][i]),
                       str(in_labels[int(cols["input"][i])]), str(out_labels[int(cols["output"][i])]))
            for i in range(len(cols["input"]))]
