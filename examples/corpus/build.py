#!/usr/bin/env python3
"""Turn unpacked Debian packages into the jsaectl EN/DE corpus (JSONL + SOURCES.md).

What a *document* is: every source is first cut into natural units (one man page, one help
page, one book/novel chapter, one Bible chapter, one fortune file, one reST file). A unit's
paragraphs are cleaned, junk paragraphs dropped, and each paragraph is language-tested on its
own; paragraphs in the wrong language are dropped (German manuals contain untranslated English
paragraphs). The surviving paragraphs of a unit are packed, in order, into documents of at
most 4,000 characters (a long chapter becomes several consecutive documents; documents under
200 characters are dropped). Fortune files and the Jargon File glossary, which are lists of
independent items, are packed the same way, so one document is a run of consecutive fortunes
or glossary entries.

Held-out split: a document goes to heldout.jsonl when sha256("<source>:<unit>") falls in the
lowest 2% (whole units, so consecutive pieces of one chapter never straddle the split); for
the list-like sources the hash is per document. Output is deterministic for a given set of
package versions.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import textutil
from sources import PACKAGES, SOURCES, Source, Unit

HELDOUT_PER_MILLE = 20
DEDUP_MIN_CHARS = 40  # shorter paragraphs (headings like "BESCHREIBUNG") may repeat


def is_heldout(key: str) -> bool:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < HELDOUT_PER_MILLE


def dialogue_share(text: str) -> float:
    """Fraction of characters inside double quotes: novels' dialogue vs narration."""
    quoted = sum(len(m) for m in re.findall(r'"[^"]*"|“[^”]*”', text))
    return quoted / max(1, len(text))


class SourceBuilder:
    """Filters and packs the units of one source, keeping counts for the report."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.seen: set[bytes] = set()
        self.stats: Counter = Counter()

    def clean_unit(self, unit: Unit) -> list[str]:
        paras = [textutil.normalize_space(p, unit.keep_lines) for p in unit.paragraphs]
        paras = [p for p in paras if p]
        kept_junk = [p for p in paras if not textutil.is_junk(p)]
        self.stats["para_junk"] += len(paras) - len(kept_junk)
        langs = textutil.fill_undecided([textutil.paragraph_language(p) for p in kept_junk])
        out = []
        for para, lang in zip(kept_junk, langs):
            if lang != self.source.lang:
                self.stats["para_mixed" if lang == "mixed" else "para_other_lang" if lang else "para_undecided"] += 1
                continue
            if len(para) >= DEDUP_MIN_CHARS:
                digest = hashlib.sha1(para.encode()).digest()
                if digest in self.seen:
                    self.stats["para_duplicate"] += 1
                    continue
                self.seen.add(digest)
            out.append(para)
        self.stats["para_kept"] += len(out)
        return out

    def documents(self, unit: Unit) -> list[tuple[dict, bool]]:
        """(record, is_heldout) pairs for one unit."""
        docs = textutil.pack(self.clean_unit(unit), joiner=unit.joiner)
        out = []
        for i, text in enumerate(docs):
            register = unit.register or self.source.register
            if unit.classify_dialogue:
                register = "dialogue" if dialogue_share(text) >= 0.4 else "prose"
            split_key = f"{self.source.id}:{unit.key}" + (f"#{i}" if unit.split_per_doc else "")
            record = {"text": text, "lang": self.source.lang, "source": self.source.id, "register": register}
            out.append((record, is_heldout(split_key)))
        return out


def licence_of(copyright_file: Path, source: Source) -> str:
    """Licence of the package's main content, read from its /usr/share/doc/<pkg>/copyright.

    Machine-readable (DEP-5) files: the License of the `Files: *` stanza. Older free-form
    files: the source's declared summary, but only if its evidence regex still matches."""
    text = copyright_file.read_text(encoding="utf-8", errors="replace")
    if text.startswith("Format:"):
        for stanza in re.split(r"\n\s*\n", text):
            if re.search(r"(?m)^Files:\s*\*\s*$", stanza):
                m = re.search(r"(?m)^License:\s*(.+)$", stanza)
                if m:
                    return m.group(1).strip()
    if source.licence_fallback and re.search(source.licence_fallback[0], text):
        return source.licence_fallback[1]
    raise SystemExit(f"cannot determine the licence of {copyright_file}; update sources.py")


