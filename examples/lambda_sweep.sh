#!/usr/bin/env bash
# A λ sweep on one activations store, ending in the trade-off table and plot (issue #6).
#   bash examples/lambda_sweep.sh [OUTDIR] [λ values...]
# Needs matplotlib for the plot: pip install 'jsaectl[plot]'.
set -euo pipefail
OUT=${1:-runs/sweep}; shift || true
LAMS=${*:-0 0.5 1 2 4 8}
mkdir -p "$OUT"
ACTS=$(jsaectl harvest --tokens 1M --out "$OUT/acts.zarr")
HELDOUT=$(jsaectl harvest --dataset jsaectl-heldout --tokens 100k --out "$OUT/heldout.zarr")
for lam in $LAMS; do
    jsaectl train "$ACTS" --lam "$lam" --out "$OUT/jsae-lam$lam.zarr" >/dev/null
    echo "$OUT/jsae-lam$lam.zarr"
done | jsaectl compare --acts "$HELDOUT" --plot "$OUT/tradeoff.png"
