"""train: exact resume after SIGKILL, DistributedDataParallel, options, bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from conftest import kill_at_first_checkpoint
from jsaectl.cli import app
from jsaectl.train import TrainConfig, lam_at, lr_at, train

runner = CliRunner()
SMALL = ["--expansion", "4", "--k", "4", "--batch-size", "256", "--log-every", "5"]


@pytest.fixture
def acts(acts_store) -> str:
    return acts_store


def _weights(url: str) -> dict[str, np.ndarray]:
    g = zarr.open_group(url, mode="r")
    return {f"{s}/{p}": g[f"{s}/{p}"][...] for s in ("sae_in", "sae_out") for p in ("W_enc", "b_enc", "W_dec", "b_dec")}


def _train(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jsaectl", "train", *args], capture_output=True, text=True, timeout=600)


def test_trains_and_records_history(acts, tmp_path):
    result = runner.invoke(app, ["train", acts, *SMALL, "--tokens", "20k", "--lam-warmup", "0.5", "-o", str(tmp_path / "j.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    g = zarr.open_group(summary["store"], mode="r")
    meta = g.attrs["jsaectl"]
    assert meta["kind"] == "jsae" and meta["complete"] and meta["acts_store"] == acts
    assert g["sae_in/W_enc"].shape == (32, 128) and g["sae_out/W_dec"].shape == (128, 32)
    assert np.allclose(np.linalg.norm(g["sae_in/W_dec"][...], axis=1), 1, atol=1e-5)
    hist = {k: g[f"history/{k}"][...] for k in ("step", "fvu_in", "fvu_out", "j_count", "lam")}
    assert list(hist["step"]) == [5 * i for i in range(1, 16)] + [78]
    assert hist["fvu_in"][-1] < hist["fvu_in"][0] and hist["fvu_out"][-1] < hist["fvu_out"][0]
    assert hist["lam"][0] < hist["lam"][-1] == meta["lam"] == 0.5 * 16 / 32
    assert summary["tokens_per_second"] > 0 and 0 < summary["j_count"] <= 16
    assert "checkpoint" not in g


def test_schedules():
    cfg = TrainConfig(acts="-", tokens=1000 * 4096, batch_size=4096, lr=1e-3, lam=2.0)
    assert cfg.n_steps == 1000
    lrs = [lr_at(cfg, s) for s in range(cfg.n_steps)]
    assert lrs[0] == pytest.approx(1e-3 / 10) and lrs[9] == lrs[500] == lrs[799] == pytest.approx(1e-3)  # 1% warm-up
    assert lrs[800] == pytest.approx(1e-3) and lrs[900] == pytest.approx(5e-4) and 0 < lrs[-1] < 1e-5  # last 20% to 0
    assert max(lrs) == pytest.approx(1e-3)
    lams = [lam_at(cfg, s) for s in range(cfg.n_steps)]
    assert lams[0] == 0 and lams[25] == pytest.approx(1.0) and lams[50] == lams[-1] == 2.0  # 5% ramp
    short = TrainConfig(acts="-", tokens=30 * 4096, batch_size=4096, lr=1e-3)  # fewer steps than 1 / lr_warmup
    assert max(lr_at(short, s) for s in range(short.n_steps)) == pytest.approx(1e-3)


def test_bf16_autocast_trains_with_the_penalty_on_cpu(acts, tmp_path):
    result = runner.invoke(app, ["train", acts, *SMALL, "--tokens", "5k", "--lam", "1", "--autocast",
                                 "-o", str(tmp_path / "a.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["jac_l1"] > 0 and summary["j_count"] > 0 and all(np.isfinite(_weights(summary["store"])["sae_in/W_enc"]).ravel())


def test_lam_zero_trains_the_plain_pair_and_still_measures_the_jacobian(acts, tmp_path):
    cfg = TrainConfig(acts=acts, expansion=4, k=4, batch_size=256, tokens=10_000, lam=0.0, out=str(tmp_path / "b.zarr"))
    result = train(cfg)
    assert result.metrics["lam"] == 0 and result.metrics["j_count"] > 0


@pytest.mark.parametrize("extra", [["--jacobian-at", "reconstruction"], ["--auxk", "0.03", "--dead-tokens", "1k"]])
def test_variants_train(acts, tmp_path, extra):
    result = runner.invoke(app, ["train", acts, *SMALL, "--tokens", "5k", "-o", str(tmp_path / "v.zarr"), *extra])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("every", [["--checkpoint-every", "20", "--checkpoint-minutes", "0"],
                                   ["--checkpoint-every", "0", "--checkpoint-minutes", "0.0005"]],  # by the clock: every 30 ms
                         ids=["by-steps", "by-minutes"])
def test_resume_after_sigkill_gives_the_same_weights(acts, tmp_path, every):
    args = [acts, *SMALL, "--tokens", "40k", *every]
    reference = _train(args + ["-o", str(tmp_path / "ref.zarr")])
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed.zarr"
    kill_at_first_checkpoint(args, out)
    assert zarr.open_group(str(out), mode="r").attrs["jsaectl"]["complete"] is False

    refused = _train(args + ["-o", str(out)])
    assert refused.returncode == 1 and "--resume" in refused.stderr
    resumed = _train(["--resume", "-o", str(out)])  # the options come from the store
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    ref, got = _weights(str(tmp_path / "ref.zarr")), _weights(str(out))
    for name in ref:
        assert ref[name].tobytes() == got[name].tobytes(), name
    ref_hist = zarr.open_group(str(tmp_path / "ref.zarr"))["history/step"][...]
    assert (zarr.open_group(str(out))["history/step"][...] == ref_hist).all()


def test_ddp_with_two_processes_matches_one_process(acts, tmp_path):
    # checkpoints by the clock too: rank 0 decides for both processes (a disagreement would hang)
    args = [acts, *SMALL, "--tokens", "10k", "--data-lanes", "2", "--device", "cpu", "--checkpoint-minutes", "0.0001"]
    single = _train(args + ["-o", str(tmp_path / "one.zarr")])
    assert single.returncode == 0, single.stderr
    # With wandb installed, the run logs to W&B too (offline): only rank 0 may create a run.
    wandb = ["--wandb", "jsaectl-ddp"] if importlib.util.find_spec("wandb") else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    env.pop("WANDB_SERVICE", None)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "jsaectl", "train", *args, "-o", str(tmp_path / "two.zarr"), *wandb],
                         capture_output=True, text=True, timeout=600, env=env)
    assert ddp.returncode == 0, ddp.stderr
    assert ddp.stdout.strip().splitlines()[0] == str(tmp_path / "two.zarr")
    if wandb:
        (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
        assert run_dir.name.endswith("-" + zarr.open_group(str(tmp_path / "two.zarr"), mode="r").attrs["jsaectl"]["wandb"]["id"])
    one, two = _weights(str(tmp_path / "one.zarr")), _weights(str(tmp_path / "two.zarr"))
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _bad(args: list[str], code: int, stores: list[str]) -> str:
    before = {p: p.stat().st_mtime_ns for s in stores for p in Path(s).rglob("*")}
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == code, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    last = lines[-1]
    assert len(lines) == 1 and last.startswith("jsaectl: error:"), result.stderr
    assert "hint" in last or code == 2  # a refused run says what to do; a bad option names itself
    assert {p: p.stat().st_mtime_ns for s in stores for p in Path(s).rglob("*")} == before
    return last


def test_bad_options_are_refused_and_touch_nothing(acts, tmp_path):
    out = str(tmp_path / "j.zarr")
    done = runner.invoke(app, ["train", acts, *SMALL, "--tokens", "2k", "-o", out])
    assert done.exit_code == 0, done.output
    stores = [acts, out]
    assert "--k must be positive" in _bad([acts, "--k", "0"], 2, stores)
    assert "more than" in _bad([acts, "--k", "200", "--latents", "100"], 2, stores)
    assert "more than the 128 latents" in _bad([acts, "--k", "200", "--expansion", "4"], 2, stores)
    assert "--lam must be >= 0" in _bad([acts, "--lam", "-1"], 2, stores)
    assert "--batch-size must be positive" in _bad([acts, "--batch-size", "0"], 2, stores)
    assert "needs an activations store" in _bad([out], 1, stores)
    assert "different config" in _bad([acts, *SMALL, "--tokens", "4k", "-o", out], 1, stores)
    assert "no store at" in _bad([str(tmp_path / "nothing.zarr")], 1, stores)
    assert "no store arrived on stdin" in _bad([], 1, stores)
    # The same command again is a no-op that still names the store (so scripts can re-run).
    before = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*")}
    again = runner.invoke(app, ["train", acts, *SMALL, "--tokens", "2k", "-o", out])
    assert again.exit_code == 0 and again.stdout.strip() == out and "already trained" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in Path(out).rglob("*")} == before


def test_a_terminal_on_stdin_fails_at_once_instead_of_waiting():
    import pty

    parent, child = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "jsaectl", "train"], stdin=child, capture_output=True, text=True, timeout=60)
    finally:
        os.close(parent), os.close(child)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "stdin is a terminal" in proc.stderr and "hint" in proc.stderr


def test_stored_y_trains_like_recomputed_y(gpt2_dir, corpus, tmp_path):
    """A store harvested --with-output trains on its stored y; float32 stores make that y equal
    f(x) from the stored weights to ~1e-6, so both runs must end at (nearly) the same weights."""
    from jsaectl.harvest import HarvestConfig, harvest

    stores = {}
    for with_y in (False, True):
        acts = harvest(HarvestConfig(model=str(gpt2_dir), layer=1, dataset=str(corpus), tokens=8000, context_size=32,
                                     dtype="float32", with_output=with_y, out=str(tmp_path / f"a{with_y}.zarr"))).store
        stores[with_y] = train(TrainConfig(acts=acts, expansion=4, k=4, batch_size=256, tokens=4096,
                                           out=str(tmp_path / f"j{with_y}.zarr"))).store
    a, b = _weights(stores[False]), _weights(stores[True])
    assert zarr.open_group(str(tmp_path / "aTrue.zarr"))["y"].shape[0] > 0
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-5, err_msg=name)
