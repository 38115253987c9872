"""harvest from the command line: resume after SIGKILL, shards, bad input, pipes, --config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from jsaectl.cli import app
from conftest import pipeline

runner = CliRunner()


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jsaectl", "harvest", *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory, corpus) -> Path:
    """~250k tokens: the test corpus repeated, so a harvest takes a few seconds."""
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    text = Path(corpus).read_text()
    path.write_text(text * 10)
    return path


def _arrays(url: str) -> dict[str, np.ndarray]:
    g = zarr.open_group(url, mode="r")
    return {name: g[name][...] for name in ("x", "tokens", "position")}


def _assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for name in a:
        assert a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


def test_resume_after_sigkill_is_byte_identical(gpt2_dir, big_corpus, tmp_path):
    args = [str(gpt2_dir), "--layer", "1", "--dataset", str(big_corpus), "--tokens", "200k", "-T", "32", "--batch-size", "4"]
    reference = _run(args + ["--out", str(tmp_path / "ref.zarr")])
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "jsaectl", "harvest", *args, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    flags = out / "progress" / "chunk_contexts" / "c"
    deadline = time.time() + 120
    while time.time() < deadline and not (flags.exists() and len(os.listdir(flags)) >= 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    meta = zarr.open_group(str(out), mode="r").attrs["jsaectl"]
    assert meta["complete"] is False, "the run finished before it could be killed; the test proves nothing"

    resumed = _run(args + ["--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert zarr.open_group(str(out), mode="r").attrs["jsaectl"]["complete"] is True
    _assert_identical(_arrays(str(tmp_path / "ref.zarr")), _arrays(str(out)))


def test_shards_fill_one_store(gpt2_dir, big_corpus, tmp_path):
    args = [str(gpt2_dir), "--layer", "1", "--dataset", str(big_corpus), "--tokens", "100k", "-T", "32"]
    single = _run(args + ["--out", str(tmp_path / "single.zarr")])
    assert single.returncode == 0, single.stderr
    out = str(tmp_path / "sharded.zarr")
    procs = [subprocess.Popen([sys.executable, "-m", "jsaectl", "harvest", *args, "--out", out, "--shard", f"{i}/3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outputs]
    assert all(o[0].strip() == out for o in outputs)
    assert zarr.open_group(out, mode="r").attrs["jsaectl"]["complete"] is True
    _assert_identical(_arrays(str(tmp_path / "single.zarr")), _arrays(out))


def test_text_shorter_than_tokens_gives_a_trimmed_complete_store(gpt2_dir, corpus, tmp_path):
    result = runner.invoke(app, ["harvest", str(gpt2_dir), "--layer", "0", "--dataset", str(corpus), "--tokens", "10M",
                                 "-T", "64", "--out", str(tmp_path / "a.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    g = zarr.open_group(summary["store"], mode="r")
    assert summary["complete"] and summary["n_tokens"] == g["x"].shape[0] == g.attrs["jsaectl"]["n_tokens"]
    assert 0 < summary["n_tokens"] < 10_000_000 and summary["n_tokens"] % 64 == 0
    assert summary["d_model"] == g["x"].shape[1] == 32 and summary["tokens_per_second"] > 0


def test_a_kill_between_trimming_and_completing_resumes(gpt2_dir, corpus, tmp_path):
    """The last moment a SIGKILL can strike: the arrays are trimmed to the text's length but the
    store is not yet marked complete. Running again must finish it, not trip over the sizes."""
    args = [str(gpt2_dir), "--layer", "0", "--dataset", str(corpus), "--tokens", "10M", "-T", "64"]
    reference = _run(args + ["--out", str(tmp_path / "ref.zarr")])
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "cut.zarr"
    assert _run(args + ["--out", str(out)]).returncode == 0
    g = zarr.open_group(str(out), mode="r+")
    g.attrs["jsaectl"] = {**g.attrs["jsaectl"], "complete": False}
    resumed = _run(args + ["--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == str(out) and zarr.open_group(str(out), mode="r").attrs["jsaectl"]["complete"] is True
    _assert_identical(_arrays(str(tmp_path / "ref.zarr")), _arrays(str(out)))


def test_text_on_a_terminal_stdin_fails_before_the_model_loads(gpt2_dir, tmp_path):
    import pty

    parent, child = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "jsaectl", "harvest", str(gpt2_dir), "--layer", "0", "--dataset", "-",
                               "--out", str(tmp_path / "t.zarr")], stdin=child, capture_output=True, text=True, timeout=60)
    finally:
        os.close(parent), os.close(child)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "stdin is a terminal" in proc.stderr and "loading" not in proc.stderr
    assert not (tmp_path / "t.zarr").exists()


def _bad(args: list[str], code: int = 1, **kw) -> str:
    result = runner.invoke(app, ["harvest", *args], **kw)
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("jsaectl: error: "), result.stderr
    assert "hint:" in lines[-1] and "Traceback" not in result.output
    return lines[-1]


def test_bad_input_gets_one_line_and_writes_nothing(gpt2_dir, corpus, tmp_path, monkeypatch):
    out = tmp_path / "never.zarr"
    base = ["--out", str(out), "-T", "32"]
    assert "no model directory" in _bad(["./no/such/model", "--layer", "0", "--dataset", str(corpus), *base])
    assert "no such file" in _bad([str(gpt2_dir), "--layer", "0", "--dataset", "missing.jsonl", *base])
    assert "out of range" in _bad([str(gpt2_dir), "--layer", "7", "--dataset", str(corpus), *base])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "holds no text" in _bad([str(gpt2_dir), "--layer", "0", "--dataset", str(empty), *base])
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "three short words"}\n')
    assert "not one context" in _bad([str(gpt2_dir), "--layer", "0", "--dataset", str(short), *base])
    assert "not a writable directory" in _bad([str(gpt2_dir), "--layer", "0", "--dataset", str(corpus), "--out",
                                               str(empty / "acts.zarr")])
    assert "--tokens" in _bad([str(gpt2_dir), "--layer", "0", "--tokens", "lots", *base], code=2)
    assert "--layer is required" in _bad([str(gpt2_dir), "--dataset", str(corpus), *base], code=2)
    assert "no such option" in _bad(["--lyer", "0"], code=2).lower()
    # A Hub id with no network: fails in seconds with a hint, offline flag or not.
    started = time.time()
    assert "not in the local Hugging Face cache" in _bad(["gpt2", "--layer", "0", "--dataset", str(corpus), *base])
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert "unreachable" in _bad(["gpt2", "--layer", "0", "--dataset", str(corpus), *base])
    assert time.time() - started < 30
    assert not out.exists()


def test_existing_store_with_another_config_is_refused_and_untouched(gpt2_dir, corpus, tmp_path):
    out = str(tmp_path / "a.zarr")
    first = runner.invoke(app, ["harvest", str(gpt2_dir), "-l", "0", "-d", str(corpus), "-n", "2k", "-T", "32", "-o", out])
    assert first.exit_code == 0, first.output
    before = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*")}
    assert "different config" in _bad([str(gpt2_dir), "-l", "1", "-d", str(corpus), "-n", "2k", "-T", "32", "-o", out])
    assert {p: p.stat().st_mtime_ns for p in Path(out).rglob("*")} == before
    # A directory that is not a store is never written into, even with --overwrite.
    assert "not a jsaectl store" in _bad([str(gpt2_dir), "-l", "0", "-d", str(corpus), "-o", str(tmp_path), "--overwrite"])
    again = runner.invoke(app, ["harvest", str(gpt2_dir), "-l", "1", "-d", str(corpus), "-n", "2k", "-T", "32", "-o", out, "--overwrite"])
    assert again.exit_code == 0 and zarr.open_group(out).attrs["jsaectl"]["config"]["layer"] == 1


def test_pipe_yields_exactly_one_line(gpt2_dir, corpus, tmp_path):
    proc = pipeline(f"harvest {gpt2_dir} --layer 1 --dataset {corpus} --tokens 3k -T 32 --out {tmp_path / 'p.zarr'}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(tmp_path / "p.zarr")]


def test_config_file_supplies_options_and_flags_win(gpt2_dir, corpus, tmp_path):
    config = tmp_path / "harvest.yaml"
    config.write_text(f"model: {gpt2_dir}\nlayer: 2\ndataset: {corpus}\ntokens: 2k\ncontext-size: 32\n")
    result = runner.invoke(app, ["harvest", "--config", str(config), "--layer", "1", "-o", str(tmp_path / "c.zarr")])
    assert result.exit_code == 0, result.output
    cfg = zarr.open_group(result.stdout.strip()).attrs["jsaectl"]["config"]
    assert (cfg["layer"], cfg["tokens"], cfg["context_size"]) == (1, 2000, 32)
    config.write_text(f"model: {gpt2_dir}\nlayer: 1\ndataset: {corpus}\ntokens: 2k\ncontext_size: 32\njson: true\n")
    result = runner.invoke(app, ["harvest", "--config", str(config), "-o", str(tmp_path / "c.zarr")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["store"] == str(tmp_path / "c.zarr")  # `json` is the --json option
    config.write_text("layr: 2\n")
    assert "unknown key" in _bad(["--config", str(config)], code=2)


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("jsaectl ")
    result = runner.invoke(app, ["harvest", "--help"])
    assert result.exit_code == 0 and "--tokens" in result.stdout
