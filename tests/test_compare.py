"""compare: metrics against direct recomputation, inputs from stdin, outputs for scripts, refusals."""

from __future__ import annotations

import csv
import io
import json
import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from jsaectl.cli import app
from jsaectl.compare import CompareConfig, compare
from jsaectl.jacobian import JacobianConfig, jacobian
from jsaectl.models import load_model
from jsaectl.trained import LoadedJSAE
from jsaectl.train import TrainConfig, train

runner = CliRunner()


@pytest.fixture(scope="module")
def baseline(acts_store, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("b") / "lam0.zarr")
    train(TrainConfig(acts=acts_store, expansion=4, k=4, batch_size=256, tokens=30_000, lam=0.0, out=out))
    return out


@pytest.fixture(scope="module")
def results(jsae_store, baseline):
    return compare(CompareConfig(stores=(jsae_store, baseline), tokens=3000, eval_tokens=640, batch_size=512))


def _spliced_ce(jsae: str, gpt2_dir, n_ctx: int) -> dict[str, float]:
    """Reference: CE clean, with the MLP output zeroed, with the output SAE's ŷ as the MLP output
    and with the input SAE's x̂ as the MLP input, by hand-written hooks on GPT-2's own modules
    (c_proj's output is the MLP output; the MLP module's input is x). Position 0 (BOS, which
    the SAEs never saw) is left alone by every splice."""
    run = LoadedJSAE.open(jsae)
    loaded = load_model(str(gpt2_dir))
    block = loaded.model.transformer.h[1].mlp
    T = run.acts.context_size
    ids = torch.from_numpy(run.acts.tokens(0, n_ctx * T).reshape(n_ctx, T).astype(np.int64))
    mode = {"m": None}

    def recon(sae, v):
        dense = sae.encode_dense(v.reshape(-1, v.shape[-1]))
        rec = (dense @ sae.W_dec + sae.b_dec).reshape(v.shape)
        rec[:, 0] = v[:, 0]
        return rec

    def post(module, args, out):
        if mode["m"] == "zero":
            new = torch.zeros_like(out)
            new[:, 0] = out[:, 0]
            return new
        return recon(run.sae("out"), out) if mode["m"] == "sae_out" else None

    def pre(module, args):
        return (recon(run.sae("in"), args[0]),) if mode["m"] == "sae_in" else None

    hooks = [block.c_proj.register_forward_hook(post), block.register_forward_pre_hook(pre)]
    ces = {}
    with torch.no_grad():
        for m in ("clean", "zero", "sae_out", "sae_in"):
            mode["m"] = m
            logits = loaded.model(input_ids=ids).logits
            ces[m] = float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))
    for h in hooks:
        h.remove()
    return ces


def test_splice_scores_match_a_direct_computation(results, jsae_store, gpt2_dir):
    values = results[0][0].values
    ref = _spliced_ce(jsae_store, gpt2_dir, 20)
    assert values["ce_clean"] == pytest.approx(ref["clean"], rel=1e-5)
    assert values["ce_zero"] == pytest.approx(ref["zero"], rel=1e-5)
    assert values["ce_out"] == pytest.approx(ref["sae_out"], rel=1e-5)
    assert values["ce_in"] == pytest.approx(ref["sae_in"], rel=1e-5)
    assert values["ce_in"] != pytest.approx(values["ce_clean"], rel=1e-4)  # the input splice really changed something
    gap = ref["zero"] - ref["clean"]
    for side in ("in", "out"):
        if gap > 1e-3:
            expected = (ref["zero"] - ref[f"sae_{side}"]) / gap
            assert values[f"ce_score_{side}"] == pytest.approx(expected, abs=5e-4)  # a ratio of small CE differences
        else:  # the random test model's loss does not rise without this MLP: the score is undefined
            assert np.isnan(values[f"ce_score_{side}"])
        assert 0 <= values[f"kl_{side}"] and values[f"kl_score_{side}"] <= 1


def test_held_out_acts_must_come_from_the_jsaes_own_site(jsae_store, baseline, gpt2_dir, corpus, tmp_path):
    from jsaectl.harvest import HarvestConfig, harvest

    common = dict(model=str(gpt2_dir), dataset=str(corpus), tokens=2048, context_size=32)
    same = harvest(HarvestConfig(layer=1, **common, out=str(tmp_path / "l1.zarr"))).store
    other = harvest(HarvestConfig(layer=0, **common, out=str(tmp_path / "l0.zarr"))).store
    ok = runner.invoke(app, ["compare", jsae_store, baseline, "--acts", same, "-n", "1000", "--eval-tokens", "0", "--json"])
    assert ok.exit_code == 0, ok.output
    assert [d["acts"] for d in json.loads(ok.stdout)] == [same, same]
    bad = runner.invoke(app, ["compare", jsae_store, "--acts", other, "-n", "1000", "--eval-tokens", "0"])
    assert bad.exit_code == 2 and bad.stdout == ""
    assert "layer 0" in bad.stderr and "trained on" in bad.stderr and "layer 1" in bad.stderr and "hint" in bad.stderr


