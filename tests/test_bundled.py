"""The offline default: the bundled corpus and model, and harvest with no MODEL and no --dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import zarr

from jsaectl.data import BUNDLED_HELDOUT, bundled_corpus_path
from jsaectl.models import bundled_model_path

ASSETS = Path(bundled_model_path()).parent


def _docs(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_corpus_is_small_mixed_labelled_and_sourced():
    sample, heldout = _docs(bundled_corpus_path()), _docs(bundled_corpus_path(BUNDLED_HELDOUT))
    total = sum(os.path.getsize(bundled_corpus_path(n)) for n in ("jsaectl-sample", BUNDLED_HELDOUT))
    assert total <= 3_000_000
    for docs in (sample, heldout):
        assert all(set(d) >= {"text", "lang", "source", "register"} for d in docs)
        by_lang = {lang: sum(len(d["text"]) for d in docs if d["lang"] == lang) for lang in ("en", "de")}
        assert min(by_lang.values()) > 0.4 * max(by_lang.values())
    assert {d["lang"] for d in sample[:4]} == {"en", "de"}  # any prefix mixes the languages
    assert len({d["register"] for d in sample}) >= 5
    assert not {d["text"] for d in sample} & {d["text"] for d in heldout}
    sources = (ASSETS / "corpus" / "SOURCES.md").read_text()
    assert all(d["source"] in sources for d in sample + heldout) and "licence" in sources.lower()


def test_every_source_package_ships_its_copyright_and_the_copyleft_texts():
    import gzip
    import re

    folder = ASSETS / "corpus" / "licences"
    sources = (ASSETS / "corpus" / "SOURCES.md").read_text()
    rows = [line.split("|") for line in sources.splitlines() if line.startswith("| ") and "(" in line]
    packages = {pkg for row in rows for pkg in re.findall(r"([a-z0-9][a-z0-9.+-]+) \(\d[^)]*\)", row[2])}
    assert len(packages) >= 15
    for pkg in packages:
        text = gzip.decompress((folder / f"{pkg}.copyright.gz").read_bytes()).decode()
        assert "Copyright" in text or "copyright" in text, pkg
    assert "GNU GENERAL PUBLIC LICENSE" in gzip.decompress((folder / "GPL-3.gz").read_bytes()).decode()
    assert "Mozilla Public License" in gzip.decompress((folder / "MPL-2.0.gz").read_bytes()).decode()
    assert "Attribution-ShareAlike 4.0" in gzip.decompress((folder / "debian-paketmanagement-buch.copyright.gz").read_bytes()).decode()


def test_model_is_small_and_loads_offline():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = bundled_model_path()
    assert sum(p.stat().st_size for p in Path(path).iterdir()) <= 8_000_000
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "gpt_neox" and model.config.num_hidden_layers == 4
    assert tok.bos_token_id == tok.eos_token_id == 0
    assert "Hund" in tok.decode(tok("der Hund", add_special_tokens=False)["input_ids"])


def test_harvest_with_no_model_and_no_dataset_works_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "jsaectl", "harvest", "--tokens", "20k"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    store = proc.stdout.strip()
    assert store.startswith(str(tmp_path / "runs" / "jsaectl-demo-L2-"))
    g = zarr.open_group(store, mode="r")
    meta = g.attrs["jsaectl"]
    assert meta["complete"] and meta["layer"] == 2 and meta["model"]["name"] == "jsaectl-demo"
    assert meta["config"]["dataset"] == "jsaectl-sample" and g["x"].shape[1] == 192
    text = "".join(str(t) for t in g["vocab"][g["tokens"][:20000]])
    assert " der " in text and " the " in text
