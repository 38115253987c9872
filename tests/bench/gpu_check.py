"""The GPU check: one command, prepared in advance, for the day a GPU is lent.

    python tests/bench/gpu_check.py                       # on the GPU (--device cuda), < 8 minutes on one H100/H200
    python tests/bench/gpu_check.py --device cpu --tiny   # the same sections at tiny shapes (a CI test runs this)

Needs no network: models are built from configs with random weights, text comes from the
bundled corpus. Prints one compact table and writes it as JSON (``--out``, default
gpu_check.json). Every section is timed and fenced: one that fails records its error and the
others still run. The sections:

  correctness   training with and without bf16 autocast (finite, loss falling); J of
                JSAE.forward against torch.func.jacrev in float64 on the device; resume
                exactness (a run interrupted after a checkpoint and resumed, against one run
                straight through: max |Δweight|; bit-exact on the CPU, while on CUDA the
                atomics of index_add_ make float sums order-dependent, so the bound is stated
                and checked at 1e-5 relative to the weights' scale)
  train         s/step, tokens/s and peak memory of (a) jsaectl JSAE λ > 0, (b) its λ = 0
                pair and (d) the published method (bench_train.py), at Pythia-70m's shape
                (d 512, m 2048, 16k latents) and Pythia-410m's (d 1024, m 4096, 32k latents),
                k = 32, batch 4096
  harvest       tokens/s of harvesting layer 3 of a GPT-2-small-shaped and a Pythia-410m-shaped
                model against a full forward pass of it, and the share of the wall time the
                store's writer thread was busy
  jacobian      analysis tokens/s at both shapes, and the share of its time on the CPU side
                (pair aggregation, spilling, top examples)
  data wait     the share of training wall time spent waiting for batches, reading a float16
                store at d 768 (the stream keeping up, or not)
  lazy          training from a lazy store (harvest --lazy: tokens only, x computed by the
                reader on the GPU, on a side stream while the previous step runs) against a
                stored float16 store of the same tokens, at Pythia-70m's shape (GPT-NeoX d 512,
                6 layers, layer 3, context 2048; 16k latents, k 32, batch 4096): tokens/s of
                each, their ratio, the share of the lazy run's wall time spent computing x, and
                its data wait (near 0: computing x is hidden behind the steps)

Results on hardware are in the README ("Performance"); a run is only as good as its device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS: dict[str, Any] = {}


def section(name: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., None]]:
    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            began = time.perf_counter()
            try:
                RESULTS[name] = fn(*args)
            except Exception as e:  # record and go on: a prepared run gets one chance
                RESULTS[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-1500:]}
            RESULTS[name]["seconds"] = round(time.perf_counter() - began, 1)
            print(f"[{name}] done in {RESULTS[name]['seconds']} s" + (f" — ERROR {RESULTS[name]['error']}" if "error" in RESULTS[name] else ""),
                  file=sys.stderr, flush=True)
        return run
    return wrap


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


# ---------------------------------------------------------------------------------------------
# Stores built here, from the bundled corpus and random models


def tiny_model(root: Path, family: str, layers: int, d: int, heads: int) -> Path:
    """A random causal LM of a family's architecture, with the bundled model's tokenizer."""
    import transformers as tf

    from jsaectl.models import bundled_model_path

    path = root / f"{family}-{layers}x{d}"
    if path.exists():
        return path
    tok = tf.AutoTokenizer.from_pretrained(bundled_model_path())
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if family == "gpt2":
        cfg = tf.GPT2Config(n_layer=layers, n_embd=d, n_head=heads, n_positions=1024, **common)
    else:
        cfg = tf.GPTNeoXConfig(num_hidden_layers=layers, hidden_size=d, num_attention_heads=heads, intermediate_size=4 * d,
                               max_position_embeddings=2048, **common)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------
# Sections


@section("correctness")
def correctness(device: torch.device, root: Path, tiny: bool) -> dict[str, Any]:
    from jsaectl.configs import HarvestConfig, TrainConfig
    from jsaectl.harvest import harvest
    from jsaectl.jsae import JSAE
    from jsaectl.mlp import MLPWeights
    from jsaectl.sae import TopKSAE
    from jsaectl.train import train

    out: dict[str, Any] = {}
    model = tiny_model(root, "gpt_neox", 2, 64, 4)
    acts = harvest(HarvestConfig(model=str(model), layer=1, tokens=40_000, context_size=64, device=str(device),
                                 out=str(root / "small-acts.zarr"))).store
    common = dict(acts=acts, expansion=4, k=8, batch_size=512, tokens=20_480, device=str(device), log_every=5)
    for autocast in (False, True):
        result = train(TrainConfig(**common, autocast=autocast, out=str(root / f"ac-{autocast}.zarr")))
        import zarr

        loss = zarr.open_group(result.store, mode="r")["history/loss"][...]
        out[f"train_autocast_{autocast}"] = {"finite": bool(np.isfinite(loss).all()), "loss_first": float(loss[0]),
                                             "loss_last": float(loss[-1]), "falls": bool(loss[-1] < loss[0])}
    # J against jacrev, float64 on the device
    g = torch.Generator().manual_seed(0)
    d, m, n, k, B = 12, 24, 48, 5, 6
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    mlp = MLPWeights(r(m, d) / d**0.5, 0.1 * r(m), r(d, m) / m**0.5, 0.1 * r(d), "gelu").to(device)
    sae_in, sae_out = (TopKSAE(d, n, k, generator=g, dtype=torch.float64).to(device) for _ in range(2))
    x = r(B, d).to(device)

    def dense(sae: TopKSAE, v: torch.Tensor) -> torch.Tensor:  # plain autograd TopK: jacrev can see through it
        pre = v @ sae.W_enc + sae.b_enc
        values, indices = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    worst = {}
    for at in ("x", "reconstruction"):
        jsae = JSAE(sae_in, sae_out, mlp, at)
        with torch.no_grad():
            res = jsae(x, jacobian="value")
        errors = []
        for b in range(B):
            s0 = dense(sae_in, x[b : b + 1])[0]
            if at == "x":
                f_s = lambda s: dense(sae_out, mlp.forward((x[b] + (s - s0) @ sae_in.W_dec)[None]))[0]  # noqa: E731
            else:
                f_s = lambda s: dense(sae_out, mlp.forward((s @ sae_in.W_dec + sae_in.b_dec)[None]))[0]  # noqa: E731
            ref = torch.func.jacrev(f_s)(s0)[res.jac_out.indices[b]][:, res.code_in.indices[b]]
            errors.append(float((ref - res.J[b]).abs().max().detach()))
        worst[at] = max(errors)
    out["jacobian_vs_jacrev_max_abs"] = worst
    # Resume exactness: interrupted after a checkpoint, resumed, against one run straight through
    import zarr

    from jsaectl import train as train_module

    full = train(TrainConfig(**common, checkpoint_every=10, out=str(root / "full.zarr")))
    original = train_module._save_checkpoint

    def save_then_stop(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        raise KeyboardInterrupt

    train_module._save_checkpoint = save_then_stop
    try:
        with contextlib.suppress(KeyboardInterrupt):
            train(TrainConfig(**common, checkpoint_every=10, out=str(root / "cut.zarr")))
    finally:
        train_module._save_checkpoint = original
    train(TrainConfig(**common, checkpoint_every=10, resume=True, out=str(root / "cut.zarr")))
    diffs, scale = [], []
    for name in ("sae_in/W_enc", "sae_in/W_dec", "sae_out/W_enc", "sae_out/W_dec"):
        a = zarr.open_group(full.store, mode="r")[name][...]
        b = zarr.open_group(str(root / "cut.zarr"), mode="r")[name][...]
        diffs.append(float(np.abs(a - b).max()))
        scale.append(float(np.abs(a).max()))
    out["resume_max_abs_diff"] = max(diffs)
    out["resume_bit_exact"] = max(diffs) == 0.0
    out["resume_within_bound"] = max(diffs) <= 1e-5 * max(scale)
    out["ddp"] = "skipped: one device" if torch.cuda.device_count() < 2 else "not run by this check (torchrun needed)"
    return out


@section("train")
def train_throughput(device: torch.device, root: Path, tiny: bool) -> dict[str, Any]:
    import bench_train as bt

    from jsaectl.configs import TrainConfig
    from jsaectl.mlp import MLPWeights
    from jsaectl.train import _Trainer

    shapes = {"tiny": (64, 256, 1024, 8, 256)} if tiny else {"pythia-70m": (512, 2048, 16384, 32, 4096),
                                                             "pythia-410m": (1024, 4096, 32768, 32, 4096)}
    repeats = 2 if tiny else 5
    out = {}
    for shape, (d, m, n, k, B) in shapes.items():
        g = torch.Generator().manual_seed(1)
        mlp = MLPWeights(torch.randn(m, d, generator=g) / d**0.5, 0.1 * torch.randn(m, generator=g),
                         torch.randn(d, m, generator=g) / m**0.5, 0.1 * torch.randn(d, generator=g), "gelu").to(device)
        x = torch.randn(B, d, generator=g).to(device)
        row = {}
        for key in ("a", "b", "d"):
            peak_reset(device)
            if key in "ab":
                cfg = TrainConfig(acts="bench", latents=n, k=k, batch_size=B, lam=1.0 if key == "a" else 0.0, tokens=B * 1000,
                                  lam_warmup=0.0, data_lanes=1, auxk_k=d // 2, device=str(device))
                trainer = _Trainer(cfg, bt._FakeActs(mlp), dist=bt._single(), device=device)  # type: ignore[arg-type]
                step = lambda t=trainer: t.step(500, x, None, 0, log=False)  # noqa: E731
            else:
                params, opt = bt._adam_pair(d, n, device)
                step = lambda p=params, o=opt: bt._baseline_step(p, o, mlp, x, k, 1.0)  # noqa: E731
            step()
            sync(device)
            times = []
            for _ in range(repeats):
                began = time.perf_counter()
                step()
                sync(device)
                times.append(time.perf_counter() - began)
            t = statistics.median(times)
            row[key] = {"s_per_step": round(t, 4), "tokens_per_s": round(B / t), "peak_gb": peak_gb(device)}
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
        row["a_vs_d"] = round(row["d"]["s_per_step"] / row["a"]["s_per_step"], 2)
        row["a_over_b"] = round(row["a"]["s_per_step"] / row["b"]["s_per_step"], 2)
        out[shape] = row
    return out


@section("harvest")
def harvest_throughput(device: torch.device, root: Path, tiny: bool) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from jsaectl import harvest as hv
    from jsaectl.configs import HarvestConfig
    from jsaectl.data import iter_contexts, iter_pieces

    shapes = {"tiny": ("gpt2", 4, 64, 4)} if tiny else {"gpt2-small": ("gpt2", 12, 768, 12), "pythia-410m": ("gpt_neox", 24, 1024, 16)}
    tokens = 8192 if tiny else 262_144
    out = {}
    for shape, (family, layers, d, heads) in shapes.items():
        path = tiny_model(root, family, layers, d, heads)
        model = AutoModelForCausalLM.from_pretrained(path).eval().to(device)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        contexts = [c for _, c in zip(range(tokens // 256), iter_contexts(iter_pieces(None), tok, 256))]
        batches = [torch.from_numpy(np.stack(contexts[i : i + 16])).long().to(device) for i in range(0, len(contexts), 16)]
        with torch.no_grad():
            model(input_ids=batches[0])
            sync(device)
            began = time.perf_counter()
            for ids in batches:
                model(input_ids=ids)
            sync(device)
            full = len(contexts) * 256 / (time.perf_counter() - began)
        del model
        busy = [0.0]
        original = hv._Writer.submit

        def timed_submit(self: Any, fn: Any, *args: Any) -> None:
            def timed(*a: Any) -> Any:
                t = time.perf_counter()
                try:
                    return fn(*a)
                finally:
                    busy[0] += time.perf_counter() - t
            original(self, timed, *args)

        hv._Writer.submit = timed_submit
        try:
            began = time.perf_counter()
            result = hv.harvest(HarvestConfig(model=str(path), layer=3, tokens=tokens, device=str(device),
                                              out=str(root / f"h-{shape}.zarr"), overwrite=True))
            wall = time.perf_counter() - began
        finally:
            hv._Writer.submit = original
        out[shape] = {"full_forward_tokens_per_s": round(full), "harvest_tokens_per_s": round(result.tokens_per_second),
                      "ratio": round(result.tokens_per_second / full, 2), "writer_busy_share": round(busy[0] / wall, 3)}
    return out


@section("jacobian")
def jacobian_throughput(device: torch.device, root: Path, tiny: bool) -> dict[str, Any]:
    from jsaectl import jacobian as jac
    from jsaectl.configs import HarvestConfig, JacobianConfig, TrainConfig
    from jsaectl.harvest import harvest
    from jsaectl.topk import TopExamples
    from jsaectl.train import train

    shapes = {"tiny": ("gpt_neox", 2, 64, 4, 512)} if tiny else {"pythia-70m": ("gpt_neox", 4, 512, 8, 16384),
                                                                 "pythia-410m": ("gpt_neox", 4, 1024, 16, 32768)}
    tokens = 8192 if tiny else 131_072
    out = {}
    for shape, (family, layers, d, heads, n) in shapes.items():
        path = tiny_model(root, family, layers, d, heads)
        acts = harvest(HarvestConfig(model=str(path), layer=1, tokens=tokens, device=str(device), out=str(root / f"j-{shape}.zarr"),
                                     overwrite=True)).store
        jsae = train(TrainConfig(acts=acts, latents=n, k=32, tokens=4096 * 2, batch_size=4096, device=str(device),
                                 out=str(root / f"jj-{shape}.zarr"), overwrite=True)).store
        cpu = [0.0]
        wrapped = {}
        for owner, name in ((jac._PairAccumulator, "add"), (TopExamples, "update_codes")):
            original = getattr(owner, name)
            wrapped[(owner, name)] = original

            def timed(*a: Any, _f: Any = original, **kw: Any) -> Any:
                t = time.perf_counter()
                try:
                    return _f(*a, **kw)
                finally:
                    cpu[0] += time.perf_counter() - t
            setattr(owner, name, timed)
        try:
            began = time.perf_counter()
            result = jac.jacobian(JacobianConfig(jsae=jsae, tokens=tokens, device=str(device), out=str(root / f"jc-{shape}.zarr"),
                                                 overwrite=True))
            wall = time.perf_counter() - began
        finally:
            for (owner, name), original in wrapped.items():
                setattr(owner, name, original)
        out[shape] = {"tokens_per_s": round(result.tokens_per_second), "cpu_side_share": round(cpu[0] / wall, 3)}
    return out


@section("data_wait")
def data_wait(device: torch.device, root: Path, tiny: bool) -> dict[str, Any]:
    from jsaectl.configs import HarvestConfig, TrainConfig
    from jsaectl.harvest import harvest
    from jsaectl.train import train

    d, tokens = (64, 40_000) if tiny else (768, 1_048_576)
    path = tiny_model(root, "gpt2", 4 if not tiny else 2, d, 12 if not tiny else 4)
    acts = harvest(HarvestConfig(model=str(path), layer=1, tokens=tokens, device=str(device), out=str(root / "wait-acts.zarr"),
                                 overwrite=True)).store
    out = {}
    for lam in (0.0, None):
        result = train(TrainConfig(acts=acts, expansion=32 if not tiny else 4, k=32 if not tiny else 8, lam=lam,
                                   device=str(device), out=str(root / f"wait-{lam}.zarr"), overwrite=True,
                                   batch_size=4096 if not tiny else 512))
        out["lam0" if lam == 0 else "jsae"] = {"tokens_per_s": round(result.tokens_per_second),
                                               "data_wait_share": round(result.metrics.get("data_wait", float("nan")), 3)}
    return out


@section("lazy")
def lazy_throughput(device: torch.device, root: Path, tiny: bool) -> dict[str, Any]:
    from jsaectl import lazy
    from jsaectl.configs import HarvestConfig, TrainConfig
    from jsaectl.harvest import harvest
    from jsaectl.train import train

    layers, d, heads, T, n, k, batch, steps = (2, 64, 4, 256, 512, 8, 512, 12) if tiny else (6, 512, 8, 2048, 16384, 32, 4096, 40)
    path = tiny_model(root, "gpt_neox", layers, d, heads)
    base = HarvestConfig(model=str(path), layer=min(3, layers - 1), tokens=(steps + 2) * batch, context_size=T,
                         device=str(device), overwrite=True)
    stores = {name: harvest(HarvestConfig(**{**base.__dict__, "lazy": name == "lazy", "out": str(root / f"lz-{name}.zarr")})).store
              for name in ("stored", "lazy")}
    spent = [0.0]
    original = lazy.StoreModel.chunk

    def timed(self: Any, c: int) -> Any:
        t = time.perf_counter()
        try:
            return original(self, c)
        finally:
            spent[0] += time.perf_counter() - t

    out = {}
    for name, url in [*stores.items(), *stores.items()]:  # taking turns; the second of each counts (the first warms up)
        lazy.StoreModel.chunk = timed
        try:
            spent[0] = 0.0
            began = time.perf_counter()
            result = train(TrainConfig(acts=url, latents=n, k=k, batch_size=batch, tokens=steps * batch, lam=1.0,
                                       device=str(device), out=str(root / f"lz-train-{name}.zarr"), overwrite=True))
            wall = time.perf_counter() - began
        finally:
            lazy.StoreModel.chunk = original
        out[name] = {"tokens_per_s": round(result.tokens_per_second), "data_wait_share": round(result.metrics.get("data_wait", 0), 3),
                     "x_compute_share": round(spent[0] / wall, 3)}
    out["lazy_over_stored"] = round(out["lazy"]["tokens_per_s"] / max(1, out["stored"]["tokens_per_s"]), 2)
    return out


def table() -> str:
    lines = []
    for name, result in RESULTS.items():
        if "error" in result:
            lines.append(f"{name:12s} ERROR {result['error']}")
            continue
        for key, value in result.items():
            if key in ("seconds", "traceback"):
                continue
            lines.append(f"{name:12s} {key:26s} {json.dumps(value)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU smoke run: the CI test)")
    parser.add_argument("--out", default="gpu_check.json", help="where the JSON goes")
    parser.add_argument("--only", default="correctness,train,harvest,jacobian,data_wait,lazy")
    args = parser.parse_args()
    device = torch.device(args.device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    RESULTS["machine"] = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                          "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "tiny": args.tiny}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        for name in args.only.split(","):
            {"correctness": correctness, "train": train_throughput, "harvest": harvest_throughput,
             "jacobian": jacobian_throughput, "data_wait": data_wait, "lazy": lazy_throughput}[name](device, root, args.tiny)
    RESULTS["machine"]["total_seconds"] = round(time.perf_counter() - began, 1)
    print(table())
    Path(args.out).write_text(json.dumps(RESULTS, indent=1))
    failed = [name for name, r in RESULTS.items() if "error" in r]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
