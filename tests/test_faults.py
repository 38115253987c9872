"""Fault injection: damaged, non-finite, aliased or contended stores, signals and closed pipes.

Every case asserts the exit code, exactly one `jsaectl:` line on stderr (the last), nothing
on stdout, and that no store the command read has changed (a digest of every file).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from jsaectl import store as st
from conftest import digest
from jsaectl.cli import app
from jsaectl.jacobian import JacobianConfig, jacobian

runner = CliRunner()
JSAECTL = [sys.executable, "-m", "jsaectl"]
TRAIN = ["--expansion", "4", "--k", "4", "--batch-size", "256"]


def one_error(stderr: str) -> str:
    """The single `jsaectl:` line of stderr, which must be its last non-empty line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("jsaectl:")]
    assert len(ours) == 1 and lines[-1] == ours[0], stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return ours[0]


def fails(args: list[str], code: int = 1, reads: tuple[str, ...] = (), **kw) -> str:
    """Run a command in-process; it must fail with ``code``, one line, nothing on stdout, and
    leave every store in ``reads`` byte for byte as it was."""
    before = {r: digest(r) for r in reads}
    result = runner.invoke(app, args, **kw)
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stdout == ""
    line = one_error(result.stderr)
    assert code == 130 or "hint:" in line, line
    for r in reads:
        assert digest(r) == before[r], f"{r} changed"
    return line


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*JSAECTL, *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def stores(acts_store, jsae_store, tmp_path_factory) -> dict[str, str]:
    """Private copies of the session's stores (tests damage copies of these), and a jacobian store."""
    root = tmp_path_factory.mktemp("faults")
    acts = shutil.copytree(acts_store, root / "acts.zarr")
    jsae = shutil.copytree(jsae_store, root / "jsae.zarr")
    g = zarr.open_group(str(jsae), mode="r+")
    g.attrs["jsaectl"] = {**g.attrs["jsaectl"], "acts_store": str(acts)}
    jac = jacobian(JacobianConfig(jsae=str(jsae), tokens=3000, out=str(root / "jac.zarr"))).store
    return {"acts": str(acts), "jsae": str(jsae), "jac": jac}


def copy(stores: dict[str, str], which: str, tmp_path: Path) -> str:
    return str(shutil.copytree(stores[which], tmp_path / Path(stores[which]).name))


