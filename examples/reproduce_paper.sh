#!/usr/bin/env bash
# The paper's comparisons on the bundled model (README, "Reproducing the paper"):
#   1. JSAEs across a λ sweep, λ = 0 being the plain SAE pair trained by the same code;
#   2. a JSAE on the trained model vs one on the same architecture re-initialised at random.
# Everything is evaluated on the bundled held-out text, which neither the model nor the SAEs saw.
#   bash examples/reproduce_paper.sh [OUTDIR]
# Environment: TRAIN_TOKENS (default 1.5M, two passes over the bundled sample), LAMS (default "0 1 2.67 8 24").
# Needs matplotlib for the plot (pip install 'jsaectl[plot]'); about 75 minutes on 2 CPU cores.
# Every stage skips work that is already done, so an interrupted run picks up where it stopped.
set -euo pipefail
OUT=${1:-runs/paper}
TRAIN_TOKENS=${TRAIN_TOKENS:-1.5M}
LAMS=${LAMS:-0 1 2.67 8 24}
HERE=$(dirname "$0")
python3 -c "import matplotlib" 2>/dev/null \
    || { echo "reproduce_paper.sh: the trade-off plot needs matplotlib (hint: pip install 'jsaectl[plot]')" >&2; exit 1; }
mkdir -p "$OUT"

# Activations: the whole bundled sample, and the held-out text, from the trained model and from
# the same architecture with random weights.
ACTS=$(jsaectl harvest --tokens 1M --out "$OUT/acts.zarr")
RAND=$(jsaectl harvest --tokens 1M --random-init --seed 0 --out "$OUT/acts-random.zarr")
HELDOUT=$(jsaectl harvest --dataset jsaectl-heldout --tokens 1M --out "$OUT/heldout.zarr")
RAND_HELDOUT=$(jsaectl harvest --dataset jsaectl-heldout --tokens 1M --random-init --seed 0 --out "$OUT/heldout-random.zarr")

# train ACTS λ OUT: a new run, or --resume one that an earlier call left at OUT (a finished run is skipped).
train() {
    local resume=(); [ -e "$3" ] && resume=(--resume)
    jsaectl train "$1" --lam "$2" --tokens "$TRAIN_TOKENS" --out "$3" "${resume[@]}" >/dev/null
}
for lam in $LAMS; do train "$ACTS" "$lam" "$OUT/jsae-lam$lam.zarr"; done
train "$RAND" 2.67 "$OUT/jsae-random-lam2.67.zarr"

echo "== 1. λ sweep on held-out text; λ = 0 is the plain SAE pair"
for lam in $LAMS; do echo "$OUT/jsae-lam$lam.zarr"; done \
    | jsaectl compare --acts "$HELDOUT" --tokens 50k --eval-tokens 50k --plot "$OUT/tradeoff.png" --json > "$OUT/sweep.json"
python3 "$HERE/paper_tables.py" sweep "$OUT/sweep.json"

echo "== 2. trained vs randomly initialised model, same λ, each on its own activations of the held-out text"
jsaectl compare "$OUT/jsae-random-lam2.67.zarr" --acts "$RAND_HELDOUT" --tokens 50k --eval-tokens 50k --json > "$OUT/random.json"
python3 "$HERE/paper_tables.py" random "$OUT/sweep.json" "$OUT/random.json"

# The jacobian store the README's showcase (examples/german_latent.py) reads.
jsaectl jacobian "$OUT/jsae-lam2.67.zarr" --tokens 300k --top 10 --out "$OUT/jacobian-lam2.67.zarr" >/dev/null
