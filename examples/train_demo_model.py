#!/usr/bin/env python3
"""Train jsaectl's tiny English/German demo model on CPU: a byte-level BPE tokenizer and a small
GPT-NeoX (Pythia-style) causal LM, evaluated on the corpus's held-out split.

    python examples/train_demo_model.py --corpus CORPUS_DIR --out jsaectl/assets/model --minutes 55

CORPUS_DIR is the output of examples/corpus/build_corpus.sh (train.jsonl, heldout.jsonl). The
learning-rate schedule is tied to wall-clock time (warm-up, then cosine decay over --minutes), so
a run always finishes on time even when the CPU is shared; the number of steps therefore varies
between runs, everything else (data order, initialisation, sampling) is seeded.

Outputs in --out: config.json, model.safetensors (float16), generation_config.json, tokenizer
files and MODEL_CARD.md with the measured figures. Intermediate files (token cache, checkpoints)
go to --work; rerunning with --resume continues from the last checkpoint, --eval-only re-evaluates
the model already in --out and rewrites the card.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GPTNeoXConfig,
                          GPTNeoXForCausalLM, PreTrainedTokenizerFast)

SPECIAL = "<|endoftext|>"  # BOS, EOS, document separator and padding, as in GPT-2/Pythia
LANGS = ("en", "de")
PROMPTS = {
    "en": ["It is a truth universally acknowledged that", "To install the package, run", "The old man said"],
    "de": ["Es war einmal ein", "Um die Datei zu öffnen, wählen Sie", "Der alte Mann sagte"],
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data
def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style): any byte sequence is encodable, no unknown token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # Calling the tokenizer on text prepends BOS, matching how training contexts start.
    bos = tok.token_to_id(SPECIAL)
    tok.post_processor = processors.TemplateProcessing(single=f"{SPECIAL} $A", pair=f"{SPECIAL} $A {SPECIAL} $B",
                                                       special_tokens=[(SPECIAL, bos)])
    return tok


def wrap_tokenizer(tok: Tokenizer, context: int) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL,
                                   unk_token=SPECIAL, pad_token=SPECIAL, model_max_length=context)


def token_stream(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """All documents as one uint16 stream, each followed by <|endoftext|>."""
    eos = tok.token_to_id(SPECIAL)
    out: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        out.extend(enc.ids)
        out.append(eos)
    return np.asarray(out, dtype=np.uint16)


@dataclass
class Data:
    tokenizer: Tokenizer
    train: dict[str, np.ndarray]
    heldout: dict[str, np.ndarray]
    unigram_counts: np.ndarray


def prepare_data(corpus: Path, work: Path, vocab_size: int) -> Data:
    """Train (or load) the tokenizer on the train split and tokenize both splits, cached in `work`."""
    tok_path = work / f"tokenizer-{vocab_size}.json"
    cache = work / f"tokens-{vocab_size}.npz"
    if tok_path.exists() and cache.exists():
        arrays = np.load(cache)
        return Data(Tokenizer.from_file(str(tok_path)),
                    {lang: arrays[f"train_{lang}"] for lang in LANGS},
                    {lang: arrays[f"heldout_{lang}"] for lang in LANGS}, arrays["unigram"])
    train_docs, heldout_docs = read_jsonl(corpus / "train.jsonl"), read_jsonl(corpus / "heldout.jsonl")
    log(f"training tokenizer (vocab {vocab_size}) on {len(train_docs)} train documents")
    tok = train_tokenizer([d["text"] for d in train_docs], vocab_size)
    tok.save(str(tok_path))
    arrays = {}
    for split, docs in (("train", train_docs), ("heldout", heldout_docs)):
        for lang in LANGS:
            arrays[f"{split}_{lang}"] = token_stream(tok, [d["text"] for d in docs if d["lang"] == lang])
            log(f"{split} {lang}: {len(arrays[f'{split}_{lang}']):,} tokens")
    all_train = np.concatenate([arrays[f"train_{lang}"] for lang in LANGS])
    arrays["unigram"] = np.bincount(all_train, minlength=tok.get_vocab_size()).astype(np.int64)
    np.savez(cache, **arrays)
    return prepare_data(corpus, work, vocab_size)


class BatchSampler:
    """Random windows of `context - 1` tokens, each prefixed with BOS, from the per-language
    streams; every batch holds a fixed share of German so both languages are seen throughout."""

    def __init__(self, streams: dict[str, np.ndarray], bos: int, context: int, batch: int,
                 de_fraction: float, seed: int) -> None:
        self.streams, self.bos, self.context = streams, bos, context
        self.n_de = round(batch * de_fraction)
        self.n_en = batch - self.n_de
        self.rng = np.random.default_rng(seed)

    def windows(self, lang: str, n: int) -> np.ndarray:
        stream = self.streams[lang]
        starts = self.rng.integers(0, len(stream) - self.context, size=n)
        return np.stack([stream[s:s + self.context - 1] for s in starts])

    def next(self) -> torch.Tensor:
        body = np.concatenate([self.windows("en", self.n_en), self.windows("de", self.n_de)])
        bos = np.full((len(body), 1), self.bos, dtype=body.dtype)
        return torch.from_numpy(np.concatenate([bos, body], axis=1).astype(np.int64))


def eval_contexts(stream: np.ndarray, bos: int, context: int, limit: int | None = None) -> torch.Tensor:
    """Non-overlapping [BOS] + (context-1)-token windows covering the stream (tail dropped)."""
    n = (len(stream) // (context - 1)) if limit is None else min(limit, len(stream) // (context - 1))
    body = stream[:n * (context - 1)].reshape(n, context - 1).astype(np.int64)
    return torch.from_numpy(np.concatenate([np.full((n, 1), bos), body], axis=1))


# --------------------------------------------------------------------------- model
def build_model(vocab_size: int, args: argparse.Namespace, bos: int) -> GPTNeoXForCausalLM:
    config = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=args.d_model, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=4 * args.d_model, hidden_act="gelu",
        max_position_embeddings=args.context, use_parallel_residual=True,  # Pythia's block
        tie_word_embeddings=True,  # saves vocab x d_model parameters: the size budget is tight
        attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=bos, eos_token_id=bos, pad_token_id=bos,
    )
    torch.manual_seed(args.seed)
    return GPTNeoXForCausalLM(config)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, LayerNorm gains)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def lr_at(step: int, elapsed: float, budget: float, args: argparse.Namespace) -> float:
    """Linear warm-up over the first steps, then cosine decay to min_lr over the time budget."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(1.0, elapsed / budget)
    floor = args.lr * args.min_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def mean_loss(model: torch.nn.Module, contexts: torch.Tensor, batch: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over every predicted position."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(contexts), batch):
        x = contexts[i:i + batch]
        logits = model(input_ids=x).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1),
                                                 reduction="sum")
        total, count = total + loss.item(), count + x[:, 1:].numel()
    model.train()
    return total / count


