#!/usr/bin/env bash
# The paper's comparisons on the bundled model (README, "Reproducing the paper"):
#   1. JSAEs across a λ sweep, λ = 0 being the plain SAE pair trained by the same code;
#   2. a JSAE on the trained model vs one on the same architecture re-initialised at random.
# Everything is evaluated on the bundled held-out text, which neither the model nor the SAEs saw.
#   bash examples/reproduce_paper.sh [OUTDIR]
# Environment: TRAIN_TOKENS (default 1.5M, two passes over the bundled sample), LAMS (default "0 1 2.67 8 24").
# Needs matplotlib for the plot (pip install 'jsaectl[plot]'); about an hour on 2 CPU cores.
set -euo pipefail
OUT=${1:-runs/paper}
TRAIN_TOKENS=${TRAIN_TOKENS:-1.5M}
LAMS=${LAMS:-0 1 2.67 8 24}
mkdir -p "$OUT"

ACTS=$(jsaectl harvest --tokens 1M --out "$OUT/acts.zarr")                                # the whole bundled sample
RAND=$(jsaectl harvest --tokens 1M --random-init --seed 0 --out "$OUT/acts-random.zarr")  # same text, random weights
HELDOUT=$(jsaectl harvest --dataset jsaectl-heldout --tokens 1M --out "$OUT/heldout.zarr")

for lam in $LAMS; do
    jsaectl train "$ACTS" --lam "$lam" --tokens "$TRAIN_TOKENS" --out "$OUT/jsae-lam$lam.zarr" --json > "$OUT/train-lam$lam.json"
done
jsaectl train "$RAND" --lam 2.67 --tokens "$TRAIN_TOKENS" --out "$OUT/jsae-random-lam2.67.zarr" --json > "$OUT/train-random.json"

echo "== 1. λ sweep (held-out text); λ = 0 is the plain SAE pair"
for lam in $LAMS; do echo "$OUT/jsae-lam$lam.zarr"; done \
    | jsaectl compare --acts "$HELDOUT" --tokens 50k --eval-tokens 50k --plot "$OUT/tradeoff.png" --csv > "$OUT/sweep.csv"
for lam in $LAMS; do echo "$OUT/jsae-lam$lam.zarr"; done | jsaectl compare --acts "$HELDOUT" --tokens 50k --eval-tokens 50k

echo "== 2. trained vs randomly initialised model, same λ (each on its own activations of the held-out text)"
RAND_HELDOUT=$(jsaectl harvest --dataset jsaectl-heldout --tokens 1M --random-init --seed 0 --out "$OUT/heldout-random.zarr")
jsaectl compare "$OUT/jsae-lam2.67.zarr" --acts "$HELDOUT" --tokens 50k --eval-tokens 50k --json > "$OUT/trained.json"
jsaectl compare "$OUT/jsae-random-lam2.67.zarr" --acts "$RAND_HELDOUT" --tokens 50k --eval-tokens 50k --json > "$OUT/random.json"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.load(open(f"{out}/{name}.json"))[0] for name in ("trained", "random")]
print(f"{'':28s} {'trained model':>16s} {'random init':>16s}")
for key, label in (("j>0.01", "|J| > 0.01 per token"), ("j>0.01_frac", "  as a fraction of k²"), ("mean_abs_j", "mean |J|"),
                   ("fvu_in", "FVU input SAE"), ("fvu_out", "FVU output SAE"), ("ce_score_out", "CE score output SAE")):
    print(f"{label:28s} {rows[0][key]:16.4g} {rows[1][key]:16.4g}")
PY
