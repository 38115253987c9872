"""What storing costs: checksums and compression, on the write (harvest) and read (train) paths.

    python tests/bench/bench_store.py              # d_model 768, 393k tokens of float16 (604 MB raw)
    python tests/bench/bench_store.py --small      # d_model 192, 131k tokens

Four ways to store the same float16 activations (harvest's layout: chunks of whole 256-token
contexts, >= 1 MiB), taking turns so that a drifting shared host affects all alike:

  zstd + crc32c    jsaectl's default (format 2)
  zstd             format 1: no checksum
  none + crc32c    `harvest --compression none`
  none             no checksum, no compression

For each: the time to write every chunk (as harvest's writer thread does), the size on disk,
the training stream's throughput (`jsaectl.stream.BatchStream`: shuffled lanes, the training
batches of 4096 rows, decoded to float32 and checked to be finite), and a plain sequential
zarr read of the same bytes (the floor).

Activations are random normal here, which zstd compresses about as badly as real ones (real
activations: 563 MB for 614 MB raw at d_model 768).

Measured on the 2-core CPU development machine (2026-11-29, torch 2.13.0 CPU, 2 threads; a
shared host; the stream reading chunks on several threads), full shape, median of 3 rounds
taking turns, `--train-steps 6` (9 min 12 s):

  variant          write MB/s   on disk  stream tokens/s  sequential read  train tokens/s
  zstd + crc32c           155     555MB           76,906          173,691             700
  zstd                    127     555MB           95,220          231,686             699
  none + crc32c           253     604MB          109,685          486,832             659
  none                    242     604MB          127,839          501,835             709

  Uncompressed (harvest's default since 2026-11-28): 8.8% more disk, written 1.63× and streamed
  1.43× faster than zstd (both with checksums). The checksum: write -22.0% / -4.6% (zstd / none;
  negative: faster with it, i.e. noise), train -0.2% / +7.1% (the stream runs far ahead of
  training, data wait 0%), but the stream alone is 19% / 14% slower with it. crc32c itself runs
  at ~10 GB/s here (google-crc32c, C), so the stream's cost is not the checksum's arithmetic
  (0.1 s for two passes over 604 MB) but, presumably, the buffer handling around it (not
  measured apart); at 110k tokens/s on 2 cores the uncompressed stream still feeds ~27
  training steps of 4096 tokens a second. The previous run (2026-11-28, one reader thread):
  stream 59,967 / 59,532 / 64,578 / 60,580 tokens/s for the same four.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from jsaectl import store as st
from jsaectl.acts import Activations
from jsaectl.stream import BatchStream

VARIANTS = {  # name -> (compression, checksum)
    "zstd + crc32c": ("zstd", True),
    "zstd": ("zstd", False),
    "none + crc32c": ("none", True),
    "none": ("none", False),
}


def _codecs(checksum: bool):
    full = st.codecs

    def codecs(compression: str = "zstd"):
        found = full(compression)
        return found if checksum else found[:-1]  # the crc32c is always last

    return codecs


def build(path: Path, d: int, n: int, compression: str, checksum: bool, data: np.ndarray) -> float:
    """An activations store holding ``data`` [n, d]; returns the seconds spent writing x."""
    T = 256
    per_chunk = max(1, -(-st.MIN_CHUNK_BYTES // (T * d * 2)))
    rows = per_chunk * T
    original = st.codecs
    st.codecs = _codecs(checksum)
    try:
        with st.writing(str(path), "activations", {"bench": compression, "crc": checksum}, overwrite=True) as (s, _):
            x = st.require_array(s.group, "x", shape=(n, d), chunks=(rows, d), dtype="float16", fill_value=0,
                                 compression=compression)
            began = time.perf_counter()
            for lo in range(0, n, rows):
                x[lo : lo + rows] = data[lo : lo + rows]
            elapsed = time.perf_counter() - began
            idx = np.arange(n, dtype=np.int32)
            st.write_array(s.group, "tokens", idx % 50)
            st.write_array(s.group, "position", idx % T)
            st.write_array(s.group, "vocab", np.array([str(i) for i in range(50)], dtype=object))
            rng = np.random.default_rng(1)
            for name, shape in (("W_in", (4 * d, d)), ("b_in", (4 * d,)), ("W_out", (d, 4 * d)), ("b_out", (d,))):
                st.write_array(s.group, f"mlp/{name}", (0.05 * rng.standard_normal(shape)).astype(np.float32))
            s.group["mlp"].attrs.update({"activation": "gelu", "gated": False})
            s.mark_complete(n_tokens=n, d_model=d, d_mlp=4 * d, context_size=T, contexts_per_chunk=per_chunk,
                            store_dtype="float16", data={"bos": True})
    finally:
        st.codecs = original
    return elapsed


def stream_rate(path: Path, batches: int) -> float:
    acts = Activations.open(str(path))
    stream = BatchStream(acts, batch_size=4096, lanes=1, rank=0, world=1, seed=0, buffer_tokens=32 * 4096)
    try:
        began = time.perf_counter()
        for _ in range(batches):
            next(stream)
        return batches * 4096 / (time.perf_counter() - began)
    finally:
        stream.close()


def sequential_rate(path: Path) -> float:
    acts = Activations.open(str(path))
    x = acts.store.array("x")
    rows = acts.rows_per_chunk
    began = time.perf_counter()
    for lo in range(0, acts.n_tokens, rows):
        x[lo : lo + rows]
    return acts.n_tokens / (time.perf_counter() - began)


def train_rate(path: Path, steps: int) -> float:
    """`jsaectl train` throughput reading this store (the trainer's own tokens/s figure)."""
    from jsaectl.train import TrainConfig, train

    out = path.with_suffix(".jsae.zarr")
    result = train(TrainConfig(acts=str(path), expansion=4, k=32, tokens=steps * 4096, checkpoint_every=0,
                               out=str(out), overwrite=True))
    shutil.rmtree(out, ignore_errors=True)
    return result.tokens_per_second


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in (path / "x").rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every variant, taking turns")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="also time `train` (4x expansion, k=32, batches of 4096) for this many steps on each store")
    args = parser.parse_args()
    d, n = (192, 131072) if args.small else (768, 393216)
    data = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32).astype(np.float16)
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    batches = n // 4096 - 1  # one pass over the store, less the BOS rows
    print(f"d_model {d}, {n:,} tokens of float16 ({n * d * 2 / 1e6:,.0f} MB raw), {args.rounds} rounds taking turns; "
          f"stream: {batches} batches of 4096 (one pass, first buffer fill included); {os.cpu_count()} CPUs")
    results: dict[str, dict[str, list[float]]] = {v: {"write": [], "stream": [], "seq": [], "train": []} for v in VARIANTS}
    sizes = {}
    for _ in range(args.rounds):
        for name, (compression, checksum) in VARIANTS.items():
            path = tmp / f"{name.replace(' ', '').replace('+', '_')}.zarr"
            seconds = build(path, d, n, compression, checksum, data)
            results[name]["write"].append(n * d * 2 / seconds / 1e6)
            sizes[name] = disk_bytes(path)
            results[name]["stream"].append(stream_rate(path, batches))
            results[name]["seq"].append(sequential_rate(path))
            if args.train_steps:
                results[name]["train"].append(train_rate(path, args.train_steps))
    shutil.rmtree(tmp, ignore_errors=True)
    med = {v: {k: statistics.median(r) if r else float("nan") for k, r in m.items()} for v, m in results.items()}
    print(f"{'variant':<15} {'write MB/s':>11} {'on disk':>9} {'stream tokens/s':>16} {'sequential read':>16} {'train tokens/s':>15}")
    for name in VARIANTS:
        m = med[name]
        print(f"{name:<15} {m['write']:>11,.0f} {sizes[name] / 1e6:>7,.0f}MB {m['stream']:>16,.0f} {m['seq']:>16,.0f} "
              f"{m['train']:>15,.0f}")
    for base in ("zstd", "none"):
        with_crc, without = med[f"{base} + crc32c"], med[base]
        print(f"checksum cost ({base}): write {1 - with_crc['write'] / without['write']:+.1%} of throughput, "
              f"stream {1 - with_crc['stream'] / without['stream']:+.1%}, train {1 - with_crc['train'] / without['train']:+.1%}")
    print(f"stream / sequential read (zstd + crc32c): {med['zstd + crc32c']['stream'] / med['zstd + crc32c']['seq']:.2f}x; "
          f"uncompressed stream vs zstd: {med['none + crc32c']['stream'] / med['zstd + crc32c']['stream']:.2f}x")


if __name__ == "__main__":
    main()
