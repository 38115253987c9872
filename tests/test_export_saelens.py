"""The saelens and sparsify exports, loaded by the real packages (sae-lens 6.x, eai-sparsify):
their encode/decode must equal jsaectl's on random inputs.

Marked ``interop`` and skipped where the packages are not installed, which keeps them out of
CI (installing sae-lens and its TransformerLens stack takes ~1.5 min). In a separate venv:

    python -m venv /tmp/venv-saelens && . /tmp/venv-saelens/bin/activate
    pip install torch==2.13.0 && pip install sae-lens eai-sparsify pytest pytest-timeout && pip install .
    python -m pytest tests/test_export_saelens.py

Last run 2026-11-26 with sae-lens 6.54.12 and eai-sparsify 1.3.3: 3 passed.
"""

from __future__ import annotations

import json

import pytest
import torch

from jsaectl.export import ExportConfig, export, sparsify_hookpoint
from jsaectl.trained import load_sae
from jsaectl.store import open_store

pytestmark = pytest.mark.interop

# Tight: the same float32 products, only summed by different kernels.
TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def ours(jsae_store):
    store = open_store(jsae_store, "jsae")
    return {side: load_sae(store, f"sae_{side}") for side in ("in", "out")}, store.meta


@pytest.fixture(scope="module")
def x(ours) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    d = ours[0]["in"].d_in
    return 2 * torch.randn(1024, d, generator=g) + torch.randn(d, generator=g)


def test_sae_lens_loads_the_export_and_computes_what_jsaectl_computes(jsae_store, ours, x, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens import SAE, TopKSAE

    saes, meta = ours
    out = tmp_path / "saelens"
    export(ExportConfig(store=jsae_store, format="saelens", out=str(out)))
    for side, hook in (("in", "mlp.hook_in"), ("out", "mlp.hook_out")):
        sae = SAE.load_from_disk(out / f"sae_{side}", device="cpu")
        assert isinstance(sae, TopKSAE), type(sae)
        assert (sae.cfg.k, sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.apply_b_dec_to_input) == (meta["k"], meta["d_model"],
                                                                                       meta["n_latents"], False)
        assert sae.cfg.metadata.hook_name == f"blocks.{meta['layer']}.{hook}"
        assert sae.cfg.metadata.model_name == meta["model"]["name"] and sae.cfg.metadata.context_size == 32
        ref = saes[side]
        with torch.no_grad():
            feats = sae.encode(x)
            torch.testing.assert_close(feats, ref.encode_dense(x), **TOL)
            code = ref.encode(x)
            torch.testing.assert_close(sae.decode(feats), ref.decode(code.values, code.indices), **TOL)
            torch.testing.assert_close(sae(x), ref.decode(code.values, code.indices), **TOL)
        assert (feats > 0).sum(-1).float().mean() > 1
        # A copy saved by sae-lens itself reloads to the same SAE (our cfg survives its round trip).
        sae.save_model(tmp_path / f"resaved_{side}")
        again = json.loads((tmp_path / f"resaved_{side}" / "cfg.json").read_text())
        assert again["metadata"]["jsaectl"]["side"] == side and again["architecture"] == "topk"
    assert sae_lens.__version__.split(".")[0] == "6"


def test_the_hook_names_read_what_jsaectl_trained_on(jsae_store, acts_store, gpt2_dir, ours, tmp_path):
    """Attached to the model by its hook name (TransformerLens 3's bridge), each exported SAE
    sees the activations jsaectl harvested and encodes them as jsaectl does."""
    sae_lens = pytest.importorskip("sae_lens")
    Bridge = getattr(sae_lens, "SAETransformerBridge", None)
    if Bridge is None:
        pytest.skip("this sae-lens has no SAETransformerBridge (needs transformer-lens 3)")
    from sae_lens import SAE

    from jsaectl.acts import Activations

    saes, _ = ours
    out = tmp_path / "saelens"
    export(ExportConfig(store=jsae_store, format="saelens", out=str(out)))
    acts = Activations.open(acts_store)
    n = 4 * acts.context_size
    tokens = torch.from_numpy(acts.tokens(0, n).astype("int64")).view(4, acts.context_size)
    x = acts.rows("x", 0, n)
    targets = {"in": x, "out": acts.mlp().forward(x)}
    model = Bridge.boot_transformers(str(gpt2_dir), device="cpu")
    for side in ("in", "out"):
        sae = SAE.load_from_disk(out / f"sae_{side}")
        model.add_sae(sae)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
        model.reset_saes()
        seen = cache[model.get_sae_hook_name(sae, "hook_sae_input")].reshape(n, -1)
        # The bridge runs attention eagerly, the harvest did not: equal up to kernel rounding.
        torch.testing.assert_close(seen, targets[side], rtol=1e-4, atol=1e-5)
        feats = cache[model.get_sae_hook_name(sae)].reshape(n, -1)
        torch.testing.assert_close(feats, saes[side].encode_dense(seen), **TOL)


def test_sparsify_loads_the_export_and_computes_what_jsaectl_computes(jsae_store, ours, x, tmp_path):
    sparsify = pytest.importorskip("sparsify")
    SparseCoder = getattr(sparsify, "SparseCoder", None)
    if SparseCoder is None:
        pytest.skip("the installed `sparsify` is not EleutherAI's eai-sparsify")
    saes, meta = ours
    out = tmp_path / "sparsify"
    export(ExportConfig(store=jsae_store, format="sparsify", out=str(out)))
    loaded = SparseCoder.load_many(str(out), local=True)
    assert sorted(loaded) == sorted(sparsify_hookpoint(meta["layer"], side) for side in ("in", "out"))
    for side in ("in", "out"):
        coder = SparseCoder.load_from_disk(out / sparsify_hookpoint(meta["layer"], side))
        ref = saes[side]
        assert (coder.num_latents, coder.cfg.k, coder.d_in) == (ref.n_latents, ref.k, ref.d_in)
        with torch.no_grad():
            top_acts, top_indices, _ = coder.encode(x)
            dense = torch.zeros(len(x), coder.num_latents).scatter_(1, top_indices, top_acts)
            torch.testing.assert_close(dense, ref.encode_dense(x), **TOL)
            code = ref.encode(x)
            torch.testing.assert_close(coder.decode(top_acts, top_indices), ref.decode(code.values, code.indices), **TOL)
            assert ref.b_dec.abs().max() > 0  # so the b_dec folding was exercised
