"""export: every format read back from its files reproduces jsaectl's own encode/decode (with
each target tool's encoding rule written out here from its documented cfg), connection
files equal the jacobian store, and refusals write nothing."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import fields

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from safetensors.torch import load_file
from typer.testing import CliRunner

from jsaectl.cli import app
from jsaectl.configs import FORMATS
from jsaectl.connections import COLUMNS, FIELDS, Connection
from jsaectl.export import (
    ExportConfig,
    export,
    sparsify_tensors,
)
from jsaectl.jacobian import JacobianConfig, jacobian
from jsaectl.acts import Activations
from jsaectl.trained import load_sae
from jsaectl.store import open_store
from jsaectl.sae import TopKSAE

runner = CliRunner()
TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def jac_store(jsae_store, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("jac") / "jac.zarr")
    return jacobian(JacobianConfig(jsae=jsae_store, tokens=2000, out=out)).store


@pytest.fixture(scope="module")
def saes(jsae_store) -> dict[str, TopKSAE]:
    store = open_store(jsae_store, "jsae")
    return {side: load_sae(store, f"sae_{side}") for side in ("in", "out")}


@pytest.fixture(scope="module")
def inputs(saes) -> torch.Tensor:
    """Random inputs, shifted off zero so a mishandled bias would show."""
    g = torch.Generator().manual_seed(0)
    d = saes["in"].d_in
    return 2 * torch.randn(512, d, generator=g) + torch.randn(d, generator=g)


def _run(*args: str, code: int = 0, stdin: str | None = None):
    result = runner.invoke(app, ["export", *args], input=stdin)
    assert result.exit_code == code, result.output
    return result


def _topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """SAELens' and the reference JSAE code's TopK: top k pre-activations, ReLU, zeros elsewhere."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