def unigram_loss(counts: np.ndarray, contexts: torch.Tensor) -> float:
    """Add-one-smoothed unigram model from train counts, scored on the same target tokens."""
    logp = np.log(counts + 1.0) - np.log(counts.sum() + len(counts))
    return float(-logp[contexts[:, 1:].numpy()].mean())


# --------------------------------------------------------------------------- training
@dataclass
class State:
    step: int = 0
    elapsed: float = 0.0
    tokens: int = 0
    history: list = field(default_factory=list)


def save_checkpoint(path: Path, model, optimizer, state: State, sampler: BatchSampler) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state.__dict__,
                "rng": sampler.rng.bit_generator.state}, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write keeps the previous checkpoint


def load_checkpoint(path: Path, model, optimizer, sampler: BatchSampler) -> State:
    ckpt = torch.load(path, weights_only=False)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    sampler.rng.bit_generator.state = ckpt["rng"]
    return State(**ckpt["state"])


def train(model, data: Data, args: argparse.Namespace) -> State:
    bos = data.tokenizer.token_to_id(SPECIAL)
    sampler = BatchSampler(data.train, bos, args.context, args.batch_size, args.de_fraction, args.seed)
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    ckpt_path = args.work / "checkpoint.pt"
    state = load_checkpoint(ckpt_path, model, optimizer, sampler) if args.resume and ckpt_path.exists() else State()
    probe = {lang: eval_contexts(data.heldout[lang], bos, args.context, limit=64) for lang in LANGS}
    budget = args.minutes * 60
    start, last_ckpt, last_probe, ema = time.time() - state.elapsed, time.time(), time.time(), None
    model.train()
    while state.elapsed < budget:
        lr = lr_at(state.step, state.elapsed, budget, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = sampler.next()
        # bfloat16 autocast: ~4x faster matmuls on CPUs with AVX512-BF16/AMX; weights, optimiser
        # state and the loss stay float32.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state.step, state.tokens, state.elapsed = state.step + 1, state.tokens + x.numel(), time.time() - start
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if state.step % args.log_every == 0:
            log(f"step {state.step} {state.elapsed / 60:5.1f}/{args.minutes:g} min loss {ema:.3f} lr {lr:.2e} "
                f"tokens {state.tokens / 1e6:.2f}M ({state.tokens / state.elapsed:,.0f} tok/s)")
        if time.time() - last_probe > args.probe_minutes * 60:
            probe_losses = {lang: round(mean_loss(model, c), 4) for lang, c in probe.items()}
            state.history.append({"step": state.step, "minutes": round(state.elapsed / 60, 1), **probe_losses})
            log(f"held-out probe (first 64 contexts): {probe_losses}")
            last_probe = time.time()
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            save_checkpoint(ckpt_path, model, optimizer, state, sampler)
            last_ckpt = time.time()
    save_checkpoint(ckpt_path, model, optimizer, state, sampler)
    return state


# --------------------------------------------------------------------------- saving & evaluation
def save_model(model, tokenizer: PreTrainedTokenizerFast, out: Path, bos: int) -> None:
    """float16 weights (the package ships them; 8 MB budget) plus tokenizer and sampling defaults."""
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out)
    model.to(torch.float32)
    tokenizer.save_pretrained(out)
    portable_tokenizer_config(out)
    GenerationConfig(bos_token_id=bos, eos_token_id=bos, pad_token_id=bos, do_sample=True, temperature=0.8,
                     top_k=40, max_new_tokens=64).save_pretrained(out)


