"""Lazy activations stores (harvest --lazy): the tokens are stored, every reader computes x.

x from a lazy store is bit-identical on the CPU to a stored float32 harvest (the bundled
model and three families: Conv1D, parallel residual, gated); training, jacobian and maxact
give the same results; resume and DDP behave as with a stored store; a model that is not the
one the store was harvested with is refused, naming what differs, before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from jsaectl.acts import Activations
from conftest import digest, kill_at_first_checkpoint, pipeline
from jsaectl.cli import app
from jsaectl.harvest import HarvestConfig, harvest
from jsaectl.jacobian import JacobianConfig, jacobian
from jsaectl.maxact import MaxactConfig, maxact
from jsaectl.train import TrainConfig, train

runner = CliRunner()
JSAECTL = [sys.executable, "-m", "jsaectl"]
SMALL = ["--expansion", "4", "--k", "4", "--batch-size", "256", "--log-every", "5"]


def _pair(model: str, corpus: str, root: Path, **kw) -> tuple[str, str]:
    """A stored float32 harvest and a lazy one of the same tokens."""
    base = HarvestConfig(model=model, layer=1, dataset=corpus, tokens=20_000, context_size=32, **kw)
    stored = harvest(replace(base, dtype="float32", out=str(root / "stored.zarr"))).store
    lazy = harvest(replace(base, lazy=True, out=str(root / "lazy.zarr"))).store
    return stored, lazy


@pytest.mark.parametrize("family", ["bundled", "gpt2", "gpt_neox", "llama"])
def test_lazy_x_is_a_stored_float32_harvest_bit_for_bit(family, model_factory, corpus, tmp_path):
    model, dataset, layer = ("jsaectl-demo", "jsaectl-sample", 2) if family == "bundled" else \
        (str(model_factory(family)), str(corpus), 1)
    base = HarvestConfig(model=model, layer=layer, dataset=dataset, tokens=20_000, context_size=32 if family != "bundled" else 256)
    a = Activations.open(harvest(replace(base, dtype="float32", out=str(tmp_path / "s.zarr"))).store)
    b = Activations.open(harvest(replace(base, lazy=True, out=str(tmp_path / "l.zarr"))).store, device="cpu")
    assert b.lazy and not a.lazy and b.n_tokens == a.n_tokens and b.rows_per_chunk == a.rows_per_chunk
    assert "x" not in b.store.group and b.store.array("tokens").dtype == np.uint16
    assert np.array_equal(a.tokens(0, a.n_tokens), b.tokens(0, b.n_tokens))
    assert a.n_chunks > 1
    for c in range(a.n_chunks):  # chunk by chunk, as training reads them
        assert np.array_equal(a.read("x", *a.chunk_range(c)), b.read("x", *b.chunk_range(c))), c
    assert b.lazy_x.bit_identical  # the witness matched to the bit
    # a window across a chunk boundary, as maxact reads one
    lo = a.rows_per_chunk - 5
    assert np.array_equal(a.read("x", lo, lo + 10), b.read("x", lo, lo + 10))


def test_a_lazy_store_grows_by_about_two_bytes_a_token(tmp_path):
    sizes = {}
    for n in (100_000, 600_000):
        out = harvest(HarvestConfig(tokens=n, lazy=True, out=str(tmp_path / f"{n}.zarr")))
        sizes[out.n_tokens] = sum(p.stat().st_size for p in Path(out.store).rglob("*") if p.is_file())
    (n1, s1), (n2, s2) = sorted(sizes.items())
    assert (s2 - s1) / (n2 - n1) <= 2.1, (s2 - s1) / (n2 - n1)


def test_training_jacobian_and_maxact_equal_those_of_a_stored_store(acts_store, lazy_acts_store, tmp_path):
    results = {}
    for name, acts in (("stored", acts_store), ("lazy", lazy_acts_store)):
        jsae = train(TrainConfig(acts=acts, expansion=4, k=4, batch_size=256, tokens=8_000, log_every=5,
                                 out=str(tmp_path / f"{name}-jsae.zarr"))).store
        jac = jacobian(JacobianConfig(jsae=jsae, tokens=4_000, out=str(tmp_path / f"{name}-jac.zarr"))).store
        found = maxact(MaxactConfig(jsae=jsae, latents=(1, 7), examples=4, context=3)).to_json()
        results[name] = (zarr.open_group(jsae, mode="r"), zarr.open_group(jac, mode="r"), found["latents"])
    (js, jc, ms), (ls, lc, ml) = results["stored"], results["lazy"]
    for key in ("sae_in/W_enc", "sae_out/W_dec", "history/loss", "history/j_count", "history/fvu_out"):
        assert js[key][...].tobytes() == ls[key][...].tobytes(), key
    for key in ("connections/input", "connections/output", "connections/strength", "latents/in_top_rows"):
        assert np.array_equal(jc[key][...], lc[key][...]), key
    assert jc.attrs["jsaectl"]["sparsity"] == lc.attrs["jsaectl"]["sparsity"]
    assert ms == ml


def _weights(url: str) -> dict[str, bytes]:
    g = zarr.open_group(url, mode="r")
    return {f"{s}/{p}": g[f"{s}/{p}"][...].tobytes() for s in ("sae_in", "sae_out") for p in ("W_enc", "W_dec")}


def _train(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*JSAECTL, "train", *args], capture_output=True, text=True, timeout=600, **kw)


def test_resume_after_sigkill_is_bit_identical(lazy_acts_store, tmp_path):
    args = [lazy_acts_store, *SMALL, "--tokens", "30k", "--checkpoint-every", "20", "--checkpoint-minutes", "0"]
    assert _train(args + ["-o", str(tmp_path / "ref.zarr")]).returncode == 0
    out = tmp_path / "killed.zarr"
    kill_at_first_checkpoint(args, out)
    assert zarr.open_group(str(out), mode="r").attrs["jsaectl"]["complete"] is False
    resumed = _train(["--resume", "-o", str(out)])
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr
    assert _weights(str(tmp_path / "ref.zarr")) == _weights(str(out))


def test_two_processes_compute_their_own_lanes_and_match_one(lazy_acts_store, tmp_path):
    args = [lazy_acts_store, *SMALL, "--tokens", "10k", "--data-lanes", "2", "--device", "cpu"]
    assert _train(args + ["-o", str(tmp_path / "one.zarr")]).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "jsaectl", "train", *args, "-o", str(tmp_path / "two.zarr")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert ddp.returncode == 0, ddp.stderr
    one, two = zarr.open_group(str(tmp_path / "one.zarr")), zarr.open_group(str(tmp_path / "two.zarr"))
    for name in ("sae_in/W_enc", "sae_out/W_dec"):
        np.testing.assert_allclose(two[name][...], one[name][...], rtol=1e-4, atol=1e-5, err_msg=name)


def test_the_pipe_is_the_same(gpt2_dir, corpus, tmp_path):
    proc = pipeline(f"harvest {gpt2_dir} -l 1 -d {corpus} -n 8k -T 32 --lazy -o {tmp_path}/a.zarr",
                    f"train {' '.join(SMALL)} --tokens 4k -o {tmp_path}/j.zarr",
                    f"jacobian -n 2k -o {tmp_path}/jac.zarr")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{tmp_path}/jac.zarr"


def test_shards_and_repair_work_on_lazy_stores(gpt2_dir, corpus, tmp_path):
    base = ["harvest", str(gpt2_dir), "-l", "1", "-d", str(corpus), "-n", "20k", "-T", "32", "--lazy"]
    clean = tmp_path / "clean.zarr"
    assert runner.invoke(app, [*base, "-o", str(clean)]).exit_code == 0
    sharded = tmp_path / "sharded.zarr"
    for i in range(2):
        assert runner.invoke(app, [*base, "--shard", f"{i}/2", "-o", str(sharded)]).exit_code == 0
    assert np.array_equal(zarr.open_group(str(clean))["tokens"][...], zarr.open_group(str(sharded))["tokens"][...])
    os.remove(clean / "tokens" / "c" / "0")  # damage: a block of tokens gone
    bad = runner.invoke(app, ["verify", str(clean)])
    assert bad.exit_code == 1 and "tokens" in bad.stderr
    fixed = runner.invoke(app, ["verify", "--repair", str(clean)])
    assert fixed.exit_code == 0, fixed.output
    assert np.array_equal(zarr.open_group(str(clean))["tokens"][...], zarr.open_group(str(sharded))["tokens"][...])


# ---------------------------------------------------------------------------------------------
# A lazy store cannot silently change meaning


@pytest.fixture
def own_model(model_factory, corpus, tmp_path) -> tuple[Path, str]:
    """A private copy of the tiny GPT-2 and a lazy store harvested from it."""
    model = Path(shutil.copytree(model_factory("gpt2"), tmp_path / "model"))
    store = harvest(HarvestConfig(model=str(model), layer=1, dataset=str(corpus), tokens=3_000, context_size=32, lazy=True,
                                  out=str(tmp_path / "lazy.zarr"))).store
    return model, store


def _edit(model: Path, change) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        change(m)
    m.save_pretrained(model)


def _refused(store: str, tmp_path: Path) -> str:
    """train and verify both refuse the store with one line, and nothing is written."""
    before = digest(store)
    out = tmp_path / "never.zarr"
    result = runner.invoke(app, ["train", store, *SMALL, "-o", str(out)])
    assert result.exit_code == 1 and result.stdout == "", result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jsaectl: error:") and "hint:" in lines[0], result.stderr
    assert not out.exists() and digest(store) == before
    checked = runner.invoke(app, ["verify", store])
    assert checked.exit_code == 1 and "cannot compute its x" in checked.stderr
    return lines[0]


def test_other_weights_at_the_same_path_are_named(own_model, tmp_path):
    model, store = own_model
    _edit(model, lambda m: m.transformer.h[0].attn.c_attn.weight.add_(0.01))
    assert "transformer.h.0.attn.c_attn.weight" in _refused(store, tmp_path)


def test_weights_x_does_not_depend_on_are_not_checked(own_model, tmp_path):
    model, store = own_model
    _edit(model, lambda m: m.transformer.h[2].mlp.c_fc.weight.add_(0.01))  # a layer after the harvested one
    assert Activations.open(store, device="cpu").lazy_x.bit_identical
    info = Activations.open(store).meta["lazy"]["fingerprint"]
    assert "transformer.h.0.attn.c_attn.weight" in info and not any(".h.2." in n or "lm_head" in n for n in info)


def test_another_layer_l_mlp_is_named(own_model, tmp_path):
    model, store = own_model
    _edit(model, lambda m: m.transformer.h[1].mlp.c_fc.bias.add_(0.01))
    assert "layer 1's MLP" in _refused(store, tmp_path)


def test_a_checkpoint_saved_in_another_precision_is_named(own_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model, store = own_model
    AutoModelForCausalLM.from_pretrained(model).to(torch.bfloat16).save_pretrained(model)
    assert "saved in bfloat16; the store's was float32" in _refused(store, tmp_path)


def test_a_model_that_computes_otherwise_is_caught_by_the_witness(own_model, tmp_path):
    model, store = own_model
    cfg = json.loads((model / "config.json").read_text())
    cfg["layer_norm_epsilon"] = 0.5  # the same weights, another x
    (model / "config.json").write_text(json.dumps(cfg))
    assert "another x" in _refused(store, tmp_path)


def test_a_model_that_is_gone_is_one_line_with_a_hint(own_model, tmp_path):
    model, store = own_model
    shutil.rmtree(model)
    assert "cannot be loaded here" in _refused(store, tmp_path)


@pytest.mark.parametrize("flag", [["--with-output"], ["--dtype", "float16"], ["--trust-remote-code"], ["--allow-nonfinite"]])
def test_options_that_do_not_apply_to_a_lazy_store_are_refused(flag, gpt2_dir, corpus, tmp_path):
    out = tmp_path / "x.zarr"
    result = runner.invoke(app, ["harvest", str(gpt2_dir), "-l", "1", "-d", str(corpus), "--lazy", *flag, "-o", str(out)])
    assert result.exit_code == 2 and result.stdout == "" and flag[0] in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_lazy_store_on_an_fsspec_url_reads_like_a_local_one(gpt2_dir, corpus, tmp_path):
    base = HarvestConfig(model=str(gpt2_dir), layer=1, dataset=str(corpus), tokens=4_000, context_size=32)
    local = Activations.open(harvest(replace(base, lazy=True, out=str(tmp_path / "l.zarr"))).store, device="cpu")
    remote = Activations.open(harvest(replace(base, lazy=True, out="memory://jsaectl-test/lazy.zarr")).store, device="cpu")
    assert remote.url.startswith("memory://") and remote.lazy
    assert np.array_equal(local.read("x", 0, local.n_tokens), remote.read("x", 0, remote.n_tokens))


def test_import_reads_a_lazy_store(jsae_store, lazy_acts_store, tmp_path):
    pair = tmp_path / "pair"
    assert runner.invoke(app, ["export", jsae_store, "--format", "jsae-pair", "--out", str(pair)]).exit_code == 0
    result = runner.invoke(app, ["import", str(pair), "--acts", lazy_acts_store, "-o", str(tmp_path / "j.zarr")])
    assert result.exit_code == 0, result.output
    found = runner.invoke(app, ["maxact", str(tmp_path / "j.zarr"), "--top-latents", "1", "--examples", "3", "--json"])
    assert found.exit_code == 0 and json.loads(found.stdout)["latents"][0]["examples"]
