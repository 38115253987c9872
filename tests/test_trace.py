"""Asking a trained JSAE about a text: trace (what computes what on it), contrast (which latents
tell two texts apart), and maxact answering from a jacobian store's examples."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from jsaectl.acts import Activations
from jsaectl.cli import app
from jsaectl.harvest import HarvestConfig, harvest
from jsaectl.jacobian import JacobianConfig, jacobian
from jsaectl.jsae import active_pairs
from jsaectl.store import open_store
from jsaectl.trained import LoadedJSAE

runner = CliRunner()
SENTENCE = "The quick brown fox jumps over the lazy dog."
SHORT = "The quick brown fox jumps."  # fewer tokens than the tiny model's 32-token context


@pytest.fixture(scope="module")
def jac(jsae_store, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("tr") / "jac.zarr")
    return jacobian(JacobianConfig(jsae=jsae_store, tokens=4_000, out=out)).store


def _trace(*args: str, **kw) -> dict:
    result = runner.invoke(app, ["trace", *args, "--json"], **kw)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _harvested(text: str, gpt2_dir: Path, tmp_path: Path) -> tuple[Activations, int]:
    """The text harvested as one context (BOS + its tokens) in float32: the rows trace reads."""
    from transformers import AutoTokenizer

    n = len(AutoTokenizer.from_pretrained(gpt2_dir)(text, add_special_tokens=False)["input_ids"])
    (tmp_path / "s.txt").write_text(text)
    store = harvest(HarvestConfig(model=str(gpt2_dir), layer=1, dataset=str(tmp_path / "s.txt"), tokens=n + 1,
                                  context_size=n + 1, dtype="float32", out=str(tmp_path / "s.zarr"))).store
    return Activations.open(store), n


def test_per_token_j_and_latents_are_those_of_the_jsae_on_the_harvested_rows(jsae_store, gpt2_dir, tmp_path):
    acts, n = _harvested(SHORT, gpt2_dir, tmp_path)
    assert n < 31
    got = _trace(jsae_store, "--text", SHORT, "--top", "16", "--connections", "5")  # k = 4: all 16 entries
    assert got["n_tokens"] == n and got["jacobian"] is None and "computed from" in got["labels"]
    model = LoadedJSAE.open(jsae_store)
    x = acts.read("x", 1, n + 1)  # position 0 is BOS, which trace (like training) leaves out
    out = model.jsae(torch.from_numpy(x), None, jacobian="value")
    for b, token in enumerate(got["tokens"]):
        expected = {(int(out.code_in.indices[b, j]), int(out.jac_out.indices[b, i])): float(out.J[b, i, j])
                    for i in range(4) for j in range(4) if out.J[b, i, j] != 0}
        assert {(e["input"], e["output"]): e["J"] for e in token["entries"]} == pytest.approx(expected, abs=1e-6), b
        assert sorted(token["active_in"]) == sorted(int(i) for i, v in zip(out.code_in.indices[b], out.code_in.values[b]) if v > 0)
    # the active latents are those maxact sees on the same context
    latent = got["tokens"][2]["active_in"][0]
    seen = runner.invoke(app, ["maxact", jsae_store, "--acts", acts.url, "--latent", str(latent), "--examples", "40",
                               "--context", "0", "--json"])
    assert seen.exit_code == 0, seen.output
    rows = sorted(e["row"] - 1 for e in json.loads(seen.stdout)["latents"][0]["examples"])
    assert rows == [t["position"] for t in got["tokens"] if latent in t["active_in"]]


def test_connections_over_the_text_add_up_its_tokens(jac):
    got = _trace(jac, "--text", SENTENCE + " " + SENTENCE, "--top", "16", "--connections", "50")
    assert got["jacobian"] == jac and got["labels"].startswith("from ")
    for c in got["connections"][:10]:
        per_token = [e["J"] for t in got["tokens"] for e in t["entries"] if (e["input"], e["output"]) == (c["input"], c["output"])]
        assert c["sum_abs"] == pytest.approx(sum(map(abs, per_token)), rel=1e-5) and c["count"] == len(per_token)
    sums = [c["sum_abs"] for c in got["connections"]]
    assert sums == sorted(sums, reverse=True)


def test_long_text_is_cut_into_contexts_like_harvest(jac):
    got = _trace(jac, "--text", " ".join([SENTENCE] * 30), "--top", "2")  # more than a 32-token context
    assert got["n_tokens"] > 100 and [t["position"] for t in got["tokens"]] == list(range(got["n_tokens"]))


def test_text_from_a_file_and_stdin(jac, tmp_path):
    (tmp_path / "t.txt").write_text(SENTENCE)
    a = _trace(jac, "--file", str(tmp_path / "t.txt"))
    b = _trace(jac, "--text", "-", input=SENTENCE)
    assert a["tokens"] == b["tokens"]


def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)


def test_the_html_page_escapes_tokens_and_works_in_a_browser(jac, tmp_path):
    page = tmp_path / "trace.html"
    hostile = "<script>alert(1)</script> & the dog"
    result = runner.invoke(app, ["trace", jac, "--text", hostile, "--html", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert html.count("<script") == 2 and "&lt;" in html  # our two scripts; the text's '<' escaped wherever it went
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium here (Debian: apt-get install chromium); the page's browser test did not run")
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", f"--user-data-dir={tmp_path / 'p'}", "--virtual-time-budget=3000",
                           "--dump-dom", f"file://{page}#selftest"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-ready="1"' in dom and int(dom.split('data-selftest="')[1].split('"')[0]) >= 1
    assert ">&lt;</span>" in dom and dom.count("<script") == 2


@pytest.mark.parametrize("args, code, says", [
    (["--text", "   "], 1, "the text is empty"),
    (["--text", "<|endoftext|><|endoftext|>"], 1, "special"),
    ([], 2, "--text or --file"),
    (["--text", "a", "--file", "x"], 2, "--text or --file"),
])
def test_bad_text_is_one_line(jac, args, code, says):
    result = runner.invoke(app, ["trace", jac, *args])
    assert result.exit_code == code and result.stdout == "" and says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_non_utf8_file_is_one_line(jac, tmp_path):
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00bad")
    result = runner.invoke(app, ["trace", jac, "--file", str(tmp_path / "b.txt")])
    assert result.exit_code == 1 and "not UTF-8" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# contrast


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A .jsonl of English and German documents, labelled by language."""
    from conftest import _TEXT

    en, de = [], []
    for line in _TEXT.replace("\n", " ").split(". "):
        (de if any(w in line for w in ("Der ", "Die ", "die ", "es war")) else en).append(line)
    path = tmp_path_factory.mktemp("lab") / "docs.jsonl"
    with open(path, "w") as f:
        for i in range(300):
            for lang, lines in (("en", en), ("de", de)):
                f.write(json.dumps({"text": " ".join(lines[(i + j) % len(lines)] for j in range(3)), "lang": lang}) + "\n")
    return path