def portable_tokenizer_config(out: Path) -> None:
    """transformers 5 records the class as "TokenizersBackend", which 4.x cannot resolve; the
    older name "PreTrainedTokenizerFast" loads the same tokenizer.json in both."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2) + "\n")


def generate_samples(model, tokenizer, seed: int, new_tokens: int = 40) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for lang, prompts in PROMPTS.items():
        out[lang] = []
        for prompt in prompts:
            torch.manual_seed(seed)
            ids = tokenizer(prompt, return_tensors="pt").input_ids  # starts with BOS
            gen = model.generate(ids, do_sample=True, temperature=0.8, top_k=40, max_new_tokens=new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
            out[lang].append(tokenizer.decode(gen[0], skip_special_tokens=True))
    return out


def evaluate(out: Path, data: Data, context: int, seed: int) -> dict:
    """Reload the saved (float16) model exactly as users will, and score it in float32."""
    model = AutoModelForCausalLM.from_pretrained(out).to(torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    bos = tokenizer.bos_token_id
    results = {}
    for lang in LANGS:
        contexts = eval_contexts(data.heldout[lang], bos, context)
        results[lang] = {"model": mean_loss(model, contexts), "unigram": unigram_loss(data.unigram_counts, contexts),
                         "tokens": int(contexts[:, 1:].numel())}
        log(f"held-out {lang}: model {results[lang]['model']:.3f} nats/token, "
            f"unigram {results[lang]['unigram']:.3f} ({results[lang]['tokens']:,} tokens)")
    return {"loss": results, "samples": generate_samples(model, tokenizer, seed),
            "params": count_params(model), "config": model.config}


# --------------------------------------------------------------------------- model card
def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def heldout_mix(corpus: Path) -> str:
    """Which sources the held-out text comes from, e.g. 'en: kjv 120,000, ...; de: ...'."""
    size: dict[str, dict[str, int]] = {lang: {} for lang in LANGS}
    for doc in read_jsonl(corpus / "heldout.jsonl"):
        size[doc["lang"]][doc["source"]] = size[doc["lang"]].get(doc["source"], 0) + len(doc["text"].encode())
    return "; ".join(f"{lang}: " + ", ".join(f"{s} {n:,}" for s, n in sorted(by.items(), key=lambda kv: -kv[1]))
                     for lang, by in size.items())


def model_card(ev: dict, run: dict, data: Data) -> str:
    """Markdown card; training settings come from the run record so --eval-only reproduces them."""
    args = argparse.Namespace(**run["args"])
    cfg = ev["config"]
    middle = cfg.num_hidden_layers // 2
    rows = "\n".join(f"| {lang} | {r['model']:.3f} | {r['unigram']:.3f} | {r['unigram'] - r['model']:.3f} | {r['tokens']:,} |"
                     for lang, r in ev["loss"].items())
    samples = "\n".join(f"- ({lang}) {json.dumps(s, ensure_ascii=False)}" for lang, ss in ev["samples"].items() for s in ss)
    train_tokens = {lang: len(data.train[lang]) for lang in LANGS}
    history = "\n".join(f"| {h['step']} | {h['minutes']} | {h['en']} | {h['de']} |" for h in run.get("history", []))
    return f"""# jsaectl demo model (tiny English/German GPT-NeoX)

