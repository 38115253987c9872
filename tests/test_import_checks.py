"""import refuses a damaged or ill-typed JSAE pair before creating anything, and every analysis
(and verify) refuses a jsae store whose SAEs disagree with its attrs.

Each pair case damages a copy of a pair exported from the session's JSAE (cfg.json or the
safetensors), then asserts: the exit code, exactly one `jsaectl: error:` line on stderr that
names the problem, nothing on stdout, no --out, and the activations store unchanged.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from jsaectl import store as st
from conftest import digest, private_stores
from jsaectl.cli import app

runner = CliRunner()


def refused(args: list[str], code: int, reads: tuple[str, ...]) -> str:
    """Run a command that must fail with ``code``: one `jsaectl: error:` line (the last of
    stderr), empty stdout, every store in ``reads`` byte for byte as it was. Returns the line."""
    before = [digest(r) for r in reads]
    result = runner.invoke(app, args)
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("jsaectl:")]
    assert len(ours) == 1 and lines[-1] == ours[0] and ours[0].startswith("jsaectl: error:"), result.stderr
    assert "Traceback" not in result.stderr and "hint:" in ours[0], result.stderr
    assert [digest(r) for r in reads] == before, "a store that was read changed"
    return ours[0]


@pytest.fixture(scope="module")
def stores(acts_store, jsae_store, tmp_path_factory) -> dict[str, str]:
    """Private copies of the session's stores, and a valid pair exported from the JSAE."""
    root = tmp_path_factory.mktemp("import_checks")
    acts, jsae = private_stores(root, acts_store, jsae_store)
    result = runner.invoke(app, ["export", jsae, "--format", "jsae-pair", "--out", str(root / "pair")])
    assert result.exit_code == 0, result.output
    return {"acts": acts, "jsae": jsae, "pair": str(root / "pair")}


# --------------------------------------------------------------------------------------------
# import: damaged pairs


Tensors = dict[str, torch.Tensor]


def _set(key: str, value: Any) -> Callable[[dict[str, Any], Tensors], None]:
    def damage(cfg: dict[str, Any], w: Tensors) -> None:
        cfg[key] = value
    return damage


def _set_k(k: Any) -> Callable[[dict[str, Any], Tensors], None]:
    def damage(cfg: dict[str, Any], w: Tensors) -> None:
        cfg["activation_fn_kwargs"]["k"] = k
    return damage


def _tensor(key: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict[str, Any], Tensors], None]:
    def damage(cfg: dict[str, Any], w: Tensors) -> None:
        w[key] = change(w[key]).contiguous()
    return damage


def _nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[3] = float("nan")
    return t


def _narrow_out(cfg: dict[str, Any], w: Tensors) -> None:
    """The output SAE with half the latents (every tensor consistent with that)."""
    n = w["_W_enc_out"].shape[1] // 2
    w["_W_enc_out"], w["_b_enc_out"] = w["_W_enc_out"][:, :n].contiguous(), w["_b_enc_out"][:n].contiguous()
    w["_W_dec_out"] = w["_W_dec_out"][:n].contiguous()


def _fold_overflows(cfg: dict[str, Any], w: Tensors) -> None:
    """Finite float32 weights whose apply_b_dec_to_input fold (b_enc − b_dec W_enc) leaves float32."""
    cfg["apply_b_dec_to_input"] = True
    w["_b_dec_out"] = torch.full_like(w["_b_dec_out"], 3e38)
    w["_W_enc_out"] = torch.ones_like(w["_W_enc_out"])


