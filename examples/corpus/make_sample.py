#!/usr/bin/env python3
"""Draw jsaectl's bundled sample corpus (sample.jsonl + SOURCES.md) from a full corpus build.

    python3 examples/corpus/make_sample.py --corpus OUTDIR --out jsaectl/assets/corpus

Only the TRAIN split is used, so the held-out split stays unseen. The byte budget is split
evenly between English and German; inside a language, each source gets a share proportional to
sqrt(its size), doubled for literary registers (novels, scripture, verse, fortunes), so small
but varied sources are not swamped by manuals; a source's share is split across its registers
(prose/dialogue, quotes/verse/recipes...) the same way. Documents are picked in sha256 order (a fixed
pseudo-random choice) and written interleaved: each next document comes from whichever language
has fewer bytes so far, so every prefix of the file is mixed. Deterministic for a given corpus.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import random
import shutil
from collections import Counter, defaultdict
from pathlib import Path

LANGS = ("en", "de")
DOCS_REGISTERS = {"docs", "reference"}  # everything else counts as literary/varied


def line_of(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False) + "\n"


def allocate(sizes: dict[str, int], weights: dict[str, float], budget: int) -> dict[str, int]:
    """Split `budget` across sources in proportion to `weights`, never giving a source more than
    it has; what a small source cannot use is re-split among the rest (water-filling)."""
    shares: dict[str, int] = {}
    open_sources = set(sizes)
    while open_sources:
        total_weight = sum(weights[s] for s in open_sources)
        left = budget - sum(shares.values())
        capped = {s for s in open_sources if sizes[s] <= left * weights[s] / total_weight}
        if not capped:
            shares.update({s: int(left * weights[s] / total_weight) for s in open_sources})
            break
        shares.update({s: sizes[s] for s in capped})
        open_sources -= capped
    return shares


def pick(docs: list[dict], budget: int) -> list[dict]:
    """Documents in sha256 order until the byte budget is spent."""
    chosen, used = [], 0
    for doc in sorted(docs, key=lambda d: hashlib.sha256(d["text"].encode()).hexdigest()):
        size = len(line_of(doc).encode())
        if used + size <= budget:
            chosen.append(doc)
            used += size
    return chosen


def pick_by_register(docs: list[dict], budget: int) -> list[dict]:
    """Split a source's budget across its registers by sqrt(size) too, so that e.g. the few
    poems and recipes among the German fortunes are not crowded out by the quotations."""
    by_register: dict[str, list[dict]] = defaultdict(list)
    for doc in docs:
        by_register[doc["register"]].append(doc)
    sizes = {r: sum(len(line_of(d).encode()) for d in ds) for r, ds in by_register.items()}
    shares = allocate(sizes, {r: math.sqrt(n) for r, n in sizes.items()}, budget)
    return [d for r in sorted(by_register) for d in pick(by_register[r], shares[r])]


def select(train: list[dict], budget: int) -> dict[str, list[dict]]:
    by_source: dict[str, list[dict]] = defaultdict(list)
    for doc in train:
        by_source[doc["source"]].append(doc)
    chosen: dict[str, list[dict]] = {}
    for lang in LANGS:
        sources = {s: docs for s, docs in by_source.items() if docs[0]["lang"] == lang}
        sizes = {s: sum(len(line_of(d).encode()) for d in docs) for s, docs in sources.items()}
        literary = {s: any(d["register"] not in DOCS_REGISTERS for d in docs) for s, docs in sources.items()}
        weights = {s: math.sqrt(sizes[s]) * (2.0 if literary[s] else 1.0) for s in sources}
        shares = allocate(sizes, weights, budget // len(LANGS))
        chosen[lang] = [d for s in sorted(sources) for d in pick_by_register(sources[s], shares[s])]
    return chosen


def interleave(chosen: dict[str, list[dict]], seed: int) -> list[dict]:
    """Shuffle each language, then always take next from the language with fewer bytes so far."""
    rng = random.Random(seed)
    queues = {lang: rng.sample(docs, len(docs)) for lang, docs in chosen.items()}
    emitted = Counter({lang: 0 for lang in queues})
    out = []
    while any(queues.values()):
        lang = min((lang for lang in LANGS if queues[lang]), key=lambda lang: (emitted[lang], LANGS.index(lang)))
        doc = queues[lang].pop()
        emitted[lang] += len(line_of(doc).encode())
        out.append(doc)
    return out


def sources_md(sample: list[dict], table: list[dict], corpus_cmd: str, sample_cmd: str) -> str:
    docs, size, registers = Counter(), Counter(), defaultdict(Counter)
    for doc in sample:
        docs[doc["source"]] += 1
        size[doc["source"]] += len(doc["text"].encode())
        registers[doc["source"]][doc["register"]] += 1
    lang_bytes = Counter()
    for doc in sample:
        lang_bytes[doc["lang"]] += len(doc["text"].encode())
    rows = "\n".join(
        f"| {r['id']} | {r['packages']} | {r['lang']} | "
        f"{', '.join(f'{k} ({v})' for k, v in registers[r['id']].most_common())} | {r['licence']} | "
        f"{docs[r['id']]} | {size[r['id']]:,} | {r['notes']} |"
        for r in table if docs[r["id"]])
    descriptions = "\n".join(f"- **{r['id']}**: {r['what']}" for r in table if docs[r["id"]])
    return f"""# sample.jsonl: provenance and licences

`sample.jsonl` is a small English/German corpus bundled with jsaectl as the offline default
data set: {len(sample):,} documents, {lang_bytes['en']:,} bytes of English and {lang_bytes['de']:,} bytes of German text
(UTF-8, text fields only). One JSON object per line:
`{{"text": ..., "lang": "en"|"de", "source": <source id>, "register": <kind of text>}}`.

