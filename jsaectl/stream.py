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
asked for (``Activations.keep``: the one rule for every reader).

Memory is set by the buffer size, never by the store size. So that training does not wait
for data, a group's chunks are read by several threads at once (zstd decoding releases the
GIL), the next group is read while the current one is served, and batches are assembled on
a background thread; on CUDA they come in pinned memory in the stored precision, so the copy
to the GPU is asynchronous and half the size (converted to float32 there).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from jsaectl.acts import Activations, decode_rows


@dataclass(frozen=True)
class _Group:
    epoch: int
    index: int
    chunks: tuple[int, ...]
    size: int


class LaneReader:
    """One lane's endless stream of rows, as raw stored arrays (x, and y when stored)."""

    def __init__(self, acts: Activations, lane: int, lanes: int, seed: int, buffer_chunks: int, include_bos: bool,
                 pool: ThreadPoolExecutor, ahead: ThreadPoolExecutor) -> None:
        self.acts, self.lane, self.lanes, self.seed = acts, lane, lanes, seed
        self.include_bos = include_bos
        self.buffer_chunks = max(1, buffer_chunks)
        # Chunk reads go to ``pool``; whole-group look-aheads to ``ahead`` (never to ``pool``: a
        # look-ahead waits on chunk reads, and must not hold the threads they need).
        self.pool, self.ahead = pool, ahead
        if acts.n_chunks < lanes:
            raise ValueError(f"the store has {acts.n_chunks} chunks, fewer than {lanes} data lanes")

    def _groups(self, epoch: int) -> list[_Group]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.acts.n_chunks)
        mine = order[self.lane :: self.lanes]
        groups = []
        for i in range(0, len(mine), self.buffer_chunks):
            chunks = tuple(int(c) for c in mine[i : i + self.buffer_chunks])
            size = sum(self.acts.n_kept_between(lo, hi, self.include_bos) for lo, hi in map(self.acts.chunk_range, chunks))
            groups.append(_Group(epoch, i // self.buffer_chunks, chunks, size))
        return groups

    def _read(self, name: str, c: int) -> np.ndarray:
        lo, hi = self.acts.chunk_range(c)
        return self.acts.read(name, lo, hi)[self.acts.keep(lo, hi, self.include_bos)]

    def _load(self, group: _Group) -> tuple[np.ndarray, np.ndarray | None]:
        """The group's rows, shuffled: its chunks read by the pool's threads at once."""
        names = ["x", "y"] if self.acts.has_y else ["x"]
        parts = {name: list(self.pool.map(lambda c, n=name: self._read(n, c), group.chunks)) for name in names}
        x = np.concatenate(parts["x"])
        y = np.concatenate(parts["y"]) if "y" in parts else None
        perm = np.random.default_rng([self.seed, group.epoch, self.lane, group.index]).permutation(len(x))
        return x[perm], (y[perm] if y is not None else None)

    def rows(self, start: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Pieces of the row stream from row ``start`` on (seeking costs no reading); the next
        group is read in the background while this one is served."""
        epoch, offset = 0, start
        pending: tuple[_Group, Future] | None = None
        while True:
            groups = self._groups(epoch)
            for i, group in enumerate(groups):
                if offset >= group.size:
                    offset -= group.size
                    continue
                loaded = pending[1].result() if pending and pending[0] == group else self._load(group)
                following = groups[i + 1] if i + 1 < len(groups) else self._groups(epoch + 1)[0]
                pending = (following, self.ahead.submit(self._load, following))
                x, y = loaded
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
    """Batches ``(x, y or None)`` for this process, assembled on a background thread.

    On the CPU they are float32 tensors. With ``pinned`` (for CUDA) they are the stored
    precision (float16 or bfloat16; float32 stores stay float32) in pinned memory: copy them
    with ``.to(device, non_blocking=True)`` and convert there."""

    def __init__(self, acts: Activations, *, batch_size: int, lanes: int, rank: int, world: int, seed: int,
                 buffer_tokens: int, include_bos: bool = False, start_batch: int = 0, prefetch: int = 3,
                 reader_threads: int = 4, pinned: bool = False) -> None:
        if batch_size % lanes or lanes % world:
            raise ValueError("batch_size must be a multiple of lanes, and lanes a multiple of the world size")
        self.acts, self.pinned = acts, pinned
        self.lane_batch = batch_size // lanes
        my_lanes = range(rank * lanes // world, (rank + 1) * lanes // world)
        buffer_chunks = max(1, -(-buffer_tokens // (lanes * acts.rows_per_chunk)))
        self._pool = ThreadPoolExecutor(max_workers=max(1, reader_threads), thread_name_prefix="jsaectl-reader")
        self._ahead = ThreadPoolExecutor(max_workers=len(my_lanes), thread_name_prefix="jsaectl-lookahead")
        self._readers = [LaneReader(acts, lane, lanes, seed, buffer_chunks, include_bos, self._pool, self._ahead)
                         for lane in my_lanes]
        self._start = start_batch
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True, name="jsaectl-batches")
        self._thread.start()

    def _tensor(self, raw: np.ndarray, name: str) -> torch.Tensor:
        self.acts.check_finite(raw, f"a training batch of {name} (rows of the shuffle buffer)")
        if not self.pinned:
            values = decode_rows(raw, self.acts.store_dtype)
        else:
            values = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16) if self.acts.store_dtype == "bfloat16" \
                else torch.from_numpy(raw)
            values = values.pin_memory()
        return values

    def _fill(self) -> None:
        try:
            streams = [r.rows(self._start * self.lane_batch) for r in self._readers]
            carries: list[list] = [[] for _ in streams]
            while not self._stop.is_set():
                parts = [_take(s, self.lane_batch, c) for s, c in zip(streams, carries)]
                x = self._tensor(np.concatenate([p[0] for p in parts]), "x")
                y = None if parts[0][1] is None else self._tensor(np.concatenate([p[1] for p in parts]), "y")
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
        self._ahead.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