def test_contrast_counts_are_counts_made_by_hand(jsae_store, gpt2_dir, labelled, tmp_path):
    got = runner.invoke(app, ["contrast", jsae_store, "--a", f"{labelled}:lang=de", "--b", f"{labelled}:lang=en",
                              "--tokens", "3200", "--top", "5", "--json"])
    assert got.exit_code == 0, got.output
    result = json.loads(got.stdout)
    model = LoadedJSAE.open(jsae_store)
    counts = {}
    for side, lang in (("a", "de"), ("b", "en")):
        acts = Activations.open(harvest(HarvestConfig(model=str(gpt2_dir), layer=1, dataset=f"{labelled}:lang={lang}",
                                                      tokens=3200, context_size=32, dtype="float32",
                                                      out=str(tmp_path / f"{lang}.zarr"))).store)
        keep = acts.keep(0, acts.n_tokens, False)
        x = torch.from_numpy(acts.read("x", 0, acts.n_tokens)[keep])
        out = model.jsae(x, None, jacobian="value")
        counts[side] = (out, int(keep.sum()))
        assert result[side]["tokens"] == int(keep.sum())
    for side, code in (("inputs", "code_in"), ("outputs", "code_out")):
        for x in result[side]:
            by_hand = {s: int(((getattr(o, code).indices == x["latent"]) & (getattr(o, code).values > 0)).sum())
                       for s, (o, _) in counts.items()}
            assert (x["count_a"], x["count_b"]) == (by_hand["a"], by_hand["b"])
            na, nb = counts["a"][1], counts["b"][1]
            assert x["rate_a"] == pytest.approx(by_hand["a"] / na) and x["rate_b"] == pytest.approx(by_hand["b"] / nb)
            a, b, c, d = by_hand["a"] + 0.5, na - by_hand["a"] + 0.5, by_hand["b"] + 0.5, nb - by_hand["b"] + 0.5
            lor = math.log(a * d / (b * c))
            assert x["log_odds"] == pytest.approx(lor, abs=1e-4)
            assert x["lower"] == pytest.approx(lor - 1.96 * math.sqrt(1 / a + 1 / b + 1 / c + 1 / d), abs=1e-4)
    lowers = [x["lower"] for x in result["outputs"]]
    assert lowers == sorted(lowers, reverse=True)
    assert all(o["computed_by"] for o in result["outputs"][:2]) and "over A's" in result["computed_by"]
    # What computes each output latent, measured on A: the full J of A's tokens, summed by hand.
    full, na = counts["a"]
    both, _ = active_pairs(full.code_in, full.jac_out, model.n_latents)
    for o in result["outputs"]:
        into = both & (full.jac_out.indices == o["latent"])[:, :, None]  # [B, k_out, k_in]
        inputs, J = full.code_in.indices[:, None, :].expand_as(into)[into], full.J[into].double()
        for c in o["computed_by"]:
            mine = inputs == c["input"]
            assert c["tokens"] == int(mine.sum()) > 0
            assert c["strength"] == pytest.approx(float(J[mine].abs().sum()) / na, rel=1e-4)
            assert c["mean_J"] == pytest.approx(float(J[mine].mean()), rel=1e-4, abs=1e-7)
        strengths = {int(i): float(J[inputs == i].abs().sum()) / na for i in inputs.unique()}
        best = sorted(strengths.values(), reverse=True)[: len(o["computed_by"])]
        assert [c["strength"] for c in o["computed_by"]] == pytest.approx(best, rel=1e-4)


