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
from jsaectl.configs import check_latent_ids

COLUMNS = ("input", "output", "strength", "count", "mean_abs", "max_abs", "mean")
FIELDS = (*COLUMNS, "input_label", "output_label")  # a Connection's, as tables and exports show it
SORTS = {"strength": "strength", "mean": "mean_abs", "count": "count"}  # --sort name -> column
# Rows per chunk of the connection columns: small, so that the few scattered rows a query
# wants are read from small chunks (64 KB of a float32 column).
CHUNK_ROWS = 1 << 14


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
        _write_rows(conn, name, columns[name])
    index = group.require_group("index")
    for side in ("input", "output"):
        latents = columns[side]
        rows = np.argsort(latents, kind="stable").astype(np.int64)  # stable: strongest first within a latent
        offsets = np.searchsorted(latents[rows], np.arange(n_latents + 1)).astype(np.int64)
        _write_rows(index, f"by_{side}", rows)
        st.write_array(index, f"{side}_offsets", offsets)


def _write_rows(group: Any, name: str, values: np.ndarray) -> None:
    """A per-connection column, in chunks of CHUNK_ROWS rows (a query reads only the chunks it needs)."""
    arr = st.create_array(group, name, shape=values.shape, dtype=values.dtype, chunks=(min(len(values), CHUNK_ROWS) or 1,),
                          dimension_names=("connection",))
    arr[...] = values


def _latent_rows(store: st.Store, side: str, latents: tuple[int, ...]) -> np.ndarray:
    """Rows (in the strongest-first order) of every connection with one of ``latents`` on ``side``."""
    offsets = store.array(f"index/{side}_offsets")
    by = store.array(f"index/by_{side}")
    parts = []
    for latent in latents:
        lo, hi = (int(v) for v in offsets[latent : latent + 2])
        parts.append(by[lo:hi])
    return np.sort(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))


def _read(store: st.Store, name: str, rows: np.ndarray) -> np.ndarray:
    """Column ``name`` at ``rows`` (sorted): a slice when they are one run, else only their chunks."""
    arr = store.array(f"connections/{name}")
    if len(rows) == 0:
        return np.zeros(0, dtype=arr.dtype)
    if rows[-1] - rows[0] + 1 == len(rows):
        values = arr[int(rows[0]) : int(rows[-1]) + 1]
    else:
        values = arr.get_orthogonal_selection(rows)
    if values.dtype.kind == "f":
        st.check_finite(values, f"{store.url}: connections/{name}")
    return values


def query(store: st.Store, *, inputs: tuple[int, ...] = (), outputs: tuple[int, ...] = (), top: int = 20,
          min_strength: float = 0.0, sort: str = "strength") -> list[Connection]:
    """The connections from ``inputs`` and/or into ``outputs`` (all when neither is given),
    with strength ≥ ``min_strength``, the ``top`` first by ``sort`` (0: all). Reads the
    candidates' rows from the index, then only the columns that filter and order them, and
    all columns only for the rows returned."""
    n, total = int(store.meta["n_latents"]), store.array("connections/input").shape[0]
    inputs, outputs = tuple(dict.fromkeys(inputs)), tuple(dict.fromkeys(outputs))  # a latent given twice counts once
    check_latent_ids((*inputs, *outputs), n)
    if inputs or outputs:
        rows = _candidates(store, inputs, outputs)
    elif sort == "strength":  # the rows are in this order: only the first ones are read
        end = total if top == 0 else min(total, top)
        if min_strength > 0:
            end = min(end, _first_below(store.array("connections/strength"), min_strength, total))
        rows = np.arange(end)
    else:
        rows = np.arange(total)
    if min_strength > 0 and len(rows):
        rows = rows[_read(store, "strength", rows) >= min_strength]
    if sort != "strength" and len(rows):
        key = _read(store, SORTS[sort], rows)
        order = np.argsort(-key, kind="stable")  # ties keep the strongest-first order
        rows = rows[order[:top] if top else order]
    elif top:
        rows = rows[:top]  # candidates are in row order: strongest first
    chosen = np.sort(rows)
    cols = {name: _read(store, name, chosen) for name in COLUMNS}
    back = np.searchsorted(chosen, rows)  # the order decided above
    return _connections(store, {k: v[back] for k, v in cols.items()})


def _candidates(store: st.Store, inputs: tuple[int, ...], outputs: tuple[int, ...]) -> np.ndarray:
    """Rows (ascending: strongest first) with one of ``inputs`` as input and/or ``outputs`` as output."""
    side, latents, other = ("input", inputs, outputs) if inputs and (not outputs or len(inputs) <= len(outputs)) \
        else ("output", outputs, inputs)
    rows = _latent_rows(store, side, latents)
    if other:
        rows = rows[np.isin(_read(store, "output" if side == "input" else "input", rows), other)]
    return rows


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
