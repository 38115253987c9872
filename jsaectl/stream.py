"""Shuffled, resumable, data-parallel batches from an activations store.

The order of rows is a pure function of (seed, lanes, store layout), which is what makes an
exact resume possible (seek to a batch number without reading what came before) and lets
N processes share one order:

* The rows are split into ``lanes``. In epoch e the store's chunks are permuted with a
  generator seeded by (seed, e); lane l takes the chunks at positions l, l + lanes, ...
* A lane reads its chunks in groups of ``buffer_chunks`` (the shuffle buffer), permutes the
  rows of each group with a generator seeded by (seed, e, l, group), and emits them in that
  order, epoch after epoch, as one endless row stream.
* Global batch i is, for each lane in order, rows ``[i·b, (i+1)·b)`` of its stream, where
  ``b = batch_size / lanes``. A process of a data-parallel run reads only its own lanes.

So a single process with ``lanes=2`` sees exactly the global batches of a 2-process run.
Rows at position 0 of a context (the BOS token, when the store has one) are skipped unless
asked for: their activations are outliers that say nothing about the text.
Memory is set by the buffer size, never by the store size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from jsaectl.acts import Activations, decode_rows
from jsaectl.store import check_finite


@dataclass(frozen=True)
class _Group:
    epoch: int
    index: int
    chunks: tuple[int, ...]
    size: int


class LaneReader:
    """One lane's endless stream of rows, as raw stored arrays (x, and y when stored)."""

    def __init__(self, acts: Activations, lane: int, lanes: int, seed: int, buffer_chunks: int, skip_bos: bool) -> None:
        self.acts, self.lane, self.lanes, self.seed = acts, lane, lanes, seed
        # Chunks hold whole contexts, so position 0 is every context_size-th row of a chunk.
        self.skip_bos = skip_bos and acts.bos
        self.buffer_chunks = max(1, buffer_chunks)
        if acts.n_chunks < lanes:
            raise ValueError(f"the store has {acts.n_chunks} chunks, fewer than {lanes} data lanes")

    def _groups(self, epoch: int) -> list[_Group]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.acts.n_chunks)
        mine = order[self.lane :: self.lanes]
        groups = []
        for i in range(0, len(mine), self.buffer_chunks):
            chunks = tuple(int(c) for c in mine[i : i + self.buffer_chunks])
            size = sum(self._kept(hi - lo) for lo, hi in map(self.acts.chunk_range, chunks))
            groups.append(_Group(epoch, i // self.buffer_chunks, chunks, size))
        return groups

    def _kept(self, rows: int) -> int:
        return rows - rows // self.acts.context_size if self.skip_bos else rows

    def _read(self, name: str, lo: int, hi: int) -> np.ndarray:
        rows = self.acts.read(name, lo, hi)
        return rows[np.arange(hi - lo) % self.acts.context_size != 0] if self.skip_bos else rows

    def _load(self, group: _Group) -> tuple[np.ndarray, np.ndarray | None]:
        ranges = [self.acts.chunk_range(c) for c in group.chunks]
        x = np.concatenate([self._read("x", lo, hi) for lo, hi in ranges])
        y = np.concatenate([self._read("y", lo, hi) for lo, hi in ranges]) if self.acts.has_y else None
        perm = np.random.default_rng([self.seed, group.epoch, self.lane, group.index]).permutation(len(x))
        return x[perm], (y[perm] if y is not None else None)

    def rows(self, start: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Pieces of the row stream from row ``start`` on (seeking costs no reading)."""
        epoch, offset = 0, start
        while True:
            for group in self._groups(epoch):
                if offset >= group.size:
                    offset -= group.size
                    continue
                x, y = self._load(group)
                yield x[offset:], (y[offset:] if y is not None else None)
                offset = 0
            epoch += 1


def _take(pieces: Iterator[tuple[np.ndarray, np.ndarray | None]], n: int, carry: list) -> tuple[np.ndarray, np.ndarray | None]:
    """The next n rows of a lane, across piece boundaries (``carry`` keeps the remainder)."""
    xs, ys, have = [], [], 0
    while have < n:
        if not carry:
            carry.append(next(pieces))
        x, y = carry.pop()
        need = n - have
        xs.append(x[:need])
        ys.append(y[:need] if y is not None else None)
        have += len(xs[-1])
        if len(x) > need:
            carry.append((x[need:], y[need:] if y is not None else None))
    return np.concatenate(xs), (np.concatenate(ys) if ys[0] is not None else None)


class BatchStream:
    """Batches ``(x, y or None)`` as float32 tensors for this process, prefetched on a thread."""

    def __init__(self, acts: Activations, *, batch_size: int, lanes: int, rank: int, world: int, seed: int,
                 buffer_tokens: int, skip_bos: bool = True, start_batch: int = 0, prefetch: int = 3) -> None:
        if batch_size % lanes or lanes % world:
            raise ValueError("batch_size must be a multiple of lanes, and lanes a multiple of the world size")
        self.acts = acts
        self.lane_batch = batch_size // lanes
        my_lanes = range(rank * lanes // world, (rank + 1) * lanes // world)
        buffer_chunks = max(1, -(-buffer_tokens // (lanes * acts.rows_per_chunk)))
        self._readers = [LaneReader(acts, lane, lanes, seed, buffer_chunks, skip_bos) for lane in my_lanes]
        self._start = start_batch
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True, name="jsaectl-batches")
        self._thread.start()

    def _fill(self) -> None:
        try:
            streams = [r.rows(self._start * self.lane_batch) for r in self._readers]
            carries: list[list] = [[] for _ in streams]
            while not self._stop.is_set():
                parts = [_take(s, self.lane_batch, c) for s, c in zip(streams, carries)]
                x = decode_rows(np.concatenate([p[0] for p in parts]), self.acts.store_dtype)
                y = None if parts[0][1] is None else decode_rows(np.concatenate([p[1] for p in parts]), self.acts.store_dtype)
                for name, v in (("x", x), ("y", y)):
                    if v is not None:
                        check_finite(v, f"{self.acts.url}: a training batch of {name}")
                self._put((x, y))
        except BaseException as e:  # hand the failure to the consumer
            self._put(e)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> BatchStream:
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
