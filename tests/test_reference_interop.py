"""The same pair, on the same rows, gives the same numbers here and in the paper's own code.

Marked ``interop``: skipped unless ``JSAECTL_REFERENCE_PYTHON`` names a Python that imports the
reference package (``jacobian_saes``, from github.com/lucyfarnik/jacobian-saes; the fork
jugard99/jacobian-saes at commit b73cadb holds the author's last commit). It is not on PyPI
and pins transformer-lens 2.11 and transformers 4.46, so it lives in its own venv, and
tests/reference_side.py runs there. A recipe (CPU torch 2.13.0 from this machine's disk):

    git clone https://github.com/jugard99/jacobian-saes refcode && git -C refcode checkout b73cadb
    python3.11 -m venv refvenv && refvenv/bin/pip install torch==2.13.0 \\
        transformer-lens==2.11.0 transformers==4.46.1 jaxtyping safetensors einops
    # the reference imports wandb and calls wandb.Api() at import: a stub package `wandb` with a
    # no-op Api() on the path is enough; on Python < 3.12 its PEP 701 f-strings and PEP 695
    # `type` alias need rewriting at import (an import hook; the files stay untouched)
    echo "$PWD/refcode" > refvenv/lib/python3.11/site-packages/refcode.pth
    JSAECTL_REFERENCE_PYTHON=$PWD/refvenv/bin/python python -m pytest -m interop tests/test_reference_interop.py

The test exports a jsaectl-trained pair as ``--format jsae-pair``, has the reference load it
with both of its loaders, and compares, token by token on the same x rows: the TopK sets, J at
x (``run_sandwich``, what its eval runners and Figure 1 use), J at x̂ through its ``evals.py``
f_s path against ``--jacobian-at reconstruction``, and the loss terms of one
``training_forward_pass``. ``JSAECTL_INTEROP_JSAE=STORE`` runs it on that jsae store (e.g. the
bundled demo's) instead of the tests' tiny one.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from jsaectl.acts import Activations
from jsaectl.cli import app
from jsaectl.jsae import JSAE
from jsaectl.trained import load_jsae
from jsaectl.store import open_store

REF = os.environ.get("JSAECTL_REFERENCE_PYTHON", "")
# jsaectl's activation names -> TransformerLens's act_fn names
TL_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu", "quick_gelu": "gelu_fast"}


def _reference_importable() -> bool:
    if not REF:
        return False
    probe = subprocess.run([REF, "-c", "import jacobian_saes"], capture_output=True, timeout=300)
    return probe.returncode == 0


pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(not _reference_importable(),
                                 reason="the reference package is not importable (set JSAECTL_REFERENCE_PYTHON; see the docstring)")]
ROWS = 2048


def _sorted_block(J: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """J [N, k, k] with its rows and columns put in ascending latent order (the two codes list
    their active latents in different orders)."""
    r, c = np.argsort(rows, axis=1), np.argsort(cols, axis=1)
    J = np.take_along_axis(J, r[:, :, None], axis=1)
    return np.take_along_axis(J, c[:, None, :], axis=2)


@pytest.fixture(scope="module")
def jsae(jsae_store) -> str:
    return os.environ.get("JSAECTL_INTEROP_JSAE") or jsae_store


@pytest.fixture(scope="module")
def reference(jsae, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ref")
    result = CliRunner().invoke(app, ["export", jsae, "--format", "jsae-pair", "--out", str(root / "pair")])
    assert result.exit_code == 0, result.output
    meta = zarr.open_group(jsae, mode="r").attrs["jsaectl"]
    acts = Activations.open(meta["acts_store"])
    x = acts.rows("x", 0, ROWS).numpy()
    np.save(root / "x.npy", x)
    proc = subprocess.run([REF, str(Path(__file__).with_name("reference_side.py")), str(root / "pair"), str(root / "x.npy"),
                           str(root / "out.npz"), TL_ACT[meta["mlp"]["activation"]], str(meta["layer"])],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"ref": dict(np.load(root / "out.npz")), "x": torch.from_numpy(x), "meta": meta,
            "cfg": json.loads((root / "pair" / "cfg.json").read_text())}


def _ours(jsae_store: str, at: str) -> JSAE:
    jsae = load_jsae(open_store(jsae_store, "jsae"))
    return JSAE(jsae.sae_in, jsae.sae_out, jsae.mlp, at)


def test_both_reference_loaders_load_the_export(reference):
    assert bool(reference["ref"]["loaders_agree"])


@pytest.mark.parametrize("at", ["x", "reconstruction"])
def test_the_jacobian_per_token_equals_the_reference(jsae, reference, at):
    ref = reference["ref"]
    with torch.no_grad():
        out = _ours(jsae, at)(reference["x"], jacobian="value")
    idx_out_ref, J_ref, pre_ref = (ref["idx_out"], ref["J_x"], ref["pre_out"]) if at == "x" else \
        (ref["idx_out_hat"], ref["J_hat"], ref["pre_out_hat"])
    ours_in, ours_out = out.code_in.indices.numpy(), out.jac_out.indices.numpy()
    same_in = (np.sort(ours_in, 1) == np.sort(ref["idx_in"], 1)).all(1)
    same_out = (np.sort(ours_out, 1) == np.sort(idx_out_ref, 1)).all(1)
    assert same_in.mean() == 1.0 and same_out.mean() == 1.0, (same_in.mean(), same_out.mean())
    # The reference keeps rows whose kept TopK value is not positive (it differentiates the
    # output SAE's pre-activations); jsaectl zeroes them (ReLU's slope there is 0). Compare
    # with the reference's J masked the same way.
    J_ref = J_ref * (pre_ref > 0)[:, :, None]
    ours = _sorted_block(out.J.numpy(), ours_out, ours_in)
    theirs = _sorted_block(J_ref, idx_out_ref, ref["idx_in"])
    scale = float(np.abs(theirs).max())
    assert np.abs(ours - theirs).max() <= 1e-5 * max(scale, 1e-3)
    # The counts the paper's Figure 1 bars are made of: identical per token, except for entries
    # float32 rounding can put on either side of a threshold (within the tolerance above of it).
    tol, flipped = 1e-5 * max(scale, 1e-3), 0
    for t in (0.005, 0.01, 0.015, 0.02, 0.04):
        clear = np.abs(np.abs(theirs) - t) > tol  # [N, k, k]
        assert (((np.abs(ours) > t) & clear).sum((1, 2)) == ((np.abs(theirs) > t) & clear).sum((1, 2))).all()
        flipped += int(((np.abs(ours) > t) != (np.abs(theirs) > t)).sum())
    assert flipped <= 1e-4 * ours.size  # rounding flips are rare, not a systematic shift
    print(f"J at {at}: {ROWS} of {ROWS} tokens with identical active sets; max |ΔJ| {np.abs(ours - theirs).max():.2e} "
          f"(max |J| {scale:.3f}); {flipped} threshold flips in {5 * ours.size} comparisons; "
          f"{(pre_ref <= 0).sum()} non-positive kept output values")


def test_one_training_step_has_the_reference_loss(jsae, reference):
    ref, x, lam = reference["ref"], reference["x"], reference["meta"]["lam"]
    with torch.no_grad():
        out = _ours(jsae, "x")(x, jacobian="value")
    mse_in = torch.nn.functional.mse_loss(out.x_hat, x).item()
    mse_out = torch.nn.functional.mse_loss(out.y_hat, out.y).item()
    assert mse_in == pytest.approx(float(ref["mse"]), rel=1e-5)
    assert mse_out == pytest.approx(float(ref["mse2"]), rel=1e-5)
    masked = int((ref["pre_out"] <= 0).sum())
    if masked == 0:  # otherwise the reference's penalty also counts the rows jsaectl zeroes
        assert lam * out.jac_mean.item() == pytest.approx(float(ref["jacobian_loss"]), rel=1e-5)
        assert mse_in + mse_out + lam * out.jac_mean.item() == pytest.approx(float(ref["loss"]), rel=1e-5)
    print(f"loss terms: mse_in {mse_in:.7g} (reference {float(ref['mse']):.7g}), mse_out {mse_out:.7g} "
          f"({float(ref['mse2']):.7g}), λ·mean|J| {lam * out.jac_mean.item():.7g} ({float(ref['jacobian_loss']):.7g}); "
          f"{masked} masked rows")
