"""The examples the README shows run as written: the library API, the German-latent showcase and
the paper's tables, on the bundled model at small sizes (real subprocesses, as a user runs them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args: str, cwd: Path) -> str:
    done = subprocess.run([*args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("api")
    return out, run(sys.executable, str(EXAMPLES / "library_api.py"), str(out), "24000", cwd=out)


def test_library_api_runs_every_stage(api_run):
    out, printed = api_run
    assert "trained:" in printed and "entries per token" in printed and "Gini of |J|" in printed
    assert "J of the first analysed token: (32, 32)" in printed
    assert printed.count(" -> ") == 5  # the five strongest connections, labelled
    for store in ("acts.zarr", "jsae.zarr", "jacobian.zarr"):
        assert (out / store / "zarr.json").exists()


def test_german_latent_finds_a_latent_its_inputs_and_where_it_fires(api_run):
    out, _ = api_run
    printed = run(sys.executable, str(EXAMPLES / "german_latent.py"), str(out / "jacobian.zarr"), "--tokens", "5k", cwd=out)
    assert "output latents that fire on German far more than on English" in printed
    assert len([line for line in printed.splitlines() if line.startswith("  output latent ")]) == 5
    assert "input latents that compute output latent" in printed and "the connections of" in printed
    marked = [line for line in printed.splitlines() if " tokens: " in line]
    assert len(marked) == 2  # the German and the English sentence, token by token


def test_paper_tables_render_compare_json(api_run):
    out, _ = api_run
    compare = run(sys.executable, "-m", "jsaectl", "compare", str(out / "jsae.zarr"), "--tokens", "2k", "--eval-tokens", "2k", "--json", cwd=out)
    runs = json.loads(compare)
    (out / "sweep.json").write_text(json.dumps(runs))
    table = run(sys.executable, str(EXAMPLES / "paper_tables.py"), "sweep", str(out / "sweep.json"), cwd=out)
    lines = table.splitlines()
    assert lines[0].startswith("| | λ = ") and "Gini coefficient" in table and "CE-loss score" in table
    cells = lambda line: line.replace("\\|", "").count("|")  # noqa: E731 (escaped pipes are text)
    assert all(cells(line) == cells(lines[0]) == 3 for line in lines if line.startswith("|"))