def chunk_file(store: str, array: str) -> Path:
    files = sorted(p for p in (Path(store) / array / "c").rglob("*") if p.is_file())
    return files[len(files) // 2]  # a chunk in the middle, not only the first


# ---------------------------------------------------------------------------------------------
# Damaged chunks: flipped, cut short, deleted


READERS = {  # damaged store -> (array, a command that reads it)
    "acts": ("x", lambda s, t: ["train", s["acts"], *TRAIN, "--tokens", "5k", "-o", str(t / "o.zarr")]),
    "acts-mlp": ("mlp/W_in", lambda s, t: ["jacobian", s["jsae"], "--acts", s["acts"], "--tokens", "1k", "-o", str(t / "o.zarr")]),
    "jsae": ("sae_out/W_dec", lambda s, t: ["jacobian", s["jsae"], "--acts", s["acts"], "--tokens", "1k", "-o", str(t / "o.zarr")]),
    "jsae-enc": ("sae_in/W_enc", lambda s, t: ["export", s["jsae"], "-f", "saelens", "-o", str(t / "ex")]),
    "jac": ("connections/strength", lambda s, t: ["export", s["jac"], "-f", "connections-csv", "-o", str(t / "ex")]),
}


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x5A
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("case", sorted(READERS))
def test_a_damaged_chunk_is_named_never_read_as_data(stores, tmp_path, case, how):
    kind = case.split("-")[0]
    array, command = READERS[case]
    damaged = dict(stores)
    damaged[kind] = copy(stores, kind, tmp_path)
    if kind == "jsae":  # the copy's own activations stay the intact ones
        damaged["acts"] = stores["acts"]
    _damage(chunk_file(damaged[kind], array), how)
    line = fails(command(damaged, tmp_path), reads=(damaged[kind],))
    assert array in line and ("missing" in line if how == "delete" else "checksum" in line), line
    assert "verify" in line
    result = runner.invoke(app, ["verify", damaged[kind], "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)[0]
    assert not report["ok"] and [p["array"] for p in report["problems"]] == [array]


def test_unreadable_array_metadata_is_named(stores, tmp_path):
    jsae = copy(stores, "jsae", tmp_path)
    (Path(jsae) / "sae_in" / "W_enc" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "arr')
    line = fails(["export", jsae, "-f", "sparsify", "-o", str(tmp_path / "ex")], reads=(jsae,))
    assert "sae_in/W_enc" in line and "unreadable" in line


def test_a_deleted_array_is_named(stores, tmp_path):
    jac = copy(stores, "jac", tmp_path)
    shutil.rmtree(Path(jac) / "connections" / "mean")
    line = fails(["export", jac, "-f", "connections-jsonl", "-o", str(tmp_path / "ex")], reads=(jac,))
    assert "no array connections/mean" in line


def test_verify_passes_sound_stores(stores):
    result = runner.invoke(app, ["verify", stores["acts"], stores["jsae"], stores["jac"], "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    assert [r["kind"] for r in reports] == ["activations", "jsae", "jacobian"] and all(r["ok"] for r in reports)
    assert all(r["chunks"] > 0 for r in reports)


# ---------------------------------------------------------------------------------------------
# Non-finite values


def test_nan_in_x_stops_training_and_repair_restores_the_store(stores, tmp_path):
    acts = copy(stores, "acts", tmp_path)
    clean = digest(acts)
    g = zarr.open_group(store=st.checked_store(acts, read_only=False), mode="r+")  # checksums stay valid
    rows = g["x"].chunks[0]
    g["x"][rows + 5, 3] = np.nan
    g["x"][3 * rows + 1, 0] = np.inf
    line = fails(["train", acts, *TRAIN, "-o", str(tmp_path / "j.zarr")], reads=(acts,))  # one pass reads every row
    assert "non-finite" in line
    result = runner.invoke(app, ["verify", acts, "--json"])
    assert result.exit_code == 1
    assert sorted(tuple(p["chunk"]) for p in json.loads(result.stdout)[0]["problems"]) == [(1, 0), (3, 0)]
    # --repair re-harvests exactly those chunks, through harvest's own resume: byte-identical.
    repaired = runner.invoke(app, ["verify", acts, "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert "2 chunk(s)" in repaired.stderr
    assert digest(acts) == clean


def test_nonfinite_weights_are_refused_by_every_reader(stores, tmp_path):
    jsae = copy(stores, "jsae", tmp_path)
    g = zarr.open_group(store=st.checked_store(jsae, read_only=False), mode="r+")
    g["sae_in/W_enc"][0, 0] = np.inf
    for args in (["jacobian", jsae, "--acts", stores["acts"], "-o", str(tmp_path / "j.zarr")],
                 ["maxact", jsae, "--acts", stores["acts"], "--latent", "1"],
                 ["export", jsae, "-f", "saelens", "-o", str(tmp_path / "e")],
                 ["compare", jsae, "--acts", stores["acts"], "--eval-tokens", "0"]):
        line = fails(args, reads=(jsae, stores["acts"]))
        assert "sae_in/W_enc" in line and "non-finite" in line
    assert not (tmp_path / "j.zarr").exists() and not (tmp_path / "e").exists()


def test_nonfinite_statistics_are_refused(stores, tmp_path):
    jac = copy(stores, "jac", tmp_path)
    g = zarr.open_group(store=st.checked_store(jac, read_only=False), mode="r+")
    g["connections/strength"][0] = np.nan
    assert "non-finite" in fails(["export", jac, "-f", "connections-csv", "-o", str(tmp_path / "e")], reads=(jac,))


@pytest.mark.parametrize("args", [
    ["train", "{acts}", "--lr", "nan"], ["train", "{acts}", "--lam", "inf"], ["train", "{acts}", "--auxk", "nan"],
    ["train", "{acts}", "--lam-warmup", "nan"], ["jacobian", "{jsae}", "--thresholds", "0.01,nan"],
    ["compare", "{jsae}", "--thresholds", "inf"], ["train", "{acts}", "--data-lanes", "0"],
])
def test_nonfinite_and_impossible_options_are_refused_before_any_store(stores, tmp_path, args):
    args = [a.format(**stores) for a in args]
    out = tmp_path / "never.zarr"
    fails(args + (["-o", str(out)] if args[0] != "compare" else []), code=2, reads=(stores["acts"], stores["jsae"]))
    assert not out.exists()


def test_training_that_diverges_fails_and_keeps_its_last_checkpoint(stores, tmp_path):
    out = tmp_path / "div.zarr"
    line = fails(["train", stores["acts"], *TRAIN, "--lr", "1e30", "--lr-warmup", "0", "--tokens", "20k",
                  "--checkpoint-every", "1", "-o", str(out)], reads=(stores["acts"],))
    assert "training diverged" in line
    meta = zarr.open_group(str(out), mode="r").attrs["jsaectl"]
    assert meta["complete"] is False and meta["checkpoint_step"] >= 1
    g = zarr.open_group(str(out), mode="r")
    slot = g[f"checkpoint/slot_{g['checkpoint'].attrs['slot']}"]
    assert np.isfinite(slot["model/sae_in.W_enc"][...]).all()


def _overflowing_model(gpt2_dir: Path, tmp_path: Path) -> Path:
    """The test GPT-2 with layer 1's pre-MLP norm scaled so that x overflows float16."""
    from safetensors.torch import load_file, save_file

    model = Path(shutil.copytree(gpt2_dir, tmp_path / "loud"))
    tensors = load_file(model / "model.safetensors")
    key = next(k for k in tensors if k.endswith("h.1.ln_2.weight"))
    tensors[key] = tensors[key] * 1e6
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    return model


def test_harvest_refuses_nonfinite_activations_unless_allowed(gpt2_dir, corpus, tmp_path):
    model = _overflowing_model(gpt2_dir, tmp_path)
    base = ["harvest", str(model), "-l", "1", "-d", str(corpus), "-n", "2k", "-T", "32"]
    line = fails([*base, "-o", str(tmp_path / "a.zarr")])
    assert "float16" in line and "rows 0–" in line and "--allow-nonfinite" in line
    result = runner.invoke(app, [*base, "--allow-nonfinite", "-o", str(tmp_path / "b.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    g = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert g.attrs["jsaectl"]["nonfinite_zeroed"] > 0 and np.isfinite(g["x"][...]).all()


# ---------------------------------------------------------------------------------------------
# Outputs never alias inputs


@pytest.mark.parametrize("args", [
    ["train", "{acts}", "-o", "{acts}", "--overwrite"],
    ["train", "{acts}", "-o", "{acts}/sub.zarr"],
    ["jacobian", "{jsae}", "-o", "{jsae}", "--overwrite"],
    ["jacobian", "{jsae}", "--acts", "{acts}", "-o", "{acts}", "--overwrite"],
    ["export", "{jac}", "-f", "saelens", "-o", "{jsae}", "--overwrite"],
    ["export", "{jsae}", "-f", "saelens", "-o", "{jsae}/exported"],
    ["export", "{jsae}", "-f", "sparsify", "-o", "{root}", "--overwrite"],
    ["harvest", "{gpt2}", "-l", "1", "-d", "{corpus}", "-n", "1k", "-T", "32", "-o", "{jac}/acts.zarr"],
])
def test_an_output_never_overlaps_an_input(stores, gpt2_dir, corpus, args):
    names = {**stores, "gpt2": str(gpt2_dir), "corpus": str(corpus), "root": str(Path(stores["acts"]).parent)}
    args = [a.format(**names) for a in args]
    line = fails(args, reads=(stores["acts"], stores["jsae"], stores["jac"]))
    assert any(w in line for w in (" is ", "inside", "contains")), line


# ---------------------------------------------------------------------------------------------
# One writer per store


def test_two_writers_on_one_store(stores, tmp_path):
    out = str(tmp_path / "race.zarr")
    args = ["train", stores["acts"], *TRAIN, "--tokens", "100k", "--overwrite", "-o", out]
    first = subprocess.Popen([*JSAECTL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = Path(out) / ".jsaectl.lock"
    deadline = time.time() + 60
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.05)
    second = run(args)
    assert second.returncode == 1 and second.stdout == ""
    assert f"being written by pid {first.pid}" in one_error(second.stderr)
    # Without --overwrite too: the refusal says it is being written, not "interrupted".
    third = run(args[:-3] + ["-o", out])
    assert f"being written by pid {first.pid}" in one_error(third.stderr)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    g = zarr.open_group(out, mode="r")
    steps = g["history/step"][...]
    assert len(steps) == len(set(steps.tolist())) and g.attrs["jsaectl"]["complete"]
    assert not lock.exists()


def test_a_stale_lock_is_taken_over(stores, tmp_path):
    out = tmp_path / "stale.zarr"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is now free: the lock's owner is gone
    (out / ".jsaectl.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "since": "then"}))
    result = runner.invoke(app, ["train", stores["acts"], *TRAIN, "--tokens", "3k", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / ".jsaectl.lock").exists()


# ---------------------------------------------------------------------------------------------
# Signals and pipes


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_sigterm_while_jacobian_spills(stores, tmp_path):
    out = tmp_path / "jac.zarr"
    args = ["jacobian", stores["jsae"], "--acts", stores["acts"], "--tokens", "6k", "--max-pairs", "300",
            "--batch-size", "256", "-o", str(out)]
    proc = subprocess.Popen([*JSAECTL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spill = out / ".jsaectl-spill"
    deadline = time.time() + 120
    while not (spill.exists() and any(spill.iterdir())):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and stdout == ""
    assert one_error(stderr) == "jsaectl: interrupted (SIGTERM) — run the same command again (the analysis starts over)"
    assert not spill.exists() and not (out / ".jsaectl.lock").exists()
    assert zarr.open_group(str(out), mode="r").attrs["jsaectl"]["complete"] is False
    # A stale spill folder from a SIGKILLed run is removed by the re-run, which completes.
    (spill / "old").mkdir(parents=True)
    again = run(args)
    assert again.returncode == 0, again.stderr
    assert not spill.exists()
    clean = run(args[:-1] + [str(tmp_path / "clean.zarr")])
    assert clean.returncode == 0
    a, b = (zarr.open_group(p, mode="r")["connections"] for p in (str(out), str(tmp_path / "clean.zarr")))
    assert all(np.array_equal(a[c][...], b[c][...]) for c in ("input", "output", "strength", "count"))


def test_sigterm_during_training_then_resume_is_exact(stores, tmp_path):
    args = ["train", stores["acts"], *TRAIN, "--tokens", "40k", "--checkpoint-every", "25"]
    ref = run(args + ["-o", str(tmp_path / "ref.zarr")])
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "cut.zarr"
    proc = subprocess.Popen([*JSAECTL, *args, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoint" / "slot_1", proc)  # a second checkpoint is being (or was) written
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and stdout == "", stderr
    assert "--resume" in one_error(stderr)
    resumed = run(["train", "--resume", "-o", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    for name in ("sae_in/W_enc", "sae_out/W_dec", "sae_out/b_enc"):
        a, b = (zarr.open_group(str(p), mode="r")[name][...] for p in (tmp_path / "ref.zarr", out))
        assert np.array_equal(a, b), name


def test_a_closed_stdout_pipe_ends_quietly(stores):
    cmd = f"{sys.executable} -m jsaectl maxact {stores['jsae']} --top-latents 20 --examples 20 | head -1; exit ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 141 and len(proc.stdout.splitlines()) == 1
    assert "error" not in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# What used to be "internal error"


def test_bad_environment_gets_one_line(stores, gpt2_dir, corpus, tmp_path):
    base = ["harvest", str(gpt2_dir), "-l", "1", "-n", "2k", "-T", "32", "-o", str(tmp_path / "h.zarr")]
    binary = tmp_path / "config.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert "is not UTF-8 text" in fails([*base, "-d", str(corpus), "--config", str(binary)], code=2)
    cut = tmp_path / "cut.jsonl.gz"
    import gzip

    packed = gzip.compress(Path(corpus).read_bytes())
    cut.write_bytes(packed[: len(packed) // 2])
    assert "damaged or cut short" in fails([*base, "-d", str(cut), "--tokens", "1M"])  # read to its (missing) end
    garbage = tmp_path / "blob.txt"
    garbage.write_bytes(os.urandom(4096))
    assert "does not look like text" in fails([*base, "-d", str(garbage)])
    assert "unknown URL protocol" in fails(["train", "nope://bucket/acts.zarr"])
    assert "backend is not installed" in fails(["train", "s3://bucket/acts.zarr"])
    assert "more than a store can hold" in fails([*base, "-d", str(corpus), "--tokens", "1e15"], code=2)
    assert not (tmp_path / "h.zarr").exists()


def test_binary_stdin_is_not_text(gpt2_dir, tmp_path):
    proc = subprocess.run([*JSAECTL, "harvest", str(gpt2_dir), "-l", "1", "-n", "2k", "-T", "32", "-d", "-",
                           "-o", str(tmp_path / "h.zarr")], input=os.urandom(8192), capture_output=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == b""
    assert "stdin is not UTF-8 text" in one_error(proc.stderr.decode())


def test_a_pickled_checkpoint_is_refused_not_run(gpt2_dir, corpus, tmp_path):
    import torch

    model = Path(shutil.copytree(gpt2_dir, tmp_path / "pickled"))
    (model / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"x": torch.zeros(2), "payload": _Payload(str(marker))}, model / "pytorch_model.bin")
    line = fails(["harvest", str(model), "-l", "1", "-d", str(corpus), "-n", "2k", "-T", "32", "-o", str(tmp_path / "h.zarr")])
    assert "pickled checkpoint" in line and not marker.exists()


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_full_disk_is_one_line_and_resumes(gpt2_dir, corpus, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text(Path(corpus).read_text() * 4)
    args = ["harvest", str(gpt2_dir), "-l", "1", "-d", str(big), "-n", "100k", "-T", "32", "--dtype", "float32",
            "--compression", "none", "-o", str(tmp_path / "full.zarr")]

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = subprocess.run([*JSAECTL, *args], capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "the disk is full" in one_error(proc.stderr)
    assert zarr.open_group(str(tmp_path / "full.zarr"), mode="r").attrs["jsaectl"]["complete"] is False
    again = run(args)  # with room again, the same command completes the store
    assert again.returncode == 0, again.stderr
    assert zarr.open_group(str(tmp_path / "full.zarr"), mode="r").attrs["jsaectl"]["complete"] is True
