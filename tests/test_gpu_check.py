"""The prepared GPU check runs end to end (on the CPU, tiny shapes), and training's data-wait
figure sees a slow reader."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from jsaectl.cli import app

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert not [name for name, r in results.items() if "error" in r]
    c = results["correctness"]
    assert c["train_autocast_True"]["finite"] and c["train_autocast_False"]["falls"]
    assert max(c["jacobian_vs_jacrev_max_abs"].values()) < 1e-10 and c["resume_bit_exact"]
    for section, key in (("train", "a_vs_d"), ("harvest", "ratio"), ("jacobian", "cpu_side_share")):
        assert all(key in row for row in results[section].values() if isinstance(row, dict)), section
    assert 0 <= results["data_wait"]["jsae"]["data_wait_share"] <= 1
    assert "correctness" in proc.stdout and "data_wait" in proc.stdout  # the table


def test_a_slow_reader_shows_up_as_data_wait(acts_store, tmp_path, monkeypatch):
    from jsaectl import stream

    original = stream.BatchStream.__next__

    def slow(self):  # a store on a slow disk
        time.sleep(0.05)
        return original(self)

    monkeypatch.setattr(stream.BatchStream, "__next__", slow)
    result = CliRunner().invoke(app, ["train", acts_store, "--expansion", "4", "--k", "4", "--batch-size", "256",
                                      "--tokens", "10k", "-o", str(tmp_path / "slow.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data_wait"] > 0.4
    assert "waited for data" in result.stderr and "--reader-threads" in result.stderr
    assert "data wait" in result.stderr  # the final table's row
    import zarr

    recorded = zarr.open_group(str(tmp_path / "slow.zarr"), mode="r")["history/data_wait"][...]
    assert (recorded[1:] > 0.4).all()