def test_contrast_with_a_jacobian_store_uses_its_connections(jac, labelled):
    got = runner.invoke(app, ["contrast", jac, "--a", f"{labelled}:lang=de", "--b", f"{labelled}:lang=en", "-n", "1k",
                              "--top", "3", "--json"])
    assert got.exit_code == 0, got.output
    result = json.loads(got.stdout)
    assert result["computed_by"].startswith("the connections of")
    from jsaectl.connections import query
    from jsaectl.store import open_store

    o = result["outputs"][0]
    assert [c["input"] for c in o["computed_by"]] == [c.input for c in query(open_store(jac, "jacobian"), outputs=(o["latent"],), top=8)]


@pytest.mark.parametrize("a, b, code, says", [
    ("{p}:lang=de", "{p}:lang=de", 2, "the same source"),
    ("{p}:lang=fr", "{p}:lang=en", 1, "lang is one of de, en"),
    ("{p}:language=de", "{p}:lang=en", 1, "no document has a language column"),
    ("{empty}", "{p}:lang=en", 1, "holds no text"),
])
def test_contrast_refusals_are_one_line(jsae_store, labelled, tmp_path, a, b, code, says):
    (tmp_path / "empty.jsonl").write_text("")
    fmt = {"p": labelled, "empty": tmp_path / "empty.jsonl"}
    result = runner.invoke(app, ["contrast", jsae_store, "--a", a.format(**fmt), "--b", b.format(**fmt)])
    assert result.exit_code == code and result.stdout == "" and says in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# maxact answers from a jacobian store


def test_maxact_answers_from_the_jacobian_store_and_equals_a_scan(jac):
    from jsaectl.store import open_store

    store = open_store(jac, "jacobian")
    n = store.meta["n_tokens"] + 4_000 // 32  # rows scanned by the analysis: BOS rows among them
    pair = (int(store.array("examples/pair_input")[3]), int(store.array("examples/pair_output")[3]))
    for args in (["--latent", "3", "--latent", "7"], ["--side", "out", "--top-latents", "3"], ["--connection", f"{pair[0]}:{pair[1]}"]):
        fast = runner.invoke(app, ["maxact", jac, *args, "--examples", "5", "--json"])
        slow = runner.invoke(app, ["maxact", jac, *args, "--examples", "5", "--tokens", str(n), "--json"])
        assert fast.exit_code == slow.exit_code == 0, fast.output + slow.output
        assert "which keeps them" in fast.stderr and "a scan of" in slow.stderr
        a, b = json.loads(fast.stdout), json.loads(slow.stdout)
        for x, y in zip(a["latents"], b["latents"]):
            assert (x["latent"], x["count"]) == (y["latent"], y["count"])
            assert [e["row"] for e in x["examples"]] == [e["row"] for e in y["examples"]]
            assert np.allclose([e["activation"] for e in x["examples"]], [e["activation"] for e in y["examples"]], atol=1e-5)
    more = runner.invoke(app, ["maxact", jac, "--latent", "3", "--examples", "30"])
    assert more.exit_code == 0 and "keeps 20 examples per latent" in more.stderr


def test_maxact_on_a_jacobian_store_of_held_out_text_shows_that_text(jsae_store, gpt2_dir, corpus, tmp_path):
    # The jacobian store's examples are rows of the activations it analysed, not of the JSAE's training ones.
    held_text = tmp_path / "held.jsonl"
    held_text.write_text("\n".join(Path(corpus).read_text().splitlines()[::-1]) + "\n")
    held = harvest(HarvestConfig(model=str(gpt2_dir), layer=1, dataset=str(held_text), tokens=4_000, context_size=32,
                                 dtype="float32", out=str(tmp_path / "held.zarr"))).store
    jac = jacobian(JacobianConfig(jsae=jsae_store, acts=held, tokens=4_000, out=str(tmp_path / "jac.zarr"))).store
    n = open_store(jac, "jacobian").meta["n_tokens"] + 4_000 // 32
    args = ["--side", "out", "--top-latents", "2", "--examples", "5", "--json"]
    fast = runner.invoke(app, ["maxact", jac, *args])
    slow = runner.invoke(app, ["maxact", jac, *args, "--acts", held, "--tokens", str(n)])
    assert fast.exit_code == slow.exit_code == 0, fast.output + slow.output
    assert "which keeps them" in fast.stderr and "a scan of" in slow.stderr
    a, b = (json.loads(r.stdout)["latents"] for r in (fast, slow))
    assert sum(len(x["examples"]) for x in a) > 0
    for x, y in zip(a, b, strict=True):
        assert [(e["row"], e["tokens"]) for e in x["examples"]] == [(e["row"], e["tokens"]) for e in y["examples"]]
        assert np.allclose([e["activation"] for e in x["examples"]], [e["activation"] for e in y["examples"]], atol=1e-5)