def _ours(sae: TopKSAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    code = sae.encode(x)
    return sae.encode_dense(x), sae.decode(code.values, code.indices)


# --------------------------------------------------------------------------------------------
# weight formats


def test_saelens_folders_encode_and_decode_like_jsaectl(jsae_store, saes, inputs, tmp_path):
    out = tmp_path / "sl"
    result = _run(jsae_store, "--format", "saelens", "--out", str(out))
    assert result.stdout == f"{out}\n"
    meta = zarr.open_group(jsae_store, mode="r").attrs["jsaectl"]
    for side, hook in (("in", "mlp.hook_in"), ("out", "mlp.hook_out")):
        cfg = json.loads((out / f"sae_{side}" / "cfg.json").read_text())
        w = load_file(out / f"sae_{side}" / "sae_weights.safetensors")
        sae = saes[side]
        assert set(w) == {"W_enc", "b_enc", "W_dec", "b_dec"} and all(t.dtype == torch.float32 for t in w.values())
        assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"]) == ("topk", sae.d_in, sae.n_latents, sae.k)
        assert cfg["normalize_activations"] == "none" and not cfg["rescale_acts_by_decoder_norm"]
        md = cfg["metadata"]
        assert md["hook_name"] == f"blocks.{meta['layer']}.{hook}" and "hook_name_out" not in md
        other = "mlp.hook_out" if side == "in" else "mlp.hook_in"
        assert md["jsaectl"]["partner_hook_name"] == f"blocks.{meta['layer']}.{other}"
        assert md["model_name"] == meta["model"]["name"] and md["context_size"] == meta["context_size"] == 32
        assert md["prepend_bos"] is meta["data"]["bos"] and int(md["sae_lens_version"].split(".")[0]) >= 6
        # SAELens TopK, driven by the cfg: (x - b_dec·apply_b_dec_to_input) @ W_enc + b_enc.
        pre = (inputs - w["b_dec"] * cfg["apply_b_dec_to_input"]) @ w["W_enc"] + w["b_enc"]
        acts = _topk_relu(pre, cfg["k"])
        dense, recon = _ours(sae, inputs)
        torch.testing.assert_close(acts, dense, **TOL)
        torch.testing.assert_close(acts @ w["W_dec"] + w["b_dec"], recon, **TOL)
        assert (acts > 0).sum(1).float().mean() > 1  # the comparison covered active latents


def test_sparsify_folders_fold_b_dec_into_the_encoder_bias(jsae_store, saes, inputs, tmp_path):
    out = tmp_path / "sp"
    _run(jsae_store, "-f", "sparsify", "-o", str(out))
    layer = zarr.open_group(jsae_store, mode="r").attrs["jsaectl"]["layer"]
    assert sorted(os.listdir(out)) == [f"layers.{layer}.mlp_in", f"layers.{layer}.mlp_out"]
    for side in ("in", "out"):
        folder = out / f"layers.{layer}.mlp_{side}"
        cfg = json.loads((folder / "cfg.json").read_text())
        w = load_file(folder / "sae.safetensors")
        sae = saes[side]
        assert set(w) == {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}
        assert w["encoder.weight"].shape == (sae.n_latents, sae.d_in) == w["W_dec"].shape
        assert (cfg["activation"], cfg["num_latents"], cfg["k"], cfg["d_in"]) == ("topk", sae.n_latents, sae.k, sae.d_in)
        assert not (cfg["transcode"] or cfg["skip_connection"] or cfg["multi_topk"])
        # sparsify's SparseCoder.encode/decode, re-implemented: relu(linear(x - b_dec)), top k.
        pre = F.relu(F.linear(inputs - w["b_dec"], w["encoder.weight"], w["encoder.bias"]))
        values, indices = pre.topk(cfg["k"], dim=-1, sorted=False)
        acts = torch.zeros_like(pre).scatter_(-1, indices, values)
        recon = F.embedding_bag(indices, w["W_dec"], per_sample_weights=values, mode="sum") + w["b_dec"]
        dense, ours_recon = _ours(sae, inputs)
        torch.testing.assert_close(acts, dense, **TOL)
        torch.testing.assert_close(recon, ours_recon, **TOL)


def test_sparsify_folding_is_exact_for_a_large_b_dec():
    """A trained b_dec may be small; here it is large, so an unfolded bias would fail."""
    g = torch.Generator().manual_seed(1)
    sae = TopKSAE(16, 64, 4, generator=g)
    with torch.no_grad():
        sae.b_dec.copy_(3 * torch.randn(16, generator=g))
        sae.b_enc.copy_(torch.randn(64, generator=g))
    w = sparsify_tensors(sae)
    x = torch.randn(256, 16, generator=g)
    folded = F.linear(x - w["b_dec"], w["encoder.weight"], w["encoder.bias"])
    torch.testing.assert_close(folded, x @ sae.W_enc + sae.b_enc, **TOL)
    unfolded = F.linear(x - w["b_dec"], w["encoder.weight"], sae.b_enc)
    assert (unfolded - folded).abs().max() > 0.1


def test_jsae_pair_holds_both_saes_under_the_reference_keys(jsae_store, saes, inputs, tmp_path):
    out = tmp_path / "pair"
    _run(jsae_store, "-f", "jsae-pair", "-o", str(out))
    assert sorted(os.listdir(out)) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((out / "cfg.json").read_text())
    w = load_file(out / "sae_weights.safetensors")
    meta = zarr.open_group(jsae_store, mode="r").attrs["jsaectl"]
    d, n, m = meta["d_model"], meta["n_latents"], meta["d_mlp"]
    # The reference's parameter names and shapes (jacobian_saes/sae_pair.py, training_sae_pair.py:
    # SAELens orientation for the SAEs, TransformerLens's for the MLP).
    shapes = {"_W_enc": (d, n), "_b_enc": (n,), "_W_dec": (n, d), "_b_dec": (d,)}
    shapes |= {f"{k}_out": v for k, v in shapes.items()}
    shapes |= {"mlp.W_in": (d, m), "mlp.b_in": (m,), "mlp.W_out": (m, d), "mlp.b_out": (d,)}
    assert {k: tuple(v.shape) for k, v in w.items()} == shapes
    acts = Activations.open(meta["acts_store"]).mlp()
    torch.testing.assert_close(w["mlp.W_in"], acts.W_in.t(), rtol=0, atol=0)
    torch.testing.assert_close(w["mlp.W_out"], acts.W_out.t(), rtol=0, atol=0)
    # Every field of TrainingSAEPairConfig and SAEPairConfig without a default (the reference's
    # loaders fail with a TypeError on a missing one), as its source defines them.
    required = {"architecture", "d_in", "d_sae", "activation_fn_str", "apply_b_dec_to_input", "finetuning_scaling_factor",
                "context_size", "model_name", "hook_name", "hook_layer", "hook_head_index", "prepend_bos", "dataset_path",
                "dataset_trust_remote_code", "normalize_activations", "dtype", "device", "l1_coefficient", "lp_norm",
                "use_ghost_grads", "normalize_sae_decoder", "noise_scale", "decoder_orthogonal_init", "mse_loss_normalization"}
    assert required <= set(cfg) and cfg["use_jacobian_loss"] is True
    assert cfg["hook_name"] == f"blocks.{meta['layer']}.ln2.hook_normalized"
    assert cfg["hook_name_out"] == f"blocks.{meta['layer']}.hook_mlp_out"
    assert cfg["activation_fn_str"] == "topk" and cfg["activation_fn_kwargs"] == {"k": meta["k"]}
    assert (cfg["d_in"], cfg["d_sae"], cfg["hook_layer"]) == (meta["d_model"], meta["n_latents"], meta["layer"])
    assert cfg["jacobian_coefficient"] == meta["lam"] and cfg["is_pair"] and cfg["context_size"] == 32
    for side, suffix in (("in", ""), ("out", "_out")):
        # The reference SAEPair.encode_standard / decode, re-implemented.
        x = inputs - w[f"_b_dec{suffix}"] * cfg["apply_b_dec_to_input"]
        acts = _topk_relu(x @ w[f"_W_enc{suffix}"] + w[f"_b_enc{suffix}"], cfg["activation_fn_kwargs"]["k"])
        dense, recon = _ours(saes[side], inputs)
        torch.testing.assert_close(acts, dense, **TOL)
        torch.testing.assert_close(acts @ w[f"_W_dec{suffix}"] + w[f"_b_dec{suffix}"], recon, **TOL)


def test_a_jacobian_store_exports_the_weights_of_its_jsae(jsae_store, jac_store, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(jsae_store, "-f", "saelens", "-o", str(a))
    _run(jac_store, "-f", "saelens", "-o", str(b))
    for rel in ("sae_in/cfg.json", "sae_in/sae_weights.safetensors", "sae_out/sae_weights.safetensors"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


# --------------------------------------------------------------------------------------------
# connections


def _store_rows(jac_store: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    g = zarr.open_group(jac_store, mode="r")
    cols = {name: g["connections"][name][...] for name in COLUMNS}
    return cols, g["latents/in_label"][...], g["latents/out_label"][...]


def _check_rows(rows: list[dict], jac_store: str, n: int) -> None:
    cols, in_labels, out_labels = _store_rows(jac_store)
    assert len(rows) == n and n > 10
    for name, stored in cols.items():
        got = np.array([float(r[name]) for r in rows]).astype(stored.dtype)
        np.testing.assert_array_equal(got, stored[:n])  # exact: the decimals read back to the stored values
    assert [r["input_label"] for r in rows] == [str(in_labels[i]) for i in cols["input"][:n]]
    assert [r["output_label"] for r in rows] == [str(out_labels[i]) for i in cols["output"][:n]]
    strength = np.array([float(r["strength"]) for r in rows])
    assert (np.diff(strength) <= 0).all()


def test_connections_csv_and_jsonl_equal_the_store(jac_store, tmp_path):
    total = zarr.open_group(jac_store, mode="r")["connections/input"].shape[0]
    _run(jac_store, "-f", "connections-csv", "-o", str(tmp_path / "c"))
    with open(tmp_path / "c" / "connections.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == FIELDS == tuple(f.name for f in fields(Connection))
        _check_rows(list(reader), jac_store, total)
    _run(jac_store, "-f", "connections-jsonl", "-o", str(tmp_path / "j"), "--top", "25")
    lines = (tmp_path / "j" / "connections.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert all(tuple(r) == FIELDS for r in rows)
    _check_rows(rows, jac_store, 25)


# --------------------------------------------------------------------------------------------
# the command


def test_json_stdin_and_config_file(jsae_store, tmp_path):
    out = tmp_path / "viajson"
    cfg = tmp_path / "export.yaml"
    cfg.write_text(f"format: sparsify\nout: {out}\n")
    result = _run("--config", str(cfg), "--json", stdin=jsae_store + "\n")
    summary = json.loads(result.stdout)
    assert summary["out"] == str(out) and summary["format"] == "sparsify"
    on_disk = sorted(os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs)
    assert sorted(summary["files"]) == on_disk and len(on_disk) == 4
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_overwrite_replaces_only_what_the_format_writes(jsae_store, tmp_path):
    out = tmp_path / "ow"
    (out / "sae_in").mkdir(parents=True)
    (out / "sae_in" / "stale.txt").write_text("old")
    (out / "notes.md").write_text("mine")
    _run(jsae_store, "-f", "saelens", "-o", str(out), "--overwrite")
    assert sorted(os.listdir(out)) == ["notes.md", "sae_in", "sae_out"]
    assert sorted(os.listdir(out / "sae_in")) == ["cfg.json", "sae_weights.safetensors"]
    assert (out / "notes.md").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["ow"]  # no temporary folder left behind


def test_an_empty_out_dir_is_used(jsae_store, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    _run(jsae_store, "-f", "jsae-pair", "-o", str(out))
    assert sorted(os.listdir(out)) == ["cfg.json", "sae_weights.safetensors"]


def _snapshot(root) -> dict[str, bytes | None]:
    """Every folder (None) and file (its bytes) under root."""
    found: dict[str, bytes | None] = {}
    for folder, dirs, names in os.walk(root):
        found.update({os.path.relpath(os.path.join(folder, d), root): None for d in dirs})
        for n in names:
            with open(os.path.join(folder, n), "rb") as f:
                found[os.path.relpath(os.path.join(folder, n), root)] = f.read()
    return found


def _refused(args: list[str], code: int, tmp_path) -> str:
    before = _snapshot(tmp_path)
    result = _run(*args, code=code)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jsaectl: error: ") and "hint:" in lines[0], result.stderr
    assert _snapshot(tmp_path) == before
    return lines[0]


def test_refusals_are_one_line_and_touch_nothing(jsae_store, jac_store, acts_store, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("keep")
    new = str(tmp_path / "new")
    line = _refused([jsae_store, "-f", "saelens", "-o", str(full)], 1, tmp_path)
    assert "not empty" in line and "--overwrite" in line
    line = _refused([jsae_store, "-f", "onnx", "-o", new], 2, tmp_path)
    assert all(f in line for f in FORMATS)
    line = _refused([jsae_store, "-f", "connections-csv", "-o", new], 1, tmp_path)
    assert "jacobian store" in line and all(f in line for f in ("saelens", "sparsify", "jsae-pair"))
    for fmt in ("saelens", "connections-csv"):
        line = _refused([acts_store, "-f", fmt, "-o", new], 1, tmp_path)
        assert "is an activations store" in line and all(f in line for f in FORMATS) and "jsaectl train" in line
    line = _refused([jsae_store, "-f", "saelens", "-o", new, "--top", "3"], 2, tmp_path)
    assert "--top" in line
    assert not os.path.exists(new)


def test_library_refuses_before_writing(jsae_store, tmp_path):
    from jsaectl.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown export format"):
        export(ExportConfig(store=jsae_store, format="SAELens", out=str(tmp_path / "x")))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# jsae-pair back in: jsaectl import


def _import(*args: str) -> CliRunner:
    return runner.invoke(app, ["import", *args])


def test_jsae_pair_export_then_import_is_the_same_jsae(jsae_store, tmp_path):
    pair = tmp_path / "pair"
    _run(jsae_store, "-f", "jsae-pair", "-o", str(pair))
    acts = zarr.open_group(jsae_store, mode="r").attrs["jsaectl"]["acts_store"]
    result = _import(str(pair), "--acts", acts, "-o", str(tmp_path / "back.zarr"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["mlp_checked"] is True and summary["store"] == str(tmp_path / "back.zarr")
    a, b = zarr.open_group(jsae_store, mode="r"), zarr.open_group(str(tmp_path / "back.zarr"), mode="r")
    for name in [f"{s}/{p}" for s in ("sae_in", "sae_out") for p in ("W_enc", "b_enc", "W_dec", "b_dec")] + ["mlp/W_in", "mlp/W_out"]:
        assert a[name][...].tobytes() == b[name][...].tobytes(), name  # bit-identical
    assert b.attrs["jsaectl"]["lam"] == a.attrs["jsaectl"]["lam"]
    ja = jacobian(JacobianConfig(jsae=jsae_store, tokens=2000, out=str(tmp_path / "ja.zarr")))
    jb = jacobian(JacobianConfig(jsae=str(tmp_path / "back.zarr"), tokens=2000, out=str(tmp_path / "jb.zarr")))
    assert ja.sparsity == jb.sparsity
    ca, cb = (zarr.open_group(j.store, mode="r")["connections"] for j in (ja, jb))
    for column in ("input", "output", "count", "strength", "mean"):
        assert ca[column][...].tobytes() == cb[column][...].tobytes(), column
    again = _import(str(pair), "--acts", acts, "-o", str(tmp_path / "back.zarr"))
    assert again.exit_code == 0 and "already imported" in again.stderr


def test_import_refuses_a_pair_of_another_mlp_or_layer(jsae_store, gpt2_dir, corpus, tmp_path):
    from safetensors.torch import save_file

    pair = tmp_path / "pair"
    _run(jsae_store, "-f", "jsae-pair", "-o", str(pair))
    acts = zarr.open_group(jsae_store, mode="r").attrs["jsaectl"]["acts_store"]
    other = runner.invoke(app, ["harvest", str(gpt2_dir), "-l", "0", "-d", str(corpus), "-n", "2k", "-T", "32",
                                "-o", str(tmp_path / "l0.zarr")])
    assert other.exit_code == 0, other.output
    result = _import(str(pair), "--acts", str(tmp_path / "l0.zarr"), "-o", str(tmp_path / "x.zarr"))
    assert result.exit_code == 2 and "trained on layer 1" in result.stderr and not (tmp_path / "x.zarr").exists()
    w = load_file(pair / "sae_weights.safetensors")
    w["mlp.W_in"] = w["mlp.W_in"] * 1.01
    save_file(w, pair / "sae_weights.safetensors")
    result = _import(str(pair), "--acts", acts, "-o", str(tmp_path / "x.zarr"))
    assert result.exit_code == 2 and "MLP weights" in result.stderr and "differ" in result.stderr
    single = tmp_path / "single"
    _run(jsae_store, "-f", "saelens", "-o", str(single))
    result = _import(str(single / "sae_in"), "--acts", acts)
    assert result.exit_code == 2 and "not a JSAE pair" in result.stderr


def test_import_folds_a_subtracted_decoder_bias(jsae_store, inputs, saes, tmp_path):
    """A reference pair trained with apply_b_dec_to_input encodes (x − b_dec) W + b; the import
    rewrites it as x W + (b − b_dec W): the same codes."""
    from safetensors.torch import save_file

    pair = tmp_path / "pair"
    _run(jsae_store, "-f", "jsae-pair", "-o", str(pair))
    cfg = json.loads((pair / "cfg.json").read_text())
    w = load_file(pair / "sae_weights.safetensors")
    for s in ("", "_out"):  # the same encoder, written the reference's other way
        w[f"_b_enc{s}"] = (w[f"_b_enc{s}"].double() + w[f"_b_dec{s}"].double() @ w[f"_W_enc{s}"].double()).float()
    cfg["apply_b_dec_to_input"] = True
    save_file(w, pair / "sae_weights.safetensors")
    (pair / "cfg.json").write_text(json.dumps(cfg))
    acts = zarr.open_group(jsae_store, mode="r").attrs["jsaectl"]["acts_store"]
    result = _import(str(pair), "--acts", acts, "-o", str(tmp_path / "folded.zarr"))
    assert result.exit_code == 0, result.output
    store = open_store(str(tmp_path / "folded.zarr"), "jsae")
    for side in ("in", "out"):
        dense, _ = _ours(load_sae(store, f"sae_{side}"), inputs)
        want, _ = _ours(saes[side], inputs)
        torch.testing.assert_close(dense, want, **TOL)
