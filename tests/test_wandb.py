"""train / jacobian / compare --wandb, in W&B's offline mode (no network, no account).

An offline run is read back with wandb's own reader of its transaction log: ``wandb leet
inspect --json RUN_DIR`` prints each record of ``run-ID.wandb`` (run, config, history,
summary, exit …) as one JSON object a line, so these tests check what ``wandb sync`` would
upload, not what jsaectl meant to send.
"""

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
from jsaectl.train import HISTORY_KEYS
from jsaectl import tracking

# Every test but the one of a missing package needs wandb (the dev extra installs it).
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")

runner = CliRunner()
SMALL = ["--expansion", "4", "--k", "4", "--batch-size", "256", "--log-every", "5"]
# Nothing here may reach a W&B server: offline, and a closed local port should anything try.
OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": ""}


@pytest.fixture(scope="module")
def wandb_dir(tmp_path_factory) -> Path:
    """WANDB_DIR for the whole module, W&B offline (runs are told apart by their ids)."""
    root = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**OFFLINE, "WANDB_DIR": str(root)}.items():
            mp.setenv(key, value)
        yield root


def _env(wandb_dir: Path) -> dict[str, str]:
    """A child's environment: offline, and its own wandb service (wandb tells children of a
    process that has used it to share its service, as jsaectl's users' processes do not)."""
    env = {**os.environ, **OFFLINE, "WANDB_DIR": str(wandb_dir)}
    env.pop("WANDB_SERVICE", None)
    return env


def _run_dirs(wandb_dir: Path, run_id: str | None = None) -> list[Path]:
    """The offline folders (of one run), oldest first: ``offline-run-DATE_TIME-ID``, and
    ``…-ID-1`` for another one of the same run in the same second."""
    found = []
    for path in wandb_dir.glob("wandb/offline-run-*"):
        parts = path.name.split("-")  # offline, run, DATE_TIME, ID[, N]
        if run_id is None or parts[3] == run_id:
            found.append(((parts[2], int(parts[4]) if len(parts) > 4 else 0), path))
    return [path for _, path in sorted(found)]


