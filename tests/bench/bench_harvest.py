"""Harvest throughput vs a plain full forward pass of the same model over the same tokens.

    python tests/bench/bench_harvest.py               # GPT-2-small shape (random weights), layer 3
    python tests/bench/bench_harvest.py --layers 4    # a quick look

Both sides see the same contexts in the same batches (16 × 256 tokens). The full forward is
`model(input_ids)`, LM head included, as a harvester that runs the whole model would; jsaectl
stops the forward pass inside layer 3's MLP and also writes the store (float16, a background
thread). Target (issue #2): >= 3x.

The harvest is also timed with the chunk checksums switched off (the store format before
issue 11), taking turns with the real one over ``--rounds``, to show what the crc32c costs
(target: under 5% of harvest throughput).

Measured on the 2-core CPU development machine (torch 2.13.0 CPU, 2 threads):
  2026-11-28: full forward 298 tokens/s, jsaectl harvest layer 3 1,856 tokens/s: 6.24x;
              without chunk checksums 1,807 tokens/s (checksum cost -2.8%: noise).
  2026-11-26: full forward 387 tokens/s, jsaectl harvest layer 3 2,414 tokens/s: 6.24x.
  2026-11-25: full forward 477 tokens/s, jsaectl harvest layer 3 3,029 tokens/s: 6.35x.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>").save_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12, help="model depth (GPT-2 small: 12)")
    parser.add_argument("--layer", type=int, default=3, help="layer harvested")
    parser.add_argument("--batches", type=int, default=4, help="batches of 16 x 256 tokens timed on each side")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of harvest with and without checksums, taking turns")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

    from jsaectl.data import iter_contexts, iter_pieces
    from jsaectl.harvest import HarvestConfig, harvest

    tmp = Path(tempfile.mkdtemp(prefix="bench-harvest-"))
    _tokenizer(tmp / "model")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(GPT2Config(n_layer=args.layers)).save_pretrained(tmp / "model")
    words = "the quick brown fox jumps over lazy dog and cat a of to in is".split()
    rng = random.Random(0)
    with open(tmp / "text.jsonl", "w") as f:
        for _ in range(4000):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(200))}) + "\n")
    n_tokens = args.batches * 16 * 256
    print(f"GPT-2 shape, {args.layers} layers, d_model 768, random weights; layer {args.layer}; "
          f"{n_tokens:,} tokens in batches of 16 x 256; {torch.get_num_threads()} threads")

    # Plain full forward over the same contexts.
    model = AutoModelForCausalLM.from_pretrained(tmp / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp / "model")
    contexts = [c for _, c in zip(range(args.batches * 16), iter_contexts(iter_pieces(str(tmp / "text.jsonl")), tokenizer, 256))]
    batches = [torch.from_numpy(__import__("numpy").stack(contexts[i : i + 16])).long() for i in range(0, len(contexts), 16)]
    with torch.no_grad():
        model(input_ids=batches[0])  # warm-up
        began = time.perf_counter()
        for ids in batches:
            model(input_ids=ids)
        full = n_tokens / (time.perf_counter() - began)
    del model

    from jsaectl import store as st

    full_codecs = st.codecs
    rates: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.rounds):
        for checksum in (True, False):
            st.codecs = full_codecs if checksum else (lambda compression="zstd": full_codecs(compression)[:-1])
            try:
                result = harvest(HarvestConfig(model=str(tmp / "model"), layer=args.layer, dataset=str(tmp / "text.jsonl"),
                                               tokens=n_tokens, context_size=256, batch_size=16, overwrite=True,
                                               out=str(tmp / f"acts-{checksum}.zarr")))
            finally:
                st.codecs = full_codecs
            rates[checksum].append(result.tokens_per_second)
    with_crc, without = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"full forward (LM head included) {full:10,.0f} tokens/s")
    print(f"jsaectl harvest, layer {args.layer}      {with_crc:10,.0f} tokens/s   (store written, float16, zstd + crc32c; median of {args.rounds})")
    print(f"  without chunk checksums       {without:10,.0f} tokens/s   (checksum cost {1 - with_crc / without:+.1%})")
    print(f"ratio: {with_crc / full:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