It is drawn only from the **train** split of the full corpus (the full corpus's held-out split,
used to evaluate the demo model, is not in it). Beside it, `heldout.jsonl` (jsaectl's
`--dataset jsaectl-heldout`) is drawn the same way from the **held-out** split, for evaluating
on text neither the demo model nor an SAE trained on the sample has seen. Documents are runs of consecutive paragraphs
(at most 4,000 characters) from one man page, help page, chapter, fortune file etc., cleaned of
markup and filtered paragraph by paragraph for language. They appear in a fixed pseudo-random
order that alternates between the languages by bytes, so any prefix mixes English and German.

## Sources

All text comes from Debian 12 (bookworm) packages. Licences are those stated in each package's
own `/usr/share/doc/<package>/copyright` file, shipped beside this file as
`licences/<package>.copyright.gz`, with the full texts of the GPL-2, GPL-3 and MPL-2.0 from
Debian's `/usr/share/common-licenses/` (`licences/GPL-2.gz`, …; the CC-BY-SA-4.0 text is in
`licences/debian-paketmanagement-buch.copyright.gz`).

| source id | package (version) | lang | registers (docs) | licence | docs | bytes | notes |
|---|---|---|---|---|---:|---:|---|
{rows}

**Copyleft notice.** Much of the German text (and the Linux, Debian and LibreOffice manuals in
English) is copyleft: GPL-2(+)/GPL-3+ (man pages, fortunes-de, Debian manuals, Linux docs),
MPL-2.0 (LibreOffice help, weak copyleft) and CC-BY-SA-4.0 (the Debian package management
book). Those excerpts remain under their licences, whose full texts are in `licences/`; anyone
redistributing this file must honour them. Public domain: the Jane Austen novels, Moby Dick,
the King James Bible and the Jargon File; permissive: the Python documentation (PSF licence),
the BSD fortunes and the Debian FAQ.

**Registers.** The English half holds narrative prose and dialogue (Austen, Moby Dick),
scripture, verse, quotations, reference and documentation. The German half holds
documentation, reference pages, quotations, recipes, anecdotes and verse, but no long-form
prose or dialogue: Debian 12 packages no German literature under a free licence that this
recipe could extract as text.

{descriptions}

## Rebuild

Needs a Debian 12 system with `apt-get` access to Debian's archive, `dpkg-deb`, `groff` and
Python 3.10+. From the repository root:

```
{corpus_cmd}
{sample_cmd}
```

The result is byte-identical for the same package versions (listed above); newer Debian point
releases may change a few documents.
"""


COMMON_LICENCES = ("GPL-2", "GPL-3", "MPL-2.0")  # the copyleft licences of the bundled text


def write_licences(corpus: Path, out: Path, common: Path = Path("/usr/share/common-licenses")) -> None:
    """Each package's copyright file (copied by build.py into CORPUS/licences) and the full
    texts of the copyleft licences, gzipped reproducibly (mtime 0), into OUT/licences."""
    dest = out / "licences"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    sources = [*sorted((corpus / "licences").glob("*.copyright")), *(common / name for name in COMMON_LICENCES)]
    for src in sources:
        (dest / f"{src.name}.gz").write_bytes(gzip.compress(src.read_bytes(), compresslevel=9, mtime=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True,
                        help="full corpus directory written by build_corpus.sh (train.jsonl, sources.json)")
    parser.add_argument("--out", type=Path, required=True, help="directory for sample.jsonl and SOURCES.md")
    parser.add_argument("--max-bytes", type=int, default=2_700_000,
                        help="size budget of sample.jsonl on disk (with heldout.jsonl at most 3,000,000)")
    parser.add_argument("--heldout-bytes", type=int, default=250_000,
                        help="size budget of heldout.jsonl, drawn the same way from the held-out split "
                             "(jsaectl's --dataset jsaectl-heldout, for evaluation on unseen text)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the interleaving shuffle")
    args = parser.parse_args()

    with open(args.corpus / "train.jsonl", encoding="utf-8") as f:
        train = [json.loads(line) for line in f]
    table = json.loads((args.corpus / "sources.json").read_text(encoding="utf-8"))
    sample = interleave(select(train, args.max_bytes), args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "sample.jsonl", "w", encoding="utf-8") as f:
        f.writelines(line_of(doc) for doc in sample)
    with open(args.corpus / "heldout.jsonl", encoding="utf-8") as f:
        heldout = interleave(select([json.loads(line) for line in f], args.heldout_bytes), args.seed)
    with open(args.out / "heldout.jsonl", "w", encoding="utf-8") as f:
        f.writelines(line_of(doc) for doc in heldout)
    corpus_cmd = "examples/corpus/build_corpus.sh /tmp/jsaectl-corpus"
    sample_cmd = f"python3 examples/corpus/make_sample.py --corpus /tmp/jsaectl-corpus --out {args.out}"
    if args.max_bytes != 2_700_000 or args.heldout_bytes != 250_000 or args.seed != 0:
        sample_cmd += f" --max-bytes {args.max_bytes} --heldout-bytes {args.heldout_bytes} --seed {args.seed}"
    (args.out / "SOURCES.md").write_text(sources_md(sample, table, corpus_cmd, sample_cmd), encoding="utf-8")
    write_licences(args.corpus, args.out)
    size = (args.out / "sample.jsonl").stat().st_size
    print(f"{args.out / 'sample.jsonl'}: {len(sample)} documents, {size:,} bytes")
    size = (args.out / "heldout.jsonl").stat().st_size
    print(f"{args.out / 'heldout.jsonl'}: {len(heldout)} documents, {size:,} bytes")


if __name__ == "__main__":
    main()
