"""jacobian and maxact against brute-force recomputation over the same tokens."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from jsaectl.cli import app
from jsaectl.jacobian import JacobianConfig, jacobian
from jsaectl.maxact import MaxactConfig, maxact
from jsaectl.trained import LoadedJSAE
from conftest import pipeline

runner = CliRunner()
N = 3000


@pytest.fixture(scope="module")
def brute(jsae_store):
    """Every analysed token's J, codes and row, computed directly."""
    model = LoadedJSAE.open(jsae_store)
    batches = list(model.batches(N, 500))
    return model, batches


@pytest.fixture(scope="module")
def jac(jsae_store, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("jac") / "jac.zarr")
    return jacobian(JacobianConfig(jsae=jsae_store, tokens=N, per_token=True, linearity=30, out=out, batch_size=700))


def test_sparsity_summary_counts_entries_above_each_threshold(jac, brute):
    model, batches = brute
    J = torch.cat([b.J for b in batches])
    assert jac.n_tokens == len(J) == N - N // 32 - 1  # BOS rows (position 0) are skipped
    sp = jac.sparsity
    for t, row in sp["above"].items():
        expected = (J.abs() > float(t)).sum((1, 2)).double().mean().item()
        assert row["mean_count"] == pytest.approx(expected) and row["fraction"] == pytest.approx(expected / 16)
    counts = [row["mean_count"] for row in sp["above"].values()]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0
    # Scale-free measures, against numpy references written out here.
    a = np.abs(J.numpy().astype(np.float64)).reshape(len(J), -1)
    rms = np.sqrt((a**2).mean(1))
    for m, row in sp["above_rms"].items():
        assert row["mean_count"] == pytest.approx((a > float(m) * rms[:, None]).sum(1).mean())
    desc = np.sort(a, axis=1)[:, ::-1]
    need = [int(np.searchsorted(np.cumsum(r), 0.9 * r.sum()) + 1) if r.sum() > 0 else 0 for r in desc]
    assert sp["mass90"]["mean_count"] == pytest.approx(np.mean(need), rel=1e-6)
    gini = [np.abs(r[:, None] - r[None, :]).sum() / (2 * len(r) * r.sum()) if r.sum() > 0 else 0 for r in a]
    assert sp["gini"] == pytest.approx(np.mean(gini), rel=1e-9) and 0 < sp["gini"] < 1
    assert sp["mean_abs"] == pytest.approx(a.mean(), rel=1e-6)


