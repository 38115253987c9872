#!/usr/bin/env bash
# The paper's two comparisons on the bundled model (see README, "Reproducing the paper"):
#   1. a JSAE vs the same SAE pair trained with λ = 0;
#   2. a JSAE on the trained model vs one on the same architecture re-initialised at random.
#   bash examples/reproduce_paper.sh [OUTDIR]
set -euo pipefail
OUT=${1:-runs/paper}
mkdir -p "$OUT"
TOKENS=${TOKENS:-2M}
ACTS=$(jsaectl harvest --tokens "$TOKENS" --out "$OUT/acts.zarr")
RAND=$(jsaectl harvest --tokens "$TOKENS" --random-init --seed 0 --out "$OUT/acts-random.zarr")
HELDOUT=$(jsaectl harvest --dataset jsaectl-heldout --tokens 100k --out "$OUT/heldout.zarr")

jsaectl train "$ACTS" --out "$OUT/jsae.zarr" >/dev/null
jsaectl train "$ACTS" --lam 0 --out "$OUT/pair-lam0.zarr" >/dev/null
jsaectl train "$RAND" --out "$OUT/jsae-random.zarr" >/dev/null

echo "== 1. JSAE vs the same pair with λ = 0 (held-out text)"
jsaectl compare "$OUT/jsae.zarr" "$OUT/pair-lam0.zarr" --acts "$HELDOUT"
echo "== 2. trained vs randomly initialised model (each on its own activations of the same text)"
jsaectl compare "$OUT/jsae.zarr" "$OUT/jsae-random.zarr" --eval-tokens 20k
