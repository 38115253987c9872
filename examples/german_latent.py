"""Find an output latent that fires on German text, and show which input latents compute it.

    python examples/german_latent.py JSAE JACOBIAN [--tokens 100k]

JSAE and JACOBIAN are stores made from the bundled model and corpus (e.g. by
examples/pipeline.sh). The bundled corpus labels every document with its language, so the
script harvests the German and the English documents separately (with the JSAE's own model
and layer), measures how often each output latent fires in each language, takes the latents
that fire on German and (almost) never on English, and prints, for the most German one:
the input latents that compute it (from the jacobian store, with their labels) and
max-activating contexts of the output latent and of its strongest input.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch

from jsaectl.data import bundled_corpus_path
from jsaectl.store import open_store
from jsaectl.harvest import HarvestConfig, harvest
from jsaectl.connections import query
from jsaectl.maxact import MaxactConfig, maxact
from jsaectl.trained import LoadedJSAE
from jsaectl.units import parse_count


def split_by_language(folder: str) -> dict[str, str]:
    paths = {lang: os.path.join(folder, f"{lang}.jsonl") for lang in ("en", "de")}
    files = {lang: open(path, "w") for lang, path in paths.items()}
    with open(bundled_corpus_path()) as f:
        for line in f:
            lang = json.loads(line).get("lang")
            if lang in files:
                files[lang].write(line)
    for f in files.values():
        f.close()
    return paths


@torch.no_grad()
def firing_rates(jsae: str, acts: str, tokens: int) -> torch.Tensor:
    """Fraction of tokens on which each output latent is active."""
    model = LoadedJSAE.open(jsae, acts=acts)
    fired = torch.zeros(model.n_latents)
    n = 0
    for rows, code in model.codes("out", tokens, 2048):
        active = code.indices[code.values > 0]
        fired += torch.bincount(active, minlength=model.n_latents).float()
        n += len(rows)
    return fired / n


def show(result, title: str) -> None:
    print(f"\n{title}")
    for item in result.latents:
        print(f"  {item.side} latent {item.latent}: {item.label}; active on {item.count:,} of {result.n_tokens:,} tokens")
        for e in item.examples:
            text = "".join(f"[{t}]" if i == e.focus else t for i, t in enumerate(e.tokens)).replace("\n", "⏎")
            print(f"    {e.activation:6.2f}  {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jsae")
    parser.add_argument("jacobian")
    parser.add_argument("--tokens", default="100k", help="tokens harvested per language")
    parser.add_argument("--work", default=None, help="folder for the per-language stores (default: a temporary one)")
    args = parser.parse_args()
    tokens = parse_count(args.tokens)
    work = args.work or tempfile.mkdtemp(prefix="german-latent-")
    os.makedirs(work, exist_ok=True)
    meta = LoadedJSAE.open(args.jsae).store.meta
    model, layer = meta["model"]["name"], meta["layer"]

    stores = {}
    for lang, path in split_by_language(work).items():
        stores[lang] = harvest(HarvestConfig(model=model, layer=layer, dataset=path, tokens=tokens,
                                             out=os.path.join(work, f"acts-{lang}.zarr"))).store
    rates = {lang: firing_rates(args.jsae, store, tokens) for lang, store in stores.items()}
    score = rates["de"] - 5 * rates["en"]  # fires on German, (almost) never on English
    best = torch.argsort(score, descending=True)[:5].tolist()
    print("output latents that fire on German and not on English (fraction of tokens):")
    for o in best:
        print(f"  output latent {o:5d}: German {rates['de'][o]:.1%}, English {rates['en'][o]:.2%}")

    top = best[0]
    inputs = query(open_store(args.jacobian, "jacobian"), top=8, outputs=(top,))
    print(f"\ninput latents that compute output latent {top} (label: {inputs[0].output_label if inputs else '?'}):")
    for c in inputs:
        print(f"  input {c.input:5d} {c.input_label:40s} strength {c.strength:.3g}  mean J {c.mean:+.3f}  on {c.count:,} tokens")
    show(maxact(MaxactConfig(jsae=args.jsae, side="out", latents=(top,), examples=6, context=8)),
         f"where output latent {top} fires (bundled corpus, both languages):")
    if inputs:
        show(maxact(MaxactConfig(jsae=args.jsae, side="in", latents=tuple(c.input for c in inputs[:3]), examples=4, context=6)),
             "where its three strongest input latents fire:")


if __name__ == "__main__":
    main()
