"""The pipeline from Python: every stage is a function of a config dataclass.

    python examples/library_api.py OUTDIR [TOKENS]     # TOKENS harvested, default 300k
"""

import sys

from jsaectl.harvest import HarvestConfig, harvest
from jsaectl.jacobian import JacobianConfig, jacobian
from jsaectl.trained import LoadedJSAE
from jsaectl.train import TrainConfig, train

out = sys.argv[1] if len(sys.argv) > 1 else "runs/api"
tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 300_000
acts = harvest(HarvestConfig(tokens=tokens, out=f"{out}/acts.zarr"))  # the bundled model and corpus
jsae = train(TrainConfig(acts=acts.store, expansion=16, out=f"{out}/jsae.zarr"))
print("trained:", {k: round(v, 3) for k, v in jsae.metrics.items() if k in ("fvu_in", "fvu_out", "j_count")})

result = jacobian(JacobianConfig(jsae=jsae.store, tokens=tokens // 6, out=f"{out}/jacobian.zarr"))
above = result.sparsity["above"]["0.01"]
print(f"|J| > 0.01: {above['mean_count']:.1f} entries per token ({above['fraction']:.1%} of k²); Gini of |J| {result.sparsity['gini']:.3f}")
for c in result.top[:5]:
    print(f"{c.input:5d} {c.input_label:30s} -> {c.output:5d} {c.output_label:30s} strength {c.strength:.3g}")

# Lower level: encode tokens yourself and take the Jacobian between the active latents.
model = LoadedJSAE.open(jsae.store)
batch = next(model.batches(n_tokens=256, batch_size=256))
print("J of the first analysed token:", tuple(batch.J[0].shape), "rows: output latents", batch.code_out.indices[0, :5].tolist())