A deliberately tiny causal language model bundled with jsaectl so that examples and tests can
run offline. It is **not** a useful language model; it exists to have real, trained MLPs to
harvest activations from and train Jacobian sparse autoencoders on.

Trained by `examples/train_demo_model.py` on the train split of the corpus built by
`examples/corpus/build_corpus.sh` (Debian-packaged English and German text; see
`jsaectl/assets/corpus/SOURCES.md` for provenance and licences).

## Architecture

- `GPTNeoXForCausalLM` (Pythia-style: parallel attention + MLP residual, rotary embeddings on
  {int(cfg.rope_parameters.get('partial_rotary_factor', 0.25) * 100)}% of each head, LayerNorm)
- layers: {cfg.num_hidden_layers}, d_model: {cfg.hidden_size}, heads: {cfg.num_attention_heads},
  MLP intermediate: {cfg.intermediate_size}, activation: `{cfg.hidden_act}`
- context: {cfg.max_position_embeddings} tokens, vocabulary: {cfg.vocab_size} (byte-level BPE),
  tied input/output embeddings
- parameters: {ev['params']:,}; weights stored as float16 (`model.safetensors`); load with
  `AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)` for analysis.
- tokenizer: special token `{SPECIAL}` (id {cfg.bos_token_id}) is BOS, EOS, document separator
  and padding. Calling the tokenizer on text **prepends BOS automatically**, matching training.

**Recommended default layer for JSAE harvesting: layer {middle}** (0-based index into
`model.gpt_neox.layers`, i.e. the MLP of block {middle} of {cfg.num_hidden_layers}). A middle
layer is past the token-level (embedding-like) processing of the first blocks and before the
last blocks that specialise in next-token output, the usual choice for feature studies.

## Training

- data: {train_tokens['en']:,} English + {train_tokens['de']:,} German train tokens; every batch
  is {round(args.batch_size * args.de_fraction)} German + {args.batch_size - round(args.batch_size * args.de_fraction)} English windows of `[BOS] + {args.context - 1}` tokens cut at
  random offsets from the documents joined with `{SPECIAL}`
- optimiser: AdamW (betas 0.9/0.95, weight decay {args.weight_decay} on matrices), peak lr {args.lr},
  {args.warmup_steps} warm-up steps, cosine decay to {args.min_lr_ratio} x peak over the wall-clock budget,
  gradient clipping 1.0, batch {args.batch_size} x {args.context} tokens, seed {args.seed}
