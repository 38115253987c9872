"""One standard for every input: values held to their declared types wherever they come from
(command line, --config, a JSON line on stdin), absurd counts refused before any work, outputs
that would touch a store the command reads or follows refused, and one line for every failure.

Every case asserts the exit code, exactly one `jsaectl:` line on stderr, an empty stdout,
nothing created and every input store unchanged (a digest of each of its files).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zarr
from typer.testing import CliRunner

from conftest import digest, private_stores
from jsaectl.cli import app
from jsaectl.jacobian import JacobianConfig, jacobian

runner = CliRunner()
SMALL = ["--expansion", "4", "--k", "4", "--batch-size", "256"]


def refused(args: list[str], code: int, reads: tuple[str, ...] = (), creates: tuple[Path, ...] = (), **kw) -> str:
    before = {r: digest(r) for r in reads}
    result = runner.invoke(app, args, **kw)
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jsaectl: error:") and "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in lines[0]
    for r in reads:
        assert digest(r) == before[r], f"{r} changed"
    for path in creates:
        assert not path.exists(), f"{path} was created"
    return lines[0]


@pytest.fixture(scope="module")
def stores(acts_store, jsae_store, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("inputs")
    acts, jsae = private_stores(root, acts_store, jsae_store)
    jac = jacobian(JacobianConfig(jsae=jsae, tokens=2000, out=str(root / "jac.zarr"))).store
    return {"acts": acts, "jsae": jsae, "jac": jac, "root": str(root)}


# ---------------------------------------------------------------------------------------------
# 1. Every value by its declared type


@pytest.mark.parametrize("yaml_text, says", [
    ("k: true\n", "--config"),                      # a boolean where a number goes
    ("k: [4, 8]\n", "must be an integer"),          # a list
    ("k: {a: 1}\n", "must be an integer"),          # a mapping
    ("out: [a, b]\n", "must be text"),              # a list where a path goes
    ("out: 5\n", "must be text"),                   # a number where a path goes
    ("lam: null\n", "null is not a value"),         # null
    ("lr: 1.0e+400\n", "finite"),                   # inf
    ("lr: '1e400'\n", "must be a number"),          # text where a number goes
    ("tokens: 1e400\n", "beyond any count"),        # a count beyond any
    ("tokens: true\n", "must be a count"),
    ("- k: 4\n", "must hold a mapping"),            # YAML that is not a mapping
    ("k: 4\nk: 8\n", "given twice"),                # duplicate keys
    ("a: &x [1, 2]\nk: *x\n", "anchors and aliases"),
    ("nonsense: 1\n", "unknown key"),
])
def test_config_values_are_held_to_their_types(stores, tmp_path, yaml_text, says):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    out = tmp_path / "j.zarr"
    line = refused(["train", stores["acts"], "--config", str(cfg), "-o", str(out)], 2, reads=(stores["acts"],), creates=(out,))
    assert says in line, line
    if "key" in says:
        return
    assert str(cfg) in line  # the file is named


def test_a_config_file_that_is_not_utf8_is_one_line(stores, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"k: \xff\xfe\n")
    assert "not UTF-8" in refused(["train", stores["acts"], "--config", str(cfg)], 2)


@pytest.mark.parametrize("command", ["report", "import", "verify"])
def test_every_command_takes_a_config_file(stores, tmp_path, command):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("json: 3\n")  # known key, wrong type: the command read the file
    assert "json must be true or false" in refused([command, "--config", str(cfg)], 2)


@pytest.mark.parametrize("line, says", [
    ('{"store": 5}', "not a store URL"), ('{"store": ["a"]}', "not a store URL"), ('{"store": {"a": 1}}', "not a store URL"),
    ('{"nothing": 1}', 'without a "store" key'), ("[1, 2]", "no store at"), ('{"store": ', "starts like JSON"),
])
def test_a_json_line_on_stdin_whose_store_is_not_text_is_refused(stores, tmp_path, line, says):
    out = tmp_path / "j.zarr"
    assert says in refused(["train", *SMALL, "-o", str(out)], 1, creates=(out,), input=line + "\n")


def test_a_huge_stdin_line_is_named_not_echoed(tmp_path):
    result = runner.invoke(app, ["train"], input="x" * 10_000_000 + "\n")
    assert result.exit_code == 1 and len(result.stderr) < 500 and "longer than 4,096 characters" in result.stderr


# ---------------------------------------------------------------------------------------------
# 2. Absurd but well-formed values, before anything is created


@pytest.mark.parametrize("args, says", [
    (["--tokens", "1e15"], "passes over the store"),
    (["--batch-size", "10000000"], "more than the"),
    (["--expansion", "0"], "must be positive"),
    (["--k", "200", "--expansion", "4"], "more than the 128 latents"),
    (["--data-lanes", "3", "--batch-size", "256"], "split evenly"),
])
def test_absurd_training_counts_are_refused_with_the_figure(stores, tmp_path, args, says):
    out = tmp_path / "j.zarr"
    line = refused(["train", stores["acts"], "--expansion", "4", "--k", "4", *args, "-o", str(out)], 2,
                   reads=(stores["acts"],), creates=(out,))
    assert says in line, line


@pytest.mark.parametrize("args, says", [
    (["maxact", "{jsae}", "--latent", "1", "--examples", "1000000000"], "--examples 1,000,000,000 is more than"),
    (["jacobian", "{jsae}", "--label-examples", "1000000000"], "is more than"),
    (["harvest", "--context-size", "1"], "at least 2"),
    (["report", "{jac}", "--out", "{root}/r", "--connections", "1e9"], "--connections"),
])
def test_absurd_analysis_counts_are_refused(stores, args, says):
    args = [a.format(**stores) for a in args]
    assert says in refused(args, 2, reads=(stores["jsae"], stores["acts"]))


# ---------------------------------------------------------------------------------------------
# 3. Lost data: no output may be, hold or sit inside a store read or followed


def test_report_over_the_folder_that_holds_its_stores_deletes_nothing(stores, tmp_path):
    folder = tmp_path / "old-report"
    for name in ("acts", "jsae"):  # an earlier report folder that also holds the stores the jacobian store follows
        shutil.copytree(stores[name], folder / f"{name}.zarr")
    (folder / ".jsaectl-report").write_text("")
    jsae, acts = str(folder / "jsae.zarr"), str(folder / "acts.zarr")
    g = zarr.open_group(jsae, mode="r+")
    g.attrs["jsaectl"] = {**g.attrs["jsaectl"], "acts_store": acts}
    jac = jacobian(JacobianConfig(jsae=jsae, tokens=1000, out=str(tmp_path / "jac.zarr"))).store
    line = refused(["report", jac, "--out", str(folder), "--overwrite"], 1, reads=(jsae, acts, jac))
    assert "contains" in line and "which this command reads" in line


@pytest.mark.parametrize("command", [
    ["export", "{jac}", "-f", "saelens", "-o", "{root}"],                    # the folder holding every store
    ["export", "{jsae}", "-f", "sparsify", "-o", "{acts}/sub"],               # inside the followed acts store
    ["compare", "{jac}", "--eval-tokens", "0", "--plot", "{acts}/zarr.json"],  # a file inside a followed store
    ["trace", "{jac}", "--text", "hello", "--html", "{jsae}/x.html"],
])
def test_outputs_never_touch_a_store_read_or_followed(stores, command):
    args = [a.format(**stores) for a in command]
    line = refused(args, 1, reads=(stores["acts"], stores["jsae"], stores["jac"]))
    assert "reads" in line or "inside the zarr store" in line


def test_an_output_under_a_file_or_a_read_only_parent_is_refused_before_the_scan(stores, tmp_path):
    (tmp_path / "file").write_text("")
    line = refused(["report", stores["jac"], "--out", str(tmp_path / "file" / "r")], 1)
    assert "--out" in line and ".partial" not in line
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert "not a writable directory" in refused(["export", stores["jsae"], "-f", "saelens", "-o", str(ro / "x")], 1)


# ---------------------------------------------------------------------------------------------
# Silent oddities and the one-line rule


def test_a_latent_given_twice_counts_once(stores):
    once = runner.invoke(app, ["connections", stores["jac"], "--input-latent", "3", "--top", "0", "--json"])
    twice = runner.invoke(app, ["connections", stores["jac"], "--input-latent", "3", "--input-latent", "3", "--top", "0", "--json"])
    assert once.exit_code == twice.exit_code == 0 and json.loads(once.stdout) == json.loads(twice.stdout)


def test_verify_given_no_store_fails(stores):
    assert "no stores arrived on stdin" in refused(["verify"], 1, input="")


def test_a_jacobian_store_without_its_index_is_damaged(stores, tmp_path):
    jac = shutil.copytree(stores["jac"], tmp_path / "jac.zarr")
    shutil.rmtree(jac / "index")
    result = runner.invoke(app, ["verify", str(jac)])
    assert result.exit_code == 1 and "index/by_input" in result.stderr
    assert "index" in refused(["connections", str(jac), "--input-latent", "3"], 1)


def test_an_empty_csv_has_the_whole_header(stores):
    result = runner.invoke(app, ["connections", stores["jac"], "--min-strength", "1e9", "--csv"])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["input,output,strength,count,mean_abs,max_abs,mean,input_label,output_label"]


def _jsaectl(args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(f"{sys.executable} -m jsaectl {args}", shell=True, capture_output=True, text=True, timeout=300, **kw)


def test_a_closed_pipe_ends_with_141_in_silence(stores):
    proc = _jsaectl(f"connections {stores['jac']} --csv --top 0 | head -1; echo ${{PIPESTATUS[0]}} >&2", executable="/bin/bash")
    assert proc.stdout.startswith("input,output") and proc.stderr.strip().splitlines()[-1] == "141", proc.stderr


def test_a_damaged_store_is_one_line_and_nothing_after_it(stores, tmp_path):
    acts = shutil.copytree(stores["acts"], tmp_path / "acts.zarr")
    chunk = next(p for p in sorted((acts / "x" / "c").rglob("*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    proc = _jsaectl(f"train {acts} {' '.join(SMALL)} --tokens 20k -o {tmp_path}/j.zarr")
    assert proc.returncode == 1 and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("jsaectl: error:") and "checksum" in lines[-1]
    assert not any("Task was destroyed" in line or "Warning" in line for line in lines), proc.stderr