def read_versions(path: Path) -> dict[str, str]:
    """packages.tsv written by build_corpus.sh: package<TAB>version<TAB>deb file."""
    rows = (line.split("\t") for line in path.read_text().splitlines() if line.strip())
    return {row[0]: row[1] for row in rows}


def write_sources_md(out: Path, table: list[dict], totals: Counter) -> None:
    lines = [
        "# Corpus sources", "",
        "Built by `examples/corpus/build_corpus.sh` from Debian bookworm packages. Licences are read",
        "from each package's own `/usr/share/doc/<package>/copyright` (copies in `licences/`).",
        "**Copyleft notice:** sources marked GPL / MPL / CC-BY-SA below are copyleft (or weak",
        "copyleft / share-alike) texts; redistributing the corpus or large parts of it carries",
        "those licences' obligations. Public-domain and permissive sources are marked as such.", "",
        "| source id | package (version) | lang | registers | licence | docs | bytes kept (train+heldout) | notes |",
        "|---|---|---|---|---|---:|---:|---|",
    ]
    for row in table:
        lines.append(f"| {row['id']} | {row['packages']} | {row['lang']} | {row['registers']} | {row['licence']} | "
                     f"{row['docs']} | {row['bytes']:,} | {row['notes']} |")
    lines += ["", "Totals (UTF-8 bytes of document text):", ""]
    for key in sorted(totals):
        lines.append(f"- {key}: {totals[key]:,}")
    lines += ["", "Per-source descriptions:", ""]
    lines += [f"- **{row['id']}**: {row['what']}" for row in table]
    (out / "SOURCES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build(root: Path, out: Path, versions: dict[str, str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "licences").mkdir(exist_ok=True)
    table, totals, all_stats = [], Counter(), {}
    with open(out / "train.jsonl", "w", encoding="utf-8") as train, \
         open(out / "heldout.jsonl", "w", encoding="utf-8") as heldout:
        for source in SOURCES:
            started = time.time()
            builder = SourceBuilder(source)
            kept_bytes, registers = 0, Counter()
            for unit in source.extract(root):
                if source.max_bytes and kept_bytes >= source.max_bytes:
                    builder.stats["units_over_cap"] += 1
                    continue
                for record, held in builder.documents(unit):
                    (heldout if held else train).write(json.dumps(record, ensure_ascii=False) + "\n")
                    size = len(record["text"].encode("utf-8"))
                    kept_bytes += size
                    registers[record["register"]] += 1
                    builder.stats["docs_heldout" if held else "docs_train"] += 1
                    totals[f"{source.lang} {'heldout' if held else 'train'}"] += size
            licences = []
            for pkg in source.packages:
                shutil.copy(root / pkg / f"usr/share/doc/{pkg}/copyright", out / "licences" / f"{pkg}.copyright")
                licences.append(licence_of(root / pkg / f"usr/share/doc/{pkg}/copyright", source))
            table.append({
                "id": source.id, "lang": source.lang, "what": source.what, "notes": source.notes,
                "packages": ", ".join(f"{p} ({versions.get(p, '?')})" for p in source.packages),
                "registers": ", ".join(f"{r} ({n})" for r, n in registers.most_common()),
                "licence": " / ".join(dict.fromkeys(licences)),
                "docs": builder.stats["docs_train"] + builder.stats["docs_heldout"], "bytes": kept_bytes,
            })
            all_stats[source.id] = dict(builder.stats, bytes=kept_bytes)
            print(f"{source.id:24s} {kept_bytes:>11,} bytes {table[-1]['docs']:>6} docs "
                  f"{time.time() - started:5.1f}s {dict(builder.stats)}", file=sys.stderr)
    write_sources_md(out, table, totals)
    (out / "sources.json").write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "stats.json").write_text(json.dumps({"sources": all_stats, "totals": totals}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path,
                        help="directory holding one unpacked package per subdirectory (ROOT/<package>/usr/...)")
    parser.add_argument("--versions", type=Path,
                        help="packages.tsv (package, version, .deb) written by build_corpus.sh")
    parser.add_argument("--out", type=Path, help="output directory for the corpus")
    parser.add_argument("--list-packages", action="store_true",
                        help="only print the Debian packages the recipe needs, one per line")
    args = parser.parse_args()
    if args.list_packages:
        print("\n".join(PACKAGES))
        return
    if not (args.root and args.versions and args.out):
        parser.error("--root, --versions and --out are required")
    build(args.root, args.out, read_versions(args.versions))


if __name__ == "__main__":
    main()
