"""How fast `jsaectl connections` answers, on a real jacobian store.

    python tests/bench/bench_query.py JACOBIAN_STORE      # e.g. the main job's (4M pairs)

Each query is timed in a fresh process's terms: the store is opened anew every time (reading
its metadata included), as a command line would; median of 5. Target (issue 14): under a
second on the default run's store, however many pairs it holds. For contrast, the same
question asked the old way (scanning the whole output column) is timed too.

Measured on the 2-core CPU development machine (torch 2.13.0 CPU), on the main job's store
(the README's first screen: 4,000,000 stored pairs of 6,144 × 6,144 latents), 2026-11-29:

    top 20 overall                                    41.3 ms   (20 rows)
    --output-latent 5785 --top 30 (busiest, 4,639)    52.2 ms   (30 rows)
    --output-latent 5650 (rarest, 4 connections)      59.9 ms   (4 rows)
    --input-latent 5588 --sort count                 252.9 ms   (20 rows)
    --min-strength 0.000113 --top 0                   50.5 ms   (2,001 rows)
    --sort count --top 20 (every pair read)          534.8 ms   (20 rows)
    (without the index: scan the output column)      215.3 ms

The whole `jsaectl connections` command (process start, no torch import) takes about 1.1 s.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np


def main() -> None:
    from jsaectl import store as st
    from jsaectl.connections import query

    url = sys.argv[1]
    store = st.open_store(url, "jacobian")
    outputs = store.array("connections/output")[...]
    counts = np.bincount(outputs)
    busy, rare = int(counts.argmax()), int(np.flatnonzero(counts)[counts[counts > 0].argmin()])
    first_input = int(store.array("connections/input")[0])
    strength = float(store.array("connections/strength")[2000])
    total = len(outputs)
    print(f"{url}: {total:,} stored pairs; busiest output latent {busy} ({counts[busy]:,} connections), rare {rare} "
          f"({counts[rare]:,})")
    cases = {
        "top 20 overall": dict(top=20),
        f"--output-latent {busy} --top 30": dict(outputs=(busy,), top=30),
        f"--output-latent {rare}": dict(outputs=(rare,), top=20),
        f"--input-latent {first_input} --sort count": dict(inputs=(first_input,), sort="count"),
        f"--min-strength {strength:.3g} --top 0": dict(min_strength=strength, top=0),
        "--sort count --top 20 (every pair read)": dict(sort="count", top=20),
    }
    for name, kwargs in cases.items():
        times = []
        for _ in range(5):
            began = time.perf_counter()
            found = query(st.open_store(url, "jacobian"), **kwargs)
            times.append(time.perf_counter() - began)
        print(f"{name:45s} {1000 * statistics.median(times):8.1f} ms   ({len(found):,} rows)")
    times = []
    for _ in range(3):
        began = time.perf_counter()
        s = st.open_store(url, "jacobian")
        rows = np.flatnonzero(s.array("connections/output")[...] == busy)[:30]
        {name: s.array(f"connections/{name}").get_orthogonal_selection(rows) for name in ("input", "strength", "count")}
        times.append(time.perf_counter() - began)
    print(f"{'(without the index: scan the output column)':45s} {1000 * statistics.median(times):8.1f} ms")


if __name__ == "__main__":
    main()
