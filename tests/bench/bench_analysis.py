"""Throughput of `jsaectl jacobian` and `jsaectl maxact` vs the bare encoder matmul.

    python tests/bench/bench_analysis.py            # Pythia-70m's MLP shape: d=512, m=2048, n=16384, k=32
    python tests/bench/bench_analysis.py --small    # d=128, n=4096

A random GPT-NeoX model of that width is harvested (one layer, float16 store), a JSAE of that
shape is initialised (one training step: the analysis costs do not depend on the weights),
and over the same tokens, in one run:

  bare matmul      x @ W_enc of the input SAE, x already in memory (the floor)
  bare + read      the same, reading x from the store as the analyses do
  maxact           `--top-latents` scan: encode, TopK, streaming top-k of every latent
  jacobian         both SAEs, y = f(x), J for every token, connections, labels

Target (issue #5): maxact within 2x of the bare encoder matmul.
Measured on the 2-core CPU development machine (torch 2.13.0 CPU, 2 threads), full shape:
  2026-11-26: bare matmul 7,011 tokens/s; bare + read 6,518; maxact 4,893 (1.43x the bare matmul's time); jacobian 1,628.
  2026-11-25: bare matmul 8,967 tokens/s; bare + read 8,467; maxact 6,563 (1.37x the bare matmul's time); jacobian 1,897.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--tokens", type=int, default=65536)
    args = parser.parse_args()
    d, n, k = (128, 4096, 32) if args.small else (512, 16384, 32)

    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    from jsaectl.acts import Activations
    from jsaectl.harvest import HarvestConfig, harvest
    from jsaectl.jacobian import JacobianConfig, jacobian
    from jsaectl.maxact import MaxactConfig, maxact
    from jsaectl.trained import LoadedJSAE
    from jsaectl.train import TrainConfig, train

    sys_path = Path(__file__).resolve().parent
    import sys

    sys.path.insert(0, str(sys_path))
    from bench_harvest import _tokenizer  # noqa: E402

    tmp = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    _tokenizer(tmp / "model")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(GPTNeoXConfig(num_hidden_layers=1, hidden_size=d, intermediate_size=4 * d,
                                                   num_attention_heads=8, vocab_size=512)).save_pretrained(tmp / "model")
    words = "the quick brown fox jumps over lazy dog and cat a of to in is".split()
    rng = random.Random(0)
    with open(tmp / "text.jsonl", "w") as f:
        for _ in range(args.tokens // 150 + 100):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(200))}) + "\n")
    acts = harvest(HarvestConfig(model=str(tmp / "model"), layer=0, dataset=str(tmp / "text.jsonl"), tokens=args.tokens,
                                 out=str(tmp / "acts.zarr"))).store
    jsae = train(TrainConfig(acts=acts, latents=n, k=k, tokens=4096, out=str(tmp / "jsae.zarr"))).store
    print(f"d={d} n={n} k={k}, {args.tokens:,} tokens (float16 store), {torch.get_num_threads()} threads")

    model = LoadedJSAE.open(jsae)
    store = Activations.open(acts)
    B = 4096
    xs = [store.rows("x", lo, min(args.tokens, lo + B)) for lo in range(0, args.tokens, B)]
    W = model.sae_in.W_enc
    began = time.perf_counter()
    for x in xs:
        x @ W
    bare = args.tokens / (time.perf_counter() - began)
    began = time.perf_counter()
    for lo in range(0, args.tokens, B):
        store.rows("x", lo, min(args.tokens, lo + B)) @ W
    bare_read = args.tokens / (time.perf_counter() - began)
    mx = maxact(MaxactConfig(jsae=jsae, top_latents=10, examples=10, batch_size=B, include_bos=True))
    jac = jacobian(JacobianConfig(jsae=jsae, tokens=args.tokens, batch_size=1024, include_bos=True, out=str(tmp / "jac.zarr")))
    print(f"bare matmul       {bare:10,.0f} tokens/s")
    print(f"bare + read       {bare_read:10,.0f} tokens/s")
    print(f"maxact            {mx.tokens_per_second:10,.0f} tokens/s   ({bare / mx.tokens_per_second:.2f}x the bare matmul's time; target <= 2x)")
    print(f"jacobian          {jac.tokens_per_second:10,.0f} tokens/s   (two SAEs, the MLP and J for every token)")


if __name__ == "__main__":
    main()