def test_reconstruction_and_sparsity_agree_with_the_jacobian_stage(results, jsae_store, tmp_path):
    jac = jacobian(JacobianConfig(jsae=jsae_store, tokens=3000, out=str(tmp_path / "j.zarr")))
    values = results[0][0].values
    for t, row in jac.sparsity["above"].items():
        assert values[f"j>{t}"] == pytest.approx(row["mean_count"], rel=1e-6)
    for m, row in jac.sparsity["above_rms"].items():
        assert values[f"j>{m}rms"] == pytest.approx(row["mean_count"], rel=1e-6)
    assert values["j_mass90"] == pytest.approx(jac.sparsity["mass90"]["mean_count"], rel=1e-6)
    assert values["j_gini"] == pytest.approx(jac.sparsity["gini"], rel=1e-6)
    assert values["ev_in"] <= 1 and values["fvu_in"] > 0 and values["fvu_out"] > 0 and 0 < values["l0_in"] <= 4
    lam0 = results[0][1].values
    assert lam0["j>0.01"] > values["j>0.01"]  # the penalty sparsifies the Jacobian


def test_cli_reads_stores_from_stdin_and_prints_json_and_csv(jsae_store, baseline, tmp_path):
    jac = jacobian(JacobianConfig(jsae=baseline, tokens=1000, out=str(tmp_path / "j.zarr")))
    stdin = f"{jsae_store}\n{jac.store}\n"  # a jacobian store stands for its JSAE
    args = ["compare", "-n", "1000", "--eval-tokens", "0"]
    result = runner.invoke(app, [*args, "--json"], input=stdin)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [d["store"] for d in doc] == [jsae_store, baseline] and [d["lam"] for d in doc] == [0.25, 0.0]
    result = runner.invoke(app, [*args, "--csv"], input=stdin)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 2 and float(rows[1]["j>0.01"]) > float(rows[0]["j>0.01"])
    result = runner.invoke(app, [*args, jsae_store, baseline])
    assert result.exit_code == 0 and "CE-loss score" in result.stdout and "in-sample" in result.stderr


def test_plot_needs_matplotlib_or_draws(jsae_store, baseline, tmp_path):
    png = tmp_path / "tradeoff.png"
    result = runner.invoke(app, ["compare", jsae_store, baseline, "-n", "500", "--eval-tokens", "320", "--plot", str(png)])
    if importlib.util.find_spec("matplotlib") is None:
        assert result.exit_code == 1 and "pip install 'jsaectl[plot]'" in result.stderr and result.stdout == ""
    else:
        assert result.exit_code == 0 and png.stat().st_size > 1000


def test_refusals(acts_store, jsae_store):
    result = runner.invoke(app, ["compare", acts_store])
    assert result.exit_code == 1 and "needs a jsae or jacobian store" in result.stderr and result.stdout == ""
    result = runner.invoke(app, ["compare"], input="")
    assert result.exit_code == 1 and "no stores arrived on stdin" in result.stderr
    result = runner.invoke(app, ["compare", jsae_store, "--json", "--csv"])
    assert result.exit_code == 2 and "exclusive" in result.stderr


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_splicing_works_for_flattened_and_gated_mlps(family, model_factory, corpus, tmp_path):
    """OPT hands its MLP [B·T, d] rows; Llama's MLP is gated. Both SAEs splice in and change the loss."""
    from jsaectl.harvest import HarvestConfig, harvest

    acts = harvest(HarvestConfig(model=str(model_factory(family)), layer=1, dataset=str(corpus), tokens=8192,
                                 context_size=32, out=str(tmp_path / "a.zarr"))).store
    jsae = train(TrainConfig(acts=acts, expansion=4, k=4, batch_size=256, tokens=8192, out=str(tmp_path / "j.zarr"))).store
    values = compare(CompareConfig(stores=(jsae,), tokens=1000, eval_tokens=320, batch_size=512))[0][0].values
    assert values["ce_zero"] != pytest.approx(values["ce_clean"], rel=1e-6)
    for side in ("in", "out"):
        assert np.isfinite(values[f"ce_score_{side}"]) and values[f"ce_{side}"] != pytest.approx(values["ce_clean"], rel=1e-6)


def test_a_model_changed_since_the_harvest_is_refused_and_an_undefined_score_is_flagged(gpt2_dir, corpus, tmp_path):
    import shutil

    from jsaectl.harvest import HarvestConfig, harvest
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "model"
    shutil.copytree(gpt2_dir, model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():  # an MLP whose output hardly matters: zero-ablating it cannot raise the loss
        model.transformer.h[1].mlp.c_proj.weight.mul_(1e-4)
        model.transformer.h[1].mlp.c_proj.bias.mul_(1e-4)
    model.save_pretrained(model_dir)
    acts = harvest(HarvestConfig(model=str(model_dir), layer=1, dataset=str(corpus), tokens=4096, context_size=32,
                                 out=str(tmp_path / "a.zarr"))).store
    jsae = train(TrainConfig(acts=acts, expansion=4, k=4, batch_size=256, tokens=4096, out=str(tmp_path / "j.zarr"))).store
    results, notes = compare(CompareConfig(stores=(jsae,), tokens=500, eval_tokens=320))
    values = results[0].values
    assert abs(values["ce_zero"] - values["ce_clean"]) < 1e-3
    assert np.isnan(values["ce_score_in"]) and np.isnan(values["ce_score_out"]) and any("undefined" in n for n in notes)
    result = runner.invoke(app, ["compare", jsae, "-n", "500", "--eval-tokens", "320", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["ce_score_out"] is None  # JSON null, not NaN

    with torch.no_grad():  # the model changes after the harvest
        model.transformer.h[1].mlp.c_fc.weight.mul_(1.5)
    model.save_pretrained(model_dir)
    result = runner.invoke(app, ["compare", jsae, "-n", "500", "--eval-tokens", "320"])
    assert result.exit_code == 1 and result.stdout == "" and "other MLP weights" in result.stderr
    assert runner.invoke(app, ["compare", jsae, "-n", "500", "--eval-tokens", "0"]).exit_code == 0