- machine: 2-core CPU (torch.set_num_threads({args.threads}); {"bfloat16 autocast, float32 weights" if args.bf16 else "float32"}), shared with other work at times
- wall time: {run['elapsed'] / 60:.1f} minutes, {run['step']:,} steps, {run['tokens']:,} tokens seen
  ({run['tokens'] / max(1, sum(train_tokens.values())):.2f} passes over the train split on average)

## Held-out evaluation

Mean per-token cross-entropy (nats) on the corpus's held-out split, per language, scored in
non-overlapping `[BOS] + {args.context - 1}`-token windows of the held-out documents (the model file as
shipped, float16 weights, evaluated in float32). Baseline: unigram token frequencies from the
train split with add-one smoothing, on the same tokens.

| language | model | unigram | improvement | tokens scored |
|---|---:|---:|---:|---:|
{rows}

Held-out documents (bytes) per source: {heldout_mix(Path(args.corpus))}. The two languages' held-out
sets differ in make-up (whole units are held out), so compare each row with its own baseline
rather than English with German.

Held-out probe during training (first 64 held-out windows per language):

| step | minutes | en | de |
|---:|---:|---:|---:|
{history}

## Samples

Temperature 0.8, top-k 40, {40} new tokens, seed {args.seed} (the prompt is included):

{samples}

## Reproduce

```
examples/corpus/build_corpus.sh /tmp/corpus
python examples/train_demo_model.py --corpus /tmp/corpus --out jsaectl/assets/model --minutes {args.minutes:g} \\
    --layers {cfg.num_hidden_layers} --d-model {cfg.hidden_size} --heads {cfg.num_attention_heads} --vocab-size {args.vocab_size} \\
    --batch-size {args.batch_size} --lr {args.lr}
```

Results differ slightly between runs: the schedule follows wall-clock time, so the number of
steps depends on the machine's speed and load.
"""


# --------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True, help="corpus directory with train.jsonl and heldout.jsonl")
    p.add_argument("--out", type=Path, required=True, help="where to save the model, tokenizer and MODEL_CARD.md")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "jsaectl-demo-model",
                   help="scratch directory for the token cache and checkpoints")
    p.add_argument("--minutes", type=float, default=55.0, help="wall-clock training budget")
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size (incl. the special token)")
    p.add_argument("--layers", type=int, default=4, help="number of transformer blocks")
    p.add_argument("--d-model", type=int, default=192, help="residual stream width")
    p.add_argument("--heads", type=int, default=4, help="attention heads (must divide --d-model)")
    p.add_argument("--context", type=int, default=256, help="context length, BOS included")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per optimiser step")
    p.add_argument("--de-fraction", type=float, default=0.5, help="share of German sequences in every batch")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final learning rate as a fraction of the peak")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on weight matrices")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, batch sampling and generation")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="autocast training matmuls to bfloat16 (evaluation is always float32)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=20, help="print progress every N steps")
    p.add_argument("--probe-minutes", type=float, default=5.0, help="held-out probe interval")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="checkpoint interval")
    p.add_argument("--resume", action="store_true", help="continue from WORK/checkpoint.pt if present")
    p.add_argument("--eval-only", action="store_true",
                   help="skip training: evaluate the model in --out and rewrite its card (uses WORK/run.json)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args.corpus, args.work, args.vocab_size)
    bos = data.tokenizer.token_to_id(SPECIAL)
    run_path = args.work / "run.json"
    if not args.eval_only:
        model = build_model(data.tokenizer.get_vocab_size(), args, bos)
        log(f"model: {count_params(model):,} parameters, {args.layers} layers, d_model {args.d_model}")
        state = train(model, data, args)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        run_path.write_text(json.dumps({**state.__dict__, "args": settings}, indent=1))
        save_model(model, wrap_tokenizer(data.tokenizer, args.context), args.out, bos)
    portable_tokenizer_config(args.out)
    ev = evaluate(args.out, data, args.context, args.seed)
    card = model_card(ev, json.loads(run_path.read_text()), data)
    (args.out / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    print(card)
    size = dir_size(args.out)
    log(f"{args.out}: {size:,} bytes on disk" + ("  ** over the 8 MB budget **" if size > 8_000_000 else ""))


if __name__ == "__main__":
    main()
