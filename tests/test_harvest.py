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
from jsaectl.models import MLPTap, check_reconstruction, decoder_layers, load_model, locate_mlp


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
    assert meta["kind"] == "activations" and meta["complete"] and meta["format"] == 2
    assert meta["model"]["name"] == str(gpt2_dir) and meta["layer"] == 0
    assert g["vocab"][int(expected[0, 1])] == loaded.tokenizer.decode([int(expected[0, 1])])


def test_mlp_weights_reproduce_the_module(model_factory):
    """The extracted weights and activation recompute each family's MLP on inputs it never saw
    (random, at 3x the usual scale): the model runs with its MLP input replaced by them."""
    g = torch.Generator().manual_seed(0)
    for family in FAMILIES:
        loaded = load_model(str(model_factory(family)))
        site = locate_mlp(loaded.model, 2)
        assert site.weights.gated == (family in ("llama", "gemma2", "phi3", "qwen2")), family
        seen = {}

        def replace_input(module, args, kwargs):  # in the shape the module gets it ([B*T, d] for OPT)
            x = seen.setdefault("x", 3 * torch.randn(args[0].shape, generator=g))
            return (x, *args[1:]), kwargs

        def keep_output(module, args, output):
            seen.setdefault("y", output[0] if isinstance(output, tuple) else output)

        hooks = [site.input_module.register_forward_pre_hook(replace_input, with_kwargs=True),
                 site.output_module.register_forward_hook(keep_output)]
        with torch.no_grad():
            loaded.model(input_ids=torch.randint(0, 100, (2, 16), generator=g))
        for h in hooks:
            h.remove()
        x = seen["x"].reshape(-1, site.weights.d_model)
        torch.testing.assert_close(site.weights.forward(x), seen["y"].reshape(x.shape),
                                   rtol=1e-4, atol=1e-5, msg=family)


def test_a_wrong_reconstruction_is_refused_before_anything_is_stored(gpt2_dir):
    loaded = load_model(str(gpt2_dir))
    site = locate_mlp(loaded.model, 1)
    tap = MLPTap(loaded.model, site)
    x, y = tap(torch.randint(0, 100, (2, 16)), with_output=True)
    assert check_reconstruction(site, x, y, "float32") < 1e-5
    site.weights.W_out[0, 0] += 0.5  # an extraction that got one weight wrong
    with pytest.raises(ModelError, match=r"does not match gpt2 layer 1's real MLP"):
        check_reconstruction(site, x, y, "float32")


def test_the_forward_pass_stops_inside_the_layer(gpt2_dir):
    loaded = load_model(str(gpt2_dir))
    site = locate_mlp(loaded.model, 1)
    calls = {"later block": 0, "lm head": 0}
    hooks = [decoder_layers(loaded.model)[2].register_forward_hook(lambda *a: calls.__setitem__("later block", calls["later block"] + 1)),
             loaded.model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("lm head", calls["lm head"] + 1))]
    tap = MLPTap(loaded.model, site)
    tap(torch.randint(0, 100, (2, 16)), with_output=True)
    tap(torch.randint(0, 100, (2, 16)), with_output=False)
    assert calls == {"later block": 0, "lm head": 0}
    tap.close()
    with torch.no_grad():
        loaded.model(input_ids=torch.randint(0, 100, (2, 16)))
    assert calls == {"later block": 1, "lm head": 1}  # the hooks themselves work
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("family", ["mixtral", "granitemoe"])
def test_mixture_of_experts_is_refused(family, tokenizer_dir, tmp_path):
    from conftest import build_model

    path = build_model(family, tmp_path / "moe", tokenizer_dir)
    loaded = load_model(str(path))
    with pytest.raises(ModelError, match="mixture-of-experts"):
        locate_mlp(loaded.model, 0)


def test_random_init_is_the_architecture_redrawn_from_its_seed(gpt2_dir, corpus, tmp_path):
    from jsaectl.acts import Activations

    common = dict(model=str(gpt2_dir), layer=1, dataset=str(corpus), tokens=1024, context_size=32, dtype="float32")
    runs = {name: Activations.open(harvest(HarvestConfig(**common, **kw, out=str(tmp_path / f"{name}.zarr"))).store)
            for name, kw in (("trained", {}), ("r0", dict(random_init=True, seed=0)), ("r0b", dict(random_init=True, seed=0)),
                             ("r1", dict(random_init=True, seed=1)),
                             ("hf", dict(random_init=True, seed=0, init_scheme="hf")))}
    x = {name: a.rows("x", 0, 1024) for name, a in runs.items()}
    mlps = {name: a.mlp() for name, a in runs.items()}
    w = {name: m.W_in for name, m in mlps.items()}
    assert torch.equal(x["r0"], x["r0b"]) and torch.equal(w["r0"], w["r0b"])  # reproducible from the seed
    assert not torch.allclose(w["r0"], w["r1"]) and not torch.allclose(w["r0"], w["trained"])
    assert not torch.allclose(x["r0"], x["trained"])
    # The default, the reference code's scheme (TransformerLens init_weights): weight matrices from
    # N(0, 0.8/√d_model), d_model 32 here; biases (and norm gains) keep their trained values.
    assert abs(float(w["r0"].std()) - 0.8 / 32**0.5) < 0.015
    assert torch.equal(mlps["r0"].b_in, mlps["trained"].b_in)
    assert not torch.equal(mlps["trained"].b_in, torch.zeros_like(mlps["trained"].b_in))
    # --init-scheme hf: GPT-2's own initialiser, N(0, 0.02) linears, zero biases.
    assert abs(float(w["hf"].std()) - 0.02) < 0.003 and torch.equal(mlps["hf"].b_in, torch.zeros_like(mlps["hf"].b_in))
    prov = runs["r1"].meta["model"]
    assert prov["random_init"] is True and prov["seed"] == 1 and prov["init_scheme"] == "tl"
    assert runs["hf"].meta["model"]["init_scheme"] == "hf" and runs["trained"].meta["model"]["random_init"] is False
    assert (runs["r0"].tokens(0, 1024) == runs["trained"].tokens(0, 1024)).all()  # the same text


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


def test_compression_is_a_choice_and_both_read_alike(gpt2_dir, corpus, tmp_path):
    from jsaectl.acts import Activations

    common = dict(model=str(gpt2_dir), layer=1, dataset=str(corpus), tokens=2048, context_size=32)
    stores = {c: harvest(HarvestConfig(**common, compression=c, out=str(tmp_path / f"{c}.zarr"))).store for c in ("none", "zstd")}
    codecs = {c: [k["name"] for k in zarr.open_group(s, mode="r")["x"].metadata.to_dict()["codecs"]] for c, s in stores.items()}
    assert codecs == {"none": ["bytes", "crc32c"], "zstd": ["bytes", "zstd", "crc32c"]}
    assert HarvestConfig().compression == "none"
    a, b = (Activations.open(s) for s in stores.values())
    assert a.meta["config"]["compression"] == "none" and b.meta["config"]["compression"] == "zstd"
    assert torch.equal(a.rows("x", 0, 2048), b.rows("x", 0, 2048))
