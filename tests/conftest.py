"""Shared fixtures: tiny random causal LMs of several families, built from configs and saved
with save_pretrained (no network), a tiny BPE tokenizer, and small text corpora."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests never touch the network: a hub id must fail fast, not retry for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 300

_TEXT = """The quick brown fox jumps over the lazy dog. A Jacobian sparse autoencoder finds which
features compute which. Der schnelle braune Fuchs springt über den faulen Hund. Die Katze
schläft auf dem Sofa, und der Hund bellt im Garten. It was the best of times, it was the
worst of times; es war die beste der Zeiten, es war die schlechteste der Zeiten.
"""


def _texts(n: int = 400) -> list[str]:
    words = _TEXT.split()
    return [" ".join(words[(i * 7) % len(words):] + words[: (i * 7) % len(words)]) for i in range(n)]


def build_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    return path


def digest(path: str | Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (lock objects aside: they come and go): a store
    unchanged by a command has the same digest before and after."""
    import hashlib

    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(path).rglob("*")) if p.is_file() and not p.name.startswith(".jsaectl")}


def kill_at_first_checkpoint(args: list[str], out: Path, env: dict[str, str] | None = None) -> None:
    """Run `jsaectl train ARGS -o OUT` and SIGKILL it as soon as its store holds a checkpoint."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "jsaectl", "train", *args, "-o", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    meta = out / "checkpoint" / "zarr.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (meta.exists() and '"slot"' in meta.read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def private_stores(root: Path, acts_store: str, jsae_store: str) -> tuple[str, str]:
    """Copies of the session's activations and jsae stores under ``root``, the JSAE's copy
    pointing to the activations' copy: stores a test may damage or follow."""
    import shutil

    import zarr

    acts = str(shutil.copytree(acts_store, root / "acts.zarr"))
    jsae = str(shutil.copytree(jsae_store, root / "jsae.zarr"))
    g = zarr.open_group(jsae, mode="r+")
    g.attrs["jsaectl"] = {**g.attrs["jsaectl"], "acts_store": acts}
    return acts, jsae


def pipeline(*stages: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``jsaectl STAGE | jsaectl STAGE | ...`` through a real shell pipe."""
    cmd = " | ".join(f"{sys.executable} -m jsaectl {stage}" for stage in stages)
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)


def write_corpus(path: Path) -> Path:
    with open(path, "w") as f:
        for text in _texts():
            f.write(json.dumps({"text": text}) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _config(family: str):
    import transformers as tf

    small = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    if family == "gpt2":
        return tf.GPT2Config(n_layer=3, n_embd=32, n_head=2, n_positions=128, **small)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=128, hidden_act="gelu", **small)
    if family == "llama":
        return tf.LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                              intermediate_size=48, max_position_embeddings=128, **small)
    if family == "gemma2":
        return tf.Gemma2Config(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                               head_dim=16, intermediate_size=48, max_position_embeddings=128, **small)
    if family == "phi":
        return tf.PhiConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=128, **small)
    if family == "phi3":
        return tf.Phi3Config(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, intermediate_size=48,
                             max_position_embeddings=128, pad_token_id=0, **small)
    if family == "opt":
        return tf.OPTConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32,
                            max_position_embeddings=128, pad_token_id=0, activation_function="relu", **small)
    if family == "gptj":
        return tf.GPTJConfig(n_layer=3, n_embd=32, n_head=2, rotary_dim=8, n_positions=128, **small)
    if family == "qwen2":
        return tf.Qwen2Config(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                              intermediate_size=48, max_position_embeddings=128, **small)
    if family == "bloom":
        return tf.BloomConfig(n_layer=3, hidden_size=32, n_head=2, **small)
    if family == "mixtral":
        return tf.MixtralConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                                intermediate_size=48, num_local_experts=4, num_experts_per_tok=2,
                                max_position_embeddings=128, **small)
    if family == "granitemoe":  # its expert block is not called "mlp"
        return tf.GraniteMoeConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                                   intermediate_size=48, num_local_experts=4, num_experts_per_tok=2,
                                   max_position_embeddings=128, **small)
    raise ValueError(family)


def build_model(family: str, path: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family))
    # Random init leaves many biases/norm gains at exactly 0/1; perturb everything so a test
    # would notice a missing bias or a transposed weight.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


FAMILIES = ["gpt2", "gpt_neox", "llama", "gemma2", "phi", "phi3", "opt", "gptj", "qwen2", "bloom"]


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path):
    cache: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in cache:
            cache[family] = build_model(family, tmp_path_factory.mktemp(family), tokenizer_dir)
        return cache[family]

    return make


@pytest.fixture(scope="session")
def gpt2_dir(model_factory) -> Path:
    return model_factory("gpt2")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .jsonl corpus of ~400 short documents (~30k tokens with the tiny tokenizer)."""
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs.jsonl")



@pytest.fixture(scope="session")
def acts_store(gpt2_dir, corpus, tmp_path_factory) -> str:
    """~50k tokens of the tiny GPT-2's layer 1, float32 so nothing is lost to storage."""
    from typer.testing import CliRunner

    from jsaectl.cli import app

    big = tmp_path_factory.mktemp("c") / "big.jsonl"
    big.write_text(Path(corpus).read_text() * 2)
    out = str(tmp_path_factory.mktemp("acts") / "acts.zarr")
    result = CliRunner().invoke(app, ["harvest", str(gpt2_dir), "-l", "1", "-d", str(big), "-n", "50k", "-T", "32",
                                      "--dtype", "float32", "-o", out])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def lazy_acts_store(gpt2_dir, corpus, tmp_path_factory) -> str:
    """The same tokens as acts_store, harvested --lazy: the tokens only, x computed by readers."""
    from jsaectl.harvest import HarvestConfig, harvest

    big = tmp_path_factory.mktemp("c") / "big.jsonl"
    big.write_text(Path(corpus).read_text() * 2)
    out = str(tmp_path_factory.mktemp("lazy") / "lazy.zarr")
    return harvest(HarvestConfig(model=str(gpt2_dir), layer=1, dataset=str(big), tokens=50_000, context_size=32,
                                 lazy=True, out=out)).store


@pytest.fixture(scope="session")
def jsae_store(acts_store, tmp_path_factory) -> str:
    """A small JSAE (2 × 128 latents, k = 4) trained on acts_store."""
    from jsaectl.train import TrainConfig, train

    out = str(tmp_path_factory.mktemp("jsae") / "jsae.zarr")
    train(TrainConfig(acts=acts_store, expansion=4, k=4, batch_size=256, tokens=30_000, out=out))
    return out


if __name__ == "__main__":
    # python tests/conftest.py DIR: the tiny GPT-2 and corpus of the tests, for trying the CLI by hand.
    root = Path(sys.argv[1])
    root.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(root / "tokenizer")
    build_model("gpt2", root / "gpt2", tok)
    write_corpus(root / "docs.jsonl")
    print(root)
