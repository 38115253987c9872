"""Lazy activations stores (harvest --lazy) against stored ones, side by side in one run.

    python tests/bench/bench_lazy.py                  # all three sections (~15 min on 2 CPU cores)
    python tests/bench/bench_lazy.py --only train70m  # one section: harvest, train70m or bundled

* **harvest**: tokens/s of `harvest --lazy` (tokenize and store the tokens; one forward pass of
  the first batch to check the model and record its witness) against a stored float16 harvest,
  on a GPT-2-small-shaped model (12 layers, d_model 768, random weights), layer 3. Target: >= 10x.
* **train70m**: training throughput from a lazy store against a stored float16 store of the
  same tokens, at Pythia-70m's shapes on the CPU: a GPT-NeoX config with d_model 512, 6 layers,
  random weights, layer 3; n 16,384 latents, k 32, batch 4096, context 2048 (the paper's). The
  two take turns (stored, lazy, stored, lazy), each timed over ``--steps`` steps after its first;
  the shuffle buffer is one batch, so that a run is not charged for x it computes ahead for steps
  beyond the measured ones. Target: lazy >= 0.75x stored.
* **bundled**: the same on the bundled model at its defaults (d_model 192, n 6,144, k 32, batch
  4096, context 256).

Also printed: what 300 M tokens take on disk for Pythia-70m (d_model 512) and Pythia-410m
(d_model 1024), stored (float16) and lazy, from the bytes per token measured here.

Measured on the 2-core CPU development machine (torch 2.13.0 CPU, 2 threads), 2026-11-30:
  harvest   stored 3,084 tokens/s, lazy 287,140 tokens/s: 93.1x (median of 3)
  disk      a lazy store grows by 1.281 bytes a token (bundled corpus); 300M tokens 0.38 GB, against
            310 GB stored for Pythia-70m and 617 GB for Pythia-410m
  bundled   stored 4,526 / 4,598, lazy 4,257 / 3,177 tokens/s: 0.81x
  train70m  stored 1,033 / 1,024, lazy 901 / 861 tokens/s: 0.86x
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from jsaectl.harvest import HarvestConfig, harvest
from jsaectl.train import TrainConfig, train


def _size(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _model(root: Path, config, tokenizer_from: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(root)
    return str(root)


def bench_harvest(tmp: Path, rounds: int) -> dict:
    from transformers import GPT2Config

    from jsaectl.models import bundled_model_path

    model = _model(tmp / "gpt2", GPT2Config(n_layer=12, vocab_size=8192, bos_token_id=0, eos_token_id=0), bundled_model_path())
    base = HarvestConfig(model=model, layer=3, dataset="jsaectl-sample", tokens=65_536, context_size=256, batch_size=16,
                         overwrite=True)
    rates: dict[str, list[float]] = {"stored": [], "lazy": []}
    for _ in range(rounds):
        for name in rates:
            cfg = replace(base, lazy=name == "lazy", out=str(tmp / f"h-{name}.zarr"))
            rates[name].append(harvest(cfg).tokens_per_second)
    stored, lazy = statistics.median(rates["stored"]), statistics.median(rates["lazy"])
    print(f"harvest, GPT-2-small shape, layer 3, 65,536 tokens: stored {stored:,.0f} tokens/s, lazy {lazy:,.0f} tokens/s: "
          f"{lazy / stored:.1f}x (target >= 10x; median of {rounds})")
    return {"stored_tokens_per_s": stored, "lazy_tokens_per_s": lazy, "ratio": lazy / stored}


def _train_turns(acts: dict[str, str], tmp: Path, tag: str, steps: int, turns: int, **kw) -> dict[str, float]:
    batch = kw.get("batch_size", 4096)
    rates: dict[str, list[float]] = {name: [] for name in acts}
    for turn in range(turns):
        for name, url in acts.items():
            cfg = TrainConfig(acts=url, tokens=(steps + 1) * batch, buffer_tokens=batch, checkpoint_every=0, overwrite=True,
                              checkpoint_minutes=0, log_every=steps + 1, out=str(tmp / f"t-{tag}-{name}-{turn}.zarr"), **kw)
            began = time.perf_counter()
            result = train(cfg)
            rates[name].append(result.tokens_per_second)
            print(f"  turn {turn + 1} {name:6s} {result.tokens_per_second:8,.0f} tokens/s  ({time.perf_counter() - began:.0f} s)")
    return {name: statistics.median(v) for name, v in rates.items()}


def _stores(model: str, layer: int, context: int, tokens: int, tmp: Path, tag: str) -> dict[str, str]:
    base = HarvestConfig(model=model, layer=layer, dataset="jsaectl-sample", tokens=tokens, context_size=context,
                         overwrite=True)
    return {"stored": harvest(replace(base, out=str(tmp / f"{tag}-stored.zarr"))).store,
            "lazy": harvest(replace(base, lazy=True, out=str(tmp / f"{tag}-lazy.zarr"))).store}


def bench_train70m(tmp: Path, steps: int, turns: int) -> dict:
    from transformers import GPTNeoXConfig

    from jsaectl.models import bundled_model_path

    config = GPTNeoXConfig(num_hidden_layers=6, hidden_size=512, num_attention_heads=8, intermediate_size=2048,
                           max_position_embeddings=2048, vocab_size=8192, rotary_pct=0.25, hidden_act="gelu", bos_token_id=0,
                           eos_token_id=0)
    model = _model(tmp / "neox", config, bundled_model_path())
    acts = _stores(model, 3, 2048, (steps + 3) * 4096, tmp, "70m")
    print(f"train, Pythia-70m shape (d 512, 6 layers, layer 3, context 2048), n 16,384, k 32, batch 4096, {steps} steps timed:")
    found = _train_turns(acts, tmp, "70m", steps, turns, latents=16_384, k=32, batch_size=4096, lam=1.0)
    print(f"  lazy / stored: {found['lazy'] / found['stored']:.2f}x (target >= 0.75x; median of {turns})")
    return found


def bench_bundled(tmp: Path, steps: int, turns: int) -> dict:
    acts = _stores("jsaectl-demo", 2, 256, (steps + 3) * 4096, tmp, "demo")
    print(f"train, the bundled model (d 192, layer 2, context 256), n 6,144, k 32, batch 4096, {steps} steps timed:")
    found = _train_turns(acts, tmp, "demo", steps, turns)
    print(f"  lazy / stored: {found['lazy'] / found['stored']:.2f}x (target >= 0.75x; median of {turns})")
    return found


def disk(tmp: Path) -> dict:
    """Bytes per token of a lazy store, measured (the growth between two sizes), and what 300M
    tokens take, lazy and stored."""
    sizes = {}
    for n in (100_000, 700_000):
        result = harvest(HarvestConfig(tokens=n, lazy=True, overwrite=True, out=str(tmp / f"disk-{n}.zarr")))
        sizes[result.n_tokens] = _size(result.store)
    (n1, s1), (n2, s2) = sorted(sizes.items())
    per_token = (s2 - s1) / (n2 - n1)
    print(f"disk: a lazy store grows by {per_token:.3f} bytes a token (fixed part {s1 - per_token * n1:,.0f} bytes on the "
          f"bundled model: MLP weights, vocabulary, witness)")
    for name, d in (("Pythia-70m", 512), ("Pythia-410m", 1024)):
        stored = 300e6 * d * 2 + 300e6 * 8  # float16 x, int32 tokens and positions
        print(f"  300M tokens of {name} (d_model {d}): stored {stored / 1e9:,.0f} GB, lazy {300e6 * per_token / 1e9:.2f} GB "
              "(+ its MLP weights)")
    return {"bytes_per_token": per_token}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("harvest", "train70m", "bundled", "disk"))
    parser.add_argument("--steps", type=int, default=6, help="training steps timed per run (after the first)")
    parser.add_argument("--turns", type=int, default=2, help="runs of each variant, taking turns")
    parser.add_argument("--rounds", type=int, default=3, help="harvest rounds, taking turns")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-lazy-"))
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    out = {}
    for name, run in (("harvest", lambda: bench_harvest(tmp, args.rounds)), ("disk", lambda: disk(tmp)),
                      ("bundled", lambda: bench_bundled(tmp, args.steps, args.turns)),
                      ("train70m", lambda: bench_train70m(tmp, args.steps, args.turns))):
        if args.only in (None, name):
            out[name] = run()
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
