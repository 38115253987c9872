"""The training data order: shuffled, complete, seekable, and the same split over processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jsaectl import store as st
from jsaectl.acts import Activations
from jsaectl.stream import BatchStream

T, PER_CHUNK, N = 32, 16, 32 * 16 * 23  # 23 chunks of 16 contexts


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> Activations:
    """An activations store whose row r holds the number r, so every row can be identified."""
    with st.writing(str(tmp_path_factory.mktemp("n") / "n.zarr"), "activations", {"test": 1}, overwrite=False) as (s, _):
        x = st.create_array(s.group, "x", shape=(N, 4), chunks=(T * PER_CHUNK, 4), dtype="float32")
        x[...] = np.repeat(np.arange(N, dtype=np.float32)[:, None], 4, 1)
        rows = np.arange(N, dtype=np.int32)
        st.write_array(s.group, "tokens", rows % 7)
        st.write_array(s.group, "position", rows % T)
        st.write_array(s.group, "vocab", np.array(list("abcdefg"), dtype=object))
        for name, shape in (("W_in", (8, 4)), ("b_in", (8,)), ("W_out", (4, 8)), ("b_out", (4,))):
            st.write_array(s.group, f"mlp/{name}", np.zeros(shape, dtype=np.float32))
        s.mark_complete(n_tokens=N, d_model=4, context_size=T, contexts_per_chunk=PER_CHUNK, store_dtype="float32",
                        data={"bos": True})
    return Activations.open(s.url)


def _take(stream: BatchStream, n: int) -> list[torch.Tensor]:
    try:
        return [next(stream)[0] for _ in range(n)]
    finally:
        stream.close()


def _stream(acts, **kw) -> BatchStream:
    args = dict(batch_size=512, lanes=1, rank=0, world=1, seed=3, buffer_tokens=4096, include_bos=False)
    return BatchStream(acts, **{**args, **kw})


def test_one_epoch_visits_every_non_bos_row_once(numbered):
    usable = N - N // T
    rows = torch.cat(_take(_stream(numbered), usable // 512))[:, 0].long().tolist()
    assert len(set(rows)) == len(rows) == (usable // 512) * 512
    assert all(r % T != 0 for r in rows)  # no BOS rows
    assert rows != sorted(rows)  # shuffled
    with_bos = torch.cat(_take(_stream(numbered, include_bos=True), N // 512))[:, 0].long().tolist()
    assert sorted(with_bos) == list(range(N))  # N is 23 batches of 512: one epoch exactly


def test_seeking_gives_the_same_batches_as_reading_on(numbered):
    full = _take(_stream(numbered), 40)  # crosses two epoch boundaries (~11.4k usable rows an epoch)
    resumed = _take(_stream(numbered, start_batch=29), 11)
    for a, b in zip(full[29:], resumed):
        assert torch.equal(a, b)
    # the second epoch visits the rows again, in another order
    first, second = (torch.cat(full[i * 22 : (i + 1) * 22])[:, 0] for i in range(2))
    assert not torch.equal(first, second)


def test_lanes_split_over_processes_make_the_same_global_batches(numbered):
    acts = numbered
    single = _take(_stream(acts, lanes=2), 5)
    rank0 = _take(_stream(acts, lanes=2, world=2, rank=0), 5)
    rank1 = _take(_stream(acts, lanes=2, world=2, rank=1), 5)
    for s, a, b in zip(single, rank0, rank1):
        assert torch.equal(s, torch.cat([a, b]))


def test_different_seeds_give_different_orders(numbered):
    acts = numbered
    assert not torch.equal(_take(_stream(acts, seed=1), 1)[0], _take(_stream(acts, seed=2), 1)[0])
