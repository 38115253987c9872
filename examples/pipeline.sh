#!/usr/bin/env bash
# The whole pipeline on the bundled offline default (the jsaectl-demo model and the bundled
# English/German corpus), stage by stage, each store named so it can be re-run or reused.
#   bash examples/pipeline.sh [OUTDIR]
set -euo pipefail
OUT=${1:-runs/demo}
mkdir -p "$OUT"

ACTS=$(jsaectl harvest --tokens 1M --out "$OUT/acts.zarr")          # jsaectl-demo, layer 2, bundled corpus
JSAE=$(jsaectl train "$ACTS" --out "$OUT/jsae.zarr")                # k=32, expansion 32, λ = 0.5·k²/d_model
JAC=$(jsaectl jacobian "$JSAE" --tokens 200k --linearity 200 --out "$OUT/jacobian.zarr")

# The strongest connection: where does it act?
CONN=$(python3 -c "import zarr,sys; g=zarr.open_group(sys.argv[1])['connections']; print(f\"{g['input'][0]}:{g['output'][0]}\")" "$JAC")
jsaectl maxact "$JSAE" --connection "$CONN" --examples 5
jsaectl export "$JAC" --format connections-csv --out "$OUT/connections" --overwrite