N = 128  # the session JSAE's latents (conftest: expansion 4 × d_model 32)
PAIR_CASES: dict[str, tuple[Callable[[dict[str, Any], Tensors], None], str]] = {
    # non-finite weights, and finite ones that float32 cannot hold
    "nan": (_tensor("_W_dec_out", _nan), "_W_dec_out holds non-finite values"),
    "inf": (_tensor("_b_enc", lambda t: t + float("inf")), "_b_enc holds non-finite values"),
    "inf-mlp": (_tensor("mlp.b_out", lambda t: t - float("inf")), "mlp.b_out holds non-finite values"),
    "float64-overflow": (_tensor("_W_enc", lambda t: t.double() * 1e300), "_W_enc holds values beyond float32's range"),
    "fold-overflow": (_fold_overflows, "folding _b_dec_out into _b_enc_out"),
    "int-dtype": (_tensor("_b_dec", lambda t: t.round().to(torch.int32)), "_b_dec has dtype torch.int32"),
    # k
    "k-0": (_set_k(0), "activation_fn_kwargs.k is 0"),
    "k-over-n": (_set_k(N + 1), f"activation_fn_kwargs.k is {N + 1}; it must be an integer with 1 ≤ k ≤ d_sae = {N}"),
    "k-float": (_set_k(4.0), "activation_fn_kwargs.k is 4.0"),  # 4.0 is refused too: the reference writes ints
    "k-bool": (_set_k(True), "activation_fn_kwargs.k is True"),
    "k-string": (_set_k("4"), "activation_fn_kwargs.k is '4'"),
    # shapes that would only broadcast, and two SAEs of different widths
    "b_enc-1xn": (_tensor("_b_enc", lambda t: t[None]), f"_b_enc has shape [1, {N}], not [{N}]"),
    "b_dec_out-scalar": (_tensor("_b_dec_out", lambda t: t[0]), "_b_dec_out has shape [], not [32]"),
    "W_dec-transposed": (_tensor("_W_dec", lambda t: t.t()), f"_W_dec has shape [32, {N}], not [{N}, 32]"),
    "W_enc-1d": (_tensor("_W_enc", lambda t: t.reshape(-1)), "_W_enc has shape"),
    "out-narrower": (_narrow_out, "same number of latents"),
    "mlp-3d": (_tensor("mlp.W_in", lambda t: t[None]), "mlp.W_in"),
    # λ
    "lam-string": (_set("jacobian_coefficient", "0.5"), "jacobian_coefficient is '0.5', not a finite number"),
    "lam-nan": (_set("jacobian_coefficient", float("nan")), "jacobian_coefficient is nan"),
    "lam-inf": (_set("jacobian_coefficient", float("inf")), "jacobian_coefficient is inf"),
    "lam-list": (_set("jacobian_coefficient", [0.5]), "jacobian_coefficient is [0.5]"),
    "lam-bool": (_set("jacobian_coefficient", True), "jacobian_coefficient is True"),
    "lam-huge-int": (_set("jacobian_coefficient", 10**400), "jacobian_coefficient is"),
    # cfg.json fields of the wrong type
    "hook_name-number": (_set("hook_name", 1), "hook_name is a number (1), not a string"),
    "apply_b_dec-string": (_set("apply_b_dec_to_input", "false"), "apply_b_dec_to_input is a string ('false'), not a boolean"),
    "kwargs-list": (_set("activation_fn_kwargs", [4]), "activation_fn_kwargs is an array ([4]), not an object"),
    "normalize-number": (_set("normalize_activations", 0), "normalize_activations is a number (0), not a string or null"),
    "jsaectl-string": (_set("jsaectl", "x"), "jsaectl is a string ('x'), not an object or null"),
    "jacobian_at-unknown": (_set("jsaectl", {"jacobian_at": "y"}), "jsaectl.jacobian_at is 'y'"),
}


def _damaged_pair(stores: dict[str, str], tmp_path: Path, damage: Callable[[dict[str, Any], Tensors], None]) -> Path:
    pair = Path(shutil.copytree(stores["pair"], tmp_path / "pair"))
    cfg = json.loads((pair / "cfg.json").read_text())
    w = load_file(pair / "sae_weights.safetensors")
    damage(cfg, w)
    (pair / "cfg.json").write_text(json.dumps(cfg))  # NaN and Infinity as Python's json writes (and reads) them
    save_file(w, pair / "sae_weights.safetensors")
    return pair