def test_connections_are_the_aggregates_of_co_active_pairs(jac, brute):
    model, batches = brute
    sums: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for b in batches:
        for t in range(len(b.rows)):
            for i in range(4):
                for j in range(4):
                    if b.code_out.values[t, i] > 0 and b.code_in.values[t, j] > 0:
                        v = float(b.J[t, i, j])
                        s = sums[(int(b.code_in.indices[t, j]), int(b.code_out.indices[t, i]))]
                        s[0] += 1; s[1] += abs(v); s[2] += v; s[3] = max(s[3], abs(v))  # noqa: E702
    g = zarr.open_group(jac.store, mode="r")["connections"]
    strength = g["strength"][...]
    assert len(strength) == len(sums) and (np.diff(strength) <= 0).all()
    for n in range(0, len(strength), max(1, len(strength) // 50)):
        c, s = (int(g["input"][n]), int(g["output"][n])), sums[(int(g["input"][n]), int(g["output"][n]))]
        assert g["count"][n] == s[0], c
        assert g["strength"][n] == pytest.approx(s[1] / jac.n_tokens, rel=1e-5)
        assert g["mean"][n] == pytest.approx(s[2] / s[0], rel=1e-4, abs=1e-7)
        assert g["max_abs"][n] == pytest.approx(s[3], rel=1e-5)
    top = jac.top[0]
    assert (top.input, top.output) == max(sums, key=lambda key: sums[key][1])
    assert top.input_label and top.output_label


def test_per_token_arrays_and_histogram(jac, brute):
    model, batches = brute
    g = zarr.open_group(jac.store, mode="r")
    J = torch.cat([b.J for b in batches]).numpy()
    np.testing.assert_allclose(g["per_token/J"][...], J, rtol=1e-6, atol=1e-8)
    assert (g["per_token/token"][...] == torch.cat([b.rows for b in batches]).numpy()).all()
    assert (g["per_token/out_idx"][...] == torch.cat([b.code_out.indices for b in batches]).numpy()).all()
    assert (g["per_token/in_idx"][...] == torch.cat([b.code_in.indices for b in batches]).numpy()).all()
    assert g["histogram/counts"][...].sum() == (J != 0).sum()


def test_linearity_checks_report_fractions(jac):
    lin = jac.linearity
    assert lin["pairs"] > 0 and lin["linear"] + lin["jumprelu"] + lin["other"] == pytest.approx(1)
    assert 0.5 < lin["ablation_agree"] <= 1 and lin["ablation_checks"] > 0


def test_spilling_to_disk_changes_nothing(jsae_store, jac, tmp_path):
    """With room for only 200 pairs in memory the sums spill to disk many times; the strongest
    200 pairs stored must be exactly those of the in-memory run."""
    small = jacobian(JacobianConfig(jsae=jsae_store, tokens=N, max_pairs=200, batch_size=100, out=str(tmp_path / "s.zarr")))
    g_all = zarr.open_group(jac.store)["connections"]
    g_small = zarr.open_group(small.store)["connections"]
    assert g_small["input"].shape == (200,) and g_all["input"].shape[0] > 200
    meta_small, meta_all = (zarr.open_group(x.store).attrs["jsaectl"] for x in (small, jac))
    assert meta_small["distinct_pairs"] == meta_all["distinct_pairs"] == g_all["input"].shape[0]
    for name in ("input", "output", "count"):
        assert (g_small[name][...] == g_all[name][:200]).all(), name
    np.testing.assert_allclose(g_small["strength"][...], g_all["strength"][:200], rtol=1e-6)
    assert not list(tmp_path.glob("jsaectl-pairs-*"))  # the spill files are gone


def test_maxact_latent_examples_are_the_true_top_activations(jsae_store, brute):
    model, batches = brute
    latent = int(torch.cat([b.code_out.indices[b.code_out.values > 0] for b in batches]).mode().values)
    result = maxact(MaxactConfig(jsae=jsae_store, side="out", latents=(latent,), examples=5, context=3, tokens=N))
    values = torch.cat([(b.code_out.values * (b.code_out.indices == latent)).sum(1) for b in batches])
    rows = torch.cat([b.rows for b in batches])
    best = torch.topk(values, 5).values
    got = [e.activation for e in result.latents[0].examples]
    np.testing.assert_allclose(got, best.numpy(), rtol=1e-5)
    for e in result.latents[0].examples:
        assert e.activations[e.focus] == pytest.approx(e.activation, rel=1e-3)
        assert values[rows == e.row].item() == pytest.approx(e.activation, rel=1e-5)
        assert len(e.tokens) <= 7


def test_maxact_connection_ranks_tokens_where_both_fire_by_J(jsae_store, jac):
    c = jac.top[0]
    result = maxact(MaxactConfig(jsae=jsae_store, connection=(c.input, c.output), examples=4, tokens=N))
    examples = result.latents[0].examples
    assert len(examples) == 4 and result.latents[0].count == c.count
    assert examples[0].activation == pytest.approx(c.max_abs, rel=1e-4)
    for e in examples:
        assert e.extra["in_activation"] > 0 and e.extra["out_activation"] > 0
        assert abs(e.extra["J"]) == pytest.approx(e.activation, rel=1e-4)


def test_maxact_cli_json_and_errors(jsae_store, acts_store):
    result = runner.invoke(app, ["maxact", jsae_store, "--top-latents", "3", "--examples", "2", "-n", "2000", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    totals = [item["count"] for item in doc["latents"]]
    assert len(doc["latents"]) == 3 and all(len(item["examples"]) == 2 for item in doc["latents"])
    assert set(doc["latents"][0]["examples"][0]) >= {"rank", "activation", "row", "tokens", "activations", "focus"}
    assert totals == sorted(totals, reverse=True) and totals[-1] > 0
    for args, message in (([jsae_store, "--latent", "999"], "out of range"), ([acts_store, "--latent", "1"], "needs a jsae or jacobian store"),
                          ([jsae_store], "exactly one of"), ([jsae_store, "--connection", "1-2"], "IN:OUT")):
        bad = runner.invoke(app, ["maxact", *args])
        assert bad.exit_code in (1, 2) and bad.stdout == "" and message in bad.stderr, bad.output
        assert len(bad.stderr.strip().splitlines()) == 1 and bad.stderr.startswith("jsaectl: error:")


def test_maxact_input_side_product_ranking_and_context(jsae_store, jac, brute):
    model, batches = brute
    latent = int(torch.cat([b.code_in.indices[b.code_in.values > 0] for b in batches]).mode().values)
    result = runner.invoke(app, ["maxact", jsae_store, "--side", "in", "--latent", str(latent), "--examples", "3",
                                 "--context", "2", "-n", str(N), "--json"])
    assert result.exit_code == 0, result.output
    item = json.loads(result.stdout)["latents"][0]
    values = torch.cat([(b.code_in.values * (b.code_in.indices == latent)).sum(1) for b in batches])
    np.testing.assert_allclose([e["activation"] for e in item["examples"]], torch.topk(values, 3).values.numpy(), rtol=1e-5)
    assert all(len(e["tokens"]) <= 5 and len(e["tokens"]) == len(e["activations"]) for e in item["examples"])
    c = jac.top[0]
    result = runner.invoke(app, ["maxact", jsae_store, "--connection", f"{c.input}:{c.output}", "--rank-by", "product",
                                 "--examples", "4", "-n", str(N), "--json"])
    assert result.exit_code == 0, result.output
    examples = json.loads(result.stdout)["latents"][0]["examples"]
    products = [e["extra"]["in_activation"] * e["extra"]["out_activation"] for e in examples]
    assert products == sorted(products, reverse=True)
    np.testing.assert_allclose([e["activation"] for e in examples], products, rtol=1e-5)


def test_jacobian_on_held_out_acts_with_custom_thresholds(jsae_store, gpt2_dir, tmp_path):
    from jsaectl.harvest import HarvestConfig, harvest

    text = tmp_path / "other.txt"
    text.write_text("Ein ganz anderer Text, den das SAE nie gesehen hat. " * 200)
    held = harvest(HarvestConfig(model=str(gpt2_dir), layer=1, dataset=str(text), tokens=1024, context_size=32,
                                 out=str(tmp_path / "held.zarr"))).store
    result = runner.invoke(app, ["jacobian", jsae_store, "--acts", held, "--thresholds", "0.001,0.1", "-n", "1k",
                                 "-o", str(tmp_path / "j.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    meta = zarr.open_group(str(tmp_path / "j.zarr"), mode="r").attrs["jsaectl"]
    assert meta["acts_store"] == held and meta["n_tokens"] == 1000 - 32  # -n 1k: 1000 rows, less a BOS every 32
    assert set(meta["sparsity"]["above"]) == {"0.001", "0.1"} and set(meta["sparsity"]["above_rms"]) == {"0.5", "1", "2", "4"}
    assert meta["sparsity"]["above"]["0.001"]["mean_count"] >= meta["sparsity"]["above"]["0.1"]["mean_count"]
    assert "histogram of |J|" in result.stderr and "%" in result.stderr.split("histogram of |J|")[1]


def test_pipeline_ends_with_the_table_on_stderr(gpt2_dir, corpus, tmp_path):
    proc = pipeline(f"harvest {gpt2_dir} -l 1 -d {corpus} -n 20k -T 32 -o {tmp_path}/a.zarr",
                    f"train -e 4 -k 4 -b 256 -o {tmp_path}/j.zarr", f"jacobian --top 5 -o {tmp_path}/c.zarr", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{tmp_path}/c.zarr"]
    assert "top 5 connections" in proc.stderr and "Jacobian sparsity" in proc.stderr


def test_a_failing_stage_stops_the_pipe(tmp_path):
    proc = pipeline(f"train {tmp_path}/missing.zarr", "jacobian", timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert "no store at" in lines[0] and "no store arrived on stdin" in lines[1]


def test_filtering_the_table_by_latent(jac, jsae_store):
    from jsaectl.connections import query
    from jsaectl.store import open_store

    c = jac.top[0]
    store = open_store(jac.store, "jacobian")
    into = query(store, top=5, outputs=(c.output,))
    assert into[0].input == c.input and all(x.output == c.output for x in into)
    assert [x.strength for x in into] == sorted((x.strength for x in into), reverse=True)
    out_of = query(store, top=50, inputs=(c.input,))
    assert all(x.input == c.input for x in out_of) and len(out_of) > 1
    # jacobian computes; asking a jacobian store is `connections`' job alone
    result = runner.invoke(app, ["jacobian", jac.store, "--top", "3"])
    assert result.exit_code == 1 and "jsaectl connections" in result.stderr and result.stdout == ""
    result = runner.invoke(app, ["jacobian", jsae_store, "--output-latent", "3"])
    assert result.exit_code == 2 and "--output-latent" in result.stderr and result.stdout == ""


def test_linearity_classifier_on_known_curves():
    from jsaectl.linearity import classify

    t = np.linspace(0, 5, 100)
    assert classify(t, 0.3 * t + 1) == "linear"
    assert classify(t, np.maximum(0, t - 2)) == "jumprelu"
    assert classify(t, np.maximum(0, 2 - t)) == "jumprelu"
    assert classify(t, np.sin(3 * t)) == "other"
    assert classify(t, np.where((t > 1) & (t < 3), t, 0.0)) == "other"  # two zero regions


@pytest.mark.parametrize("at", ["x", "reconstruction"])
def test_ablation_check_agrees_with_J_when_f_is_affine(jsae_store, at):
    """With every ReLU unit of the MLP switched on, f is affine, so removing one unit of an input
    latent moves each output latent by exactly −J (unless the TopK set changes): the check must
    find (nearly) full agreement, wherever J is evaluated."""
    from jsaectl.jsae import JSAE
    from jsaectl.linearity import linearity_checks
    from jsaectl.mlp import MLPWeights

    model = LoadedJSAE.open(jsae_store)
    m = model.mlp
    affine = MLPWeights(m.W_in, m.b_in + 1e3, m.W_out, m.b_out - m.W_out @ torch.full_like(m.b_in, 1e3), "relu")
    model.jsae = JSAE(model.sae("in"), model.sae("out"), affine, at)
    result = linearity_checks(model, n_tokens=2000, n_pairs=60, seed=0)
    assert result["ablation_checks"] > 100 and result["ablation_topk_kept"] > 0.3
    # Where TopK keeps the same latents, e_y ∘ f ∘ d_x is affine too: J predicts the change exactly.
    assert result["ablation_agree_topk_kept"] == 1.0
    assert result["ablation_agree"] > 0.7