def _read(run_dir: Path) -> dict:
    """An offline run as its records say: the run record, the merged config and summary, the
    history by step, and the exit code."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    run, config, summary, history, exit_code = {}, {}, {}, {}, None
    for record in map(json.loads, filter(str.strip, out.stdout.splitlines())):
        kind = record["type"]
        if kind == "run":
            run = record["run"]
            config.update(run.get("config", {}).get("update", {}))
        elif kind == "config":
            config.update(record["config"].get("update", {}))
        elif kind == "summary":
            summary.update(record["summary"].get("update", {}))
        elif kind == "history":
            history[record["history"].get("step", {}).get("num", 0)] = record["history"]["item"]
        elif kind == "exit":
            exit_code = record["exit"].get("exit_code", 0)
    return {"run": run, "config": config, "summary": summary, "history": history, "exit_code": exit_code}


@pytest.fixture(scope="module")
def logged(acts_store, wandb_dir, tmp_path_factory) -> dict:
    """A JSAE trained with --wandb (through the CLI, in this process), and what the CLI printed."""
    out = str(tmp_path_factory.mktemp("logged") / "j.zarr")
    result = runner.invoke(app, ["train", acts_store, *SMALL, "--tokens", "20k", "-o", out, "--wandb", "jsaectl-test",
                                 "--wandb-name", "tiny", "--wandb-tags", "a,b", "--wandb-tags", "c"])
    assert result.exit_code == 0, result.output
    return {"store": out, "stdout": result.stdout, "stderr": result.stderr,
            "record": zarr.open_group(out, mode="r").attrs["jsaectl"]["wandb"]}


def test_every_history_key_has_one_wandb_name():
    assert set(tracking.METRIC_NAMES) == set(HISTORY_KEYS) - {"step"}
    assert len(set(tracking.METRIC_NAMES.values())) == len(tracking.METRIC_NAMES)
    row = {"step": 10, "mse_in": 0.5, "dead_in": 0.25, "j_count": 3.0, "fvu_in": 0.1, "auxk": float("nan")}
    assert tracking.metrics(row, 128) == {"losses/mse_loss": 0.5, "sparsity/dead_features": 32, "jsaectl/dead_in": 0.25,
                                          "jacobian_sparsity/jac_above_0.01": 3.0, "jsaectl/fvu_in": 0.1}
    assert tracking.split_tags(("a,b", " c ", "a")) == ["a", "b", "c"]


@needs_wandb
def test_train_logs_every_history_row_under_the_reference_names(logged, wandb_dir):
    record = logged["record"]
    assert logged["stdout"] == logged["store"] + "\n"  # stdout stays the next stage's input
    assert not [line for line in logged["stderr"].splitlines() if line.startswith("wandb")]
    assert record["project"] == "jsaectl-test" and record["name"] == "tiny" and record["url"] is None  # offline: no URL yet
    (run_dir,) = _run_dirs(wandb_dir, record["id"])
    assert f"wandb sync {run_dir}" in logged["stderr"]
    run = _read(run_dir)
    assert run["run"]["run_id"] == record["id"] and run["run"]["tags"] == ["a", "b", "c"] and run["exit_code"] == 0
    g = zarr.open_group(logged["store"], mode="r")
    steps = [int(s) for s in g["history/step"][...]]
    assert sorted(run["history"]) == steps == [5 * i for i in range(1, 16)] + [78]
    history = {k: g[f"history/{k}"][...] for k in HISTORY_KEYS}
    for i, step in enumerate(steps):
        item = run["history"][step]
        for key, name in tracking.METRIC_NAMES.items():
            assert item[name] == pytest.approx(history[key][i], rel=1e-12), (step, name)
        assert item["sparsity/dead_features"] == round(history["dead_in"][i] * 128)
        assert item["sparsity/dead_features2"] == round(history["dead_out"][i] * 128)
    meta = g.attrs["jsaectl"]
    assert run["config"]["config"] == meta["config"] and run["config"]["store"] == logged["store"]
    assert run["config"]["acts_store"] == meta["acts_store"] and "complete" not in run["config"]
    final = meta["final_metrics"]
    assert run["summary"]["losses/overall_loss"] == pytest.approx(final["loss"])
    assert run["summary"]["jsaectl/data_wait"] == pytest.approx(final["data_wait"])  # the run's, not the last row's
    assert run["summary"]["jsaectl/tokens_per_second"] == pytest.approx(meta["tokens_per_second"])


@needs_wandb
def test_jacobian_and_compare_add_their_figures_to_the_training_run(logged, jsae_store, wandb_dir, tmp_path):
    record = logged["record"]
    jac = runner.invoke(app, ["jacobian", logged["store"], "-n", "2000", "-o", str(tmp_path / "jac.zarr"),
                              "--wandb", "jsaectl-test"])
    assert jac.exit_code == 0, jac.output
    assert "adding the jacobian results to the JSAE's W&B run" in jac.stderr
    added = _read(_run_dirs(wandb_dir, record["id"])[-1])
    assert added["run"]["run_id"] == record["id"]
    sparsity = zarr.open_group(str(tmp_path / "jac.zarr"), mode="r").attrs["jsaectl"]["sparsity"]
    assert added["summary"]["jacobian/j>0.01"] == pytest.approx(sparsity["above"]["0.01"]["mean_count"])
    assert added["summary"]["jacobian/j_gini"] == pytest.approx(sparsity["gini"])
    (table_step,) = [s for s, item in added["history"].items() if item.get("jacobian/top_connections._type") == "table-file"]
    assert table_step == 79  # after the training run's last step, which offline W&B does not know

    before = set(_run_dirs(wandb_dir))
    cmp = runner.invoke(app, ["compare", logged["store"], jsae_store, "-n", "1000", "--eval-tokens", "0", "--wandb", "jsaectl-test"])
    assert cmp.exit_code == 0, cmp.output
    assert "W&B run" in cmp.stdout and f"jsaectl-test/{record['id']}" in cmp.stdout  # the table shows each JSAE's run
    assert "was not logged to W&B: logging the compare results to a new W&B run" in cmp.stderr
    new = sorted(set(_run_dirs(wandb_dir)) - before)
    assert len(new) == 2 and sum(f"-{record['id']}" in d.name for d in new) == 1
    for run_dir in new:
        summary = _read(run_dir)["summary"]
        assert "compare/j>0.01" in summary and "compare/ev_in" in summary and summary["compare/table._type"] == "table-file"


@needs_wandb
def test_resume_after_sigkill_continues_the_same_run(acts_store, wandb_dir, tmp_path):
    out = tmp_path / "killed.zarr"
    args = [acts_store, *SMALL, "--tokens", "20k", "--checkpoint-every", "10", "--checkpoint-minutes", "0",
            "--wandb", "jsaectl-resume"]
    kill_at_first_checkpoint(args, out, env=_env(wandb_dir))
    attrs = zarr.open_group(str(out), mode="r").attrs["jsaectl"]
    assert attrs["complete"] is False and attrs["wandb"]["project"] == "jsaectl-resume"  # recorded at the start
    run_id = attrs["wandb"]["id"]
    resumed = subprocess.run([sys.executable, "-m", "jsaectl", "train", "--resume", "-o", str(out)],
                             capture_output=True, text=True, timeout=600, env=_env(wandb_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert f"continuing W&B run jsaectl-resume/{run_id}" in resumed.stderr and "W&B logging failed" not in resumed.stderr
    assert zarr.open_group(str(out), mode="r").attrs["jsaectl"]["wandb"]["id"] == run_id
    killed, continued = _run_dirs(wandb_dir, run_id)  # the same run id, one offline folder per process
    # The resumed process logs the store's history up to the checkpoint again, from the first step
    # W&B does not already hold (offline, what the killed process had flushed before the SIGKILL,
    # which depends on when it died), and then its own steps: the two folders make the run whole.
    steps = [int(s) for s in zarr.open_group(str(out), mode="r")["history/step"][...]]
    before, after = set(_read(killed)["history"]), set(_read(continued)["history"])
    assert sorted(before | after) == steps == [5 * i for i in range(1, 16)] + [78]
    assert after == {s for s in steps if s > max(before, default=0)}


def test_without_the_package_wandb_is_one_line_and_creates_nothing(acts_store, jsae_store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails as if it were not installed
    for args in (["train", acts_store, *SMALL, "--tokens", "2k", "-o", str(tmp_path / "t.zarr")],
                 ["jacobian", jsae_store, "-n", "1000", "-o", str(tmp_path / "j.zarr")],
                 ["compare", jsae_store, "-n", "1000", "--eval-tokens", "0"]):
        result = runner.invoke(app, [*args, "--wandb", "p"])
        assert result.exit_code == 1 and result.stdout == "", result.output
        assert result.stderr.strip().splitlines() == [
            'jsaectl: error: --wandb needs the wandb package, which is not installed (hint: pip install "jsaectl[wandb]")']
    assert list(tmp_path.iterdir()) == []


def _one_failure_note(stderr: str) -> str:
    notes = [line for line in stderr.splitlines() if line.startswith(("jsaectl:", "wandb")) or "failed" in line]
    assert len(notes) == 1 and notes[0].startswith("jsaectl: note: W&B logging failed: "), stderr
    assert notes[0].endswith("; training goes on, the store's history keeps every metric")
    return notes[0]


@needs_wandb
def test_a_failing_log_call_is_one_note_and_training_goes_on(acts_store, wandb_dir, tmp_path, monkeypatch):
    from wandb.sdk.wandb_run import Run

    def quota(*args, **kwargs):
        raise RuntimeError("quota exceeded\n(details)")

    monkeypatch.setattr(Run, "log", quota)
    out = str(tmp_path / "j.zarr")
    result = runner.invoke(app, ["train", acts_store, *SMALL, "--tokens", "10k", "-o", out, "--wandb", "p"])
    assert result.exit_code == 0, result.output
    assert "W&B logging failed: quota exceeded;" in _one_failure_note(result.stderr)
    g = zarr.open_group(out, mode="r")
    assert g.attrs["jsaectl"]["complete"] and np.array_equal(g["history/step"][...], [5 * i for i in range(1, 8)] + [39])


@needs_wandb
def test_no_credentials_online_is_one_note_and_training_goes_on(acts_store, wandb_dir, tmp_path):
    # Online with no API key anywhere: wandb.init fails before any connection (and the base
    # URL is a closed local port should it try). A fresh process: wandb reads its settings once.
    env = {**_env(wandb_dir), "WANDB_MODE": "online", "HOME": str(tmp_path), "NETRC": str(tmp_path / "none")}
    env.pop("WANDB_API_KEY")
    out = str(tmp_path / "j.zarr")
    result = subprocess.run([sys.executable, "-m", "jsaectl", "train", acts_store, *SMALL, "--tokens", "5k", "-o", out,
                             "--wandb", "p"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0 and result.stdout == out + "\n", result.stderr
    assert "API key" in _one_failure_note(result.stderr)
    attrs = zarr.open_group(out, mode="r").attrs["jsaectl"]
    assert attrs["complete"] and attrs["wandb"] is None  # no run to point to


def test_bad_wandb_options_are_refused(acts_store):
    for args, message in ((["--wandb", "a/b"], "is not a W&B project name"),
                          (["--wandb", "p", "--wandb-tags", "x" * 65], "longer than W&B's 64 characters")):
        result = runner.invoke(app, ["train", acts_store, *args])
        assert result.exit_code == 2 and message in result.stderr, result.output