def test_the_undamaged_pair_imports(stores, tmp_path):
    result = runner.invoke(app, ["import", stores["pair"], "--acts", stores["acts"], "--out", str(tmp_path / "ok.zarr")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("case", sorted(PAIR_CASES))
def test_import_refuses_a_damaged_pair_before_creating_anything(stores, tmp_path, case):
    damage, named = PAIR_CASES[case]
    pair = _damaged_pair(stores, tmp_path, damage)
    out = tmp_path / "out.zarr"
    line = refused(["import", str(pair), "--acts", stores["acts"], "--out", str(out)], 2, (stores["acts"], str(pair)))
    assert named in line and str(pair) in line, line
    assert not out.exists()


@pytest.mark.parametrize("cfg, named", [([1, 2], "holds an array, not a JSON object"), (3, "holds a number"),
                                        ("x", "holds a string"), (None, "holds null")])
def test_import_refuses_a_cfg_that_is_not_an_object(stores, tmp_path, cfg, named):
    pair = Path(shutil.copytree(stores["pair"], tmp_path / "pair"))
    (pair / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "out.zarr"
    line = refused(["import", str(pair), "--acts", stores["acts"], "--out", str(out)], 2, (stores["acts"],))
    assert named in line and "cfg.json" in line, line
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# jsae stores whose SAEs disagree with their attrs: every analysis refuses them, verify lists why


def _edit(jsae: str, change: Callable[[zarr.Group], None]) -> None:
    change(zarr.open_group(store=st.checked_store(jsae, read_only=False), mode="r+"))


def _b_enc_1xn(g: zarr.Group) -> None:
    st.write_array(g["sae_out"], "b_enc", g["sae_out/b_enc"][...][None])


def _narrower_sae_out(g: zarr.Group) -> None:
    """sae_out with half the latents, its arrays and attrs consistent with each other."""
    sae = g["sae_out"]
    n = sae.attrs["d_sae"] // 2
    for name, cut in (("W_enc", np.s_[:, :n]), ("b_enc", np.s_[:n]), ("W_dec", np.s_[:n])):
        st.write_array(sae, name, sae[name][...][cut])
    sae.attrs["d_sae"] = n


def _k_float(g: zarr.Group) -> None:
    g["sae_in"].attrs["k"] = 4.5


STORE_CASES = {
    "b_enc-1xn": (_b_enc_1xn, "sae_out/b_enc", f"has shape (1, {N}), the attrs say ({N},)"),
    "narrower-sae_out": (_narrower_sae_out, "sae_out", f"has d_sae {N // 2} in its attrs, the store's n_latents is {N}"),
    "k-float": (_k_float, "sae_in", "has k 4.5 in its attrs; k must be an integer"),
}


@pytest.mark.parametrize("case", sorted(STORE_CASES))
def test_analyses_and_verify_refuse_a_jsae_store_that_disagrees_with_its_attrs(stores, tmp_path, case):
    change, where, what = STORE_CASES[case]
    jsae = str(shutil.copytree(stores["jsae"], tmp_path / "jsae.zarr"))
    _edit(jsae, change)
    acts, out = stores["acts"], tmp_path / "out.zarr"
    for args in (["jacobian", jsae, "--acts", acts, "--tokens", "1k", "--out", str(out)],
                 ["maxact", jsae, "--acts", acts, "--latent", "0"],
                 ["compare", jsae, "--acts", acts, "--eval-tokens", "0"]):
        line = refused(args, 1, (jsae, acts))
        assert f"{jsae}: {where} {what}" in line and "re-import" in line, (args[0], line)
    assert not out.exists()
    result = runner.invoke(app, ["verify", jsae, "--json"])
    assert result.exit_code == 1, result.output
    problems = json.loads(result.stdout)[0]["problems"]
    assert any(p["array"] == where and p["what"].startswith(what) for p in problems), problems
    assert sum(p["array"] == where for p in problems) == 1, problems  # named once, not by two checks


def test_verify_passes_the_sound_jsae_store(stores):
    result = runner.invoke(app, ["verify", stores["jsae"], "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["ok"], result.output
