"""harvest: the stored x (and y) are what hooks on the real modules see, for every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from conftest import FAMILIES
from jsaectl.data import iter_contexts, iter_pieces
from jsaectl.errors import ModelError
from jsaectl.harvest import HarvestConfig, harvest
from jsaectl.models import decoder_layers, load_model, locate_mlp


def _reference(model_dir, layer: int, tokens: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y captured by plain hooks on the real MLP module, over a full forward pass."""
    loaded = load_model(str(model_dir))
    decoder = decoder_layers(loaded.model)[layer]
    mlp = getattr(decoder, "mlp", None) or getattr(decoder, "feed_forward", None)
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, value: torch.Tensor) -> None:
        seen.setdefault(name, value[0] if isinstance(value, tuple) else value)

    if mlp is None:  # OPT: fc1/fc2 in the layer
        h1 = decoder.fc1.register_forward_pre_hook(lambda m, a: keep("x", a[0]))
        h2 = decoder.fc2.register_forward_hook(lambda m, a, o: keep("y", o))
    else:
        h1 = mlp.register_forward_pre_hook(lambda m, a: keep("x", a[0]))
        # Bloom's MLP module adds the residual itself; its MLP output is dense_4h_to_h's.
        out = mlp.dense_4h_to_h if type(mlp).__name__ == "BloomMLP" else mlp
        h2 = out.register_forward_hook(lambda m, a, o: keep("y", o))
    with torch.no_grad():
        loaded.model(input_ids=torch.from_numpy(tokens).long())
    h1.remove(), h2.remove()
    return seen["x"].reshape(-1, seen["x"].shape[-1]), seen["y"].reshape(-1, seen["y"].shape[-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_stored_x_and_y_equal_hooks_on_the_real_module(family, model_factory, corpus, tmp_path):
    model_dir = model_factory(family)
    cfg = HarvestConfig(model=str(model_dir), layer=1, dataset=str(corpus), tokens=8 * 32, context_size=32,
                        batch_size=3, dtype="float32", with_output=True, out=str(tmp_path / "acts.zarr"))
    result = harvest(cfg)
    assert result.complete and result.n_tokens == 256
    g = zarr.open_group(result.store, mode="r")
    tokens = g["tokens"][:].reshape(-1, 32)
    x_ref, y_ref = _reference(model_dir, 1, tokens)
    torch.testing.assert_close(torch.from_numpy(g["x"][:]), x_ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(g["y"][:]), y_ref.float(), rtol=1e-5, atol=1e-5)
    assert (g["position"][:] == np.tile(np.arange(32), 8)).all()


def test_tokens_are_the_documented_context_stream(gpt2_dir, corpus, tmp_path):
    cfg = HarvestConfig(model=str(gpt2_dir), layer=0, dataset=str(corpus), tokens=10 * 16, context_size=16,
                        out=str(tmp_path / "a.zarr"))
    result = harvest(cfg)
    g = zarr.open_group(result.store, mode="r")
    loaded = load_model(str(gpt2_dir))
    expected = np.stack([c for _, c in zip(range(10), iter_contexts(iter_pieces(str(corpus)), loaded.tokenizer, 16))])
    assert (g["tokens"][:].reshape(10, 16) == expected).all()
    assert (expected[:, 0] == loaded.tokenizer.bos_token_id).all()
    meta = g.attrs["jsaectl"]
    assert meta["kind"] == "activations" and meta["complete"] and meta["format"] == 1
    assert meta["model"]["name"] == str(gpt2_dir) and meta["layer"] == 0
    assert g["vocab"][int(expected[0, 1])] == loaded.tokenizer.decode([int(expected[0, 1])])


def test_mlp_weights_reproduce_the_module(model_factory):
    for family in FAMILIES:
        loaded = load_model(str(model_factory(family)))
        site = locate_mlp(loaded.model, 2)
        assert site.weights.gated == (family in ("llama", "gemma2", "phi3", "qwen2")), family


def test_mixture_of_experts_is_refused(model_factory, tokenizer_dir, tmp_path):
    from conftest import build_model

    path = build_model("mixtral", tmp_path / "moe", tokenizer_dir)
    loaded = load_model(str(path))
    with pytest.raises(ModelError, match="mixture-of-experts"):
        locate_mlp(loaded.model, 0)


def test_stores_at_fsspec_urls(gpt2_dir, corpus, tmp_path):
    from jsaectl.acts import Activations

    for url, printed in (("memory://bucket/acts.zarr", "memory://bucket/acts.zarr"),
                         (f"file://{tmp_path}/acts.zarr", f"{tmp_path}/acts.zarr")):
        result = harvest(HarvestConfig(model=str(gpt2_dir), layer=1, dataset=str(corpus), tokens=2000, context_size=32, out=url))
        assert result.store == printed and result.complete
        acts = Activations.open(url)
        assert acts.n_tokens == result.n_tokens and acts.rows("x", 0, 5).shape == (5, 32)


def test_bfloat16_storage_and_a_bfloat16_model(gpt2_dir, corpus, tmp_path):
    from jsaectl.acts import Activations

    common = dict(model=str(gpt2_dir), layer=1, dataset=str(corpus), tokens=1024, context_size=32)
    ref = harvest(HarvestConfig(**common, dtype="float32", out=str(tmp_path / "f32.zarr")))
    bf = harvest(HarvestConfig(**common, dtype="bfloat16", out=str(tmp_path / "bf16.zarr")))
    x32 = Activations.open(ref.store).rows("x", 0, 1024)
    xbf = Activations.open(bf.store).rows("x", 0, 1024)
    assert zarr.open_group(bf.store)["x"].dtype == np.uint16
    torch.testing.assert_close(xbf, x32.bfloat16().float(), rtol=0, atol=0)
    # A model run in bfloat16 passes the MLP check with its looser tolerance, and records it.
    half = harvest(HarvestConfig(**common, model_dtype="bfloat16", out=str(tmp_path / "m16.zarr")))
    meta = zarr.open_group(half.store).attrs["jsaectl"]
    assert 0 < meta["mlp"]["reconstruction_rel_error"] < 5e-2 and meta["model"]["dtype"] == "bfloat16"
