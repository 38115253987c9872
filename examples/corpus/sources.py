"""The corpus sources: which Debian package, which files, how to cut them into units.

Every extractor takes the root of the unpacked packages (ROOT/<package>/...) and yields
`Unit`s: a named piece of a source (a man page, a help page, a novel chapter, a Bible chapter,
one fortune file...) as a list of raw paragraphs. build.py then filters and packs them.
"""
from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import rdata
import textutil


@dataclass
class Unit:
    key: str                      # stable name inside the source, e.g. "man1/ls.1"
    paragraphs: list[str]
    register: str | None = None   # overrides the source's register (e.g. one fortune file)
    keep_lines: bool = False      # line breaks are meaningful (verse, man pages, fortunes)
    joiner: str = "\n\n"          # how paragraphs are joined in a document
    split_per_doc: bool = False   # held-out split per document instead of per unit
    classify_dialogue: bool = False  # label each document 'dialogue' or 'prose' (fiction)


@dataclass
class Source:
    id: str
    packages: tuple[str, ...]
    lang: str
    register: str
    what: str
    extract: Callable[[Path], Iterator[Unit]]
    # For copyright files that are not machine-readable (DEP-5): a regex that must match the
    # file, and the licence summary it stands for. The build fails if the regex stops matching.
    licence_fallback: tuple[str, str] | None = None
    max_bytes: int | None = None  # cap on kept text, for sources that would swamp the rest
    notes: str = ""


# --------------------------------------------------------------------------- helpers
def _files(base: Path, pattern: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Sorted regular files (no symlinks) under `base` matching `pattern`, minus excluded names."""
    return sorted(p for p in base.glob(pattern)
                  if p.is_file() and not p.is_symlink() and not any(x in str(p) for x in exclude))


def _read(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # a few old fortune/man files are still ISO-8859-1


def _hash_order(paths: list[Path]) -> list[Path]:
    """A fixed pseudo-random order, so a byte cap keeps a spread of topics, not a prefix."""
    return sorted(paths, key=lambda p: hashlib.sha256(p.name.encode() + str(p.parent).encode()).hexdigest())


# --------------------------------------------------------------------------- man pages
GROFF = "preconv -e utf-8 | groff -Tutf8 -mandoc -rHY=0 -rLL=200n -P-cbou 2>/dev/null"


def _render_man(path: Path) -> str:
    """Render one man page to plain text with groff; -P-cbou drops overstrike bold/underline,
    a 200-column line length keeps each paragraph on one line, HY=0 turns off hyphenation."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if raw.startswith(b".so "):
        return ""  # alias page that only includes another page
    result = subprocess.run(["sh", "-c", GROFF], input=raw, capture_output=True, check=False)
    return result.stdout.decode("utf-8", "replace")


def man_units(root: Path, packages: tuple[str, ...], lang: str) -> Iterator[Unit]:
    pages = [p for pkg in packages for p in _files(root / pkg / f"usr/share/man/{lang}", "**/*")]
    with ThreadPoolExecutor() as pool:  # groff is a subprocess: threads use both cores
        for page, text in zip(pages, pool.map(_render_man, pages)):
            paras = textutil.split_paragraphs(text)[1:-1]  # first/last: running header/footer
            # Drop the translators' credits/licence boilerplate at the end of every page.
            stop = next((i for i, p in enumerate(paras) if p.strip() in ("ÜBERSETZUNG", "COLOPHON")), len(paras))
            yield Unit(f"{page.parent.name}/{page.name}", paras[:stop], keep_lines=True)


# --------------------------------------------------------------------------- HTML manuals
def html_units(root: Path, package: str, pattern: str, exclude: tuple[str, ...] = (),
               split_tag: str | None = None, start_marker: str | None = None) -> Iterator[Unit]:
    """One unit per HTML page; with `split_tag` (e.g. 'h2'), one per chapter of a one-page book.
    With `start_marker`, everything before it (page chrome, menus) is ignored."""
    base = root / package
    for path in _files(base, pattern, exclude):
        markup = _read(path)
        if start_marker and start_marker in markup:
            markup = markup[markup.index(start_marker):]
        parts = re.split(rf"(?i)(?=<{split_tag}\b)", markup) if split_tag else [markup]
        for i, part in enumerate(parts):
            key = str(path.relative_to(base)) + (f"#{i}" if split_tag else "")
            yield Unit(key, textutil.html_paragraphs(part))


def rst_units(root: Path, package: str, pattern: str, exclude: tuple[str, ...] = (),
              hash_order: bool = False) -> Iterator[Unit]:
    base = root / package
    paths = _files(base, pattern, exclude)
    for path in _hash_order(paths) if hash_order else paths:
        yield Unit(str(path.relative_to(base)), textutil.rst_paragraphs(_read(path)))


# --------------------------------------------------------------------------- fortunes
DE_FORTUNE_REGISTER = {"gedichte": "verse", "anekdoten": "anecdote"}
DE_RECIPES = {"beilagen", "brot", "dessert", "hauptgericht", "kalt", "kuchen", "plaetzchen",
              "salat", "sauce", "suppe"}
EN_FORTUNE_REGISTER = {"songs-poems": "verse"}
SKIP_FORTUNES = {"asciiart", "ascii-art", "ethnic"}  # pictures; ethnic jokes


def fortune_units(root: Path, packages: tuple[str, ...], subdir: str) -> Iterator[Unit]:
    """One unit per fortune file; each fortune (between '%' lines) is one paragraph."""
    for pkg in packages:
        for path in _files(root / pkg / "usr/share/games/fortunes" / subdir, "*"):
            name = path.name
            if path.suffix in (".dat", ".u8") or name in SKIP_FORTUNES or path.parent.name != (subdir or "fortunes"):
                continue
            fortunes = [f.strip("\n") for f in re.split(r"(?m)^%\s*$", _read(path))]
            register = ("recipe" if name in DE_RECIPES else
                        DE_FORTUNE_REGISTER.get(name) or EN_FORTUNE_REGISTER.get(name) or "quotes")
            yield Unit(name, [f for f in fortunes if f.strip()], register=register,
                       keep_lines=True, split_per_doc=True)


# --------------------------------------------------------------------------- literature
NOVEL_CHAPTER_RE = re.compile(r"(?m)^(?:CHAPTER|Chapter)\s+[0-9IVXLC]+\b.*$")


def _chapters(text: str) -> list[str]:
    """Split a novel at chapter headings (the heading stays with its chapter)."""
    starts = [m.start() for m in NOVEL_CHAPTER_RE.finditer(text)]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])] if starts else [text]


def austen_units(root: Path) -> Iterator[Unit]:
    base = root / "r-cran-janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata"
    for novel, lines in sorted(rdata.character_vectors(base).items()):
        for i, chapter in enumerate(_chapters("\n".join(lines))):
            yield Unit(f"{novel}/{i:03d}", textutil.split_paragraphs(chapter), classify_dialogue=True)


def mobydick_units(root: Path) -> Iterator[Unit]:
    base = root / "r-cran-tokenizers/usr/lib/R/site-library/tokenizers/data/Rdata"
    text = rdata.character_vectors(base)["mobydick"][0].replace("\r\n", "\n")
    # Keep the novel only: drop the Project Gutenberg header and licence footer.
    text = text.split("*** START OF THIS PROJECT GUTENBERG EBOOK", 1)[-1]
    text = text.split("End of Project Gutenberg", 1)[0]
    for i, chapter in enumerate(_chapters(text)):
        yield Unit(f"chapter/{i:03d}", textutil.split_paragraphs(chapter), classify_dialogue=True)


def kjv_units(root: Path) -> Iterator[Unit]:
    """The KJV via the package's own `bible` tool; one unit per chapter, one verse per line."""
    out = subprocess.run([str(root / "bible-kjv/usr/bin/bible"), "-p", str(root / "bible-kjv-text/usr/lib"),
                          "-f", "-l0", "gen1:1-rev22:21"], capture_output=True, check=True, text=True)
    chapters: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^(\w+?)(\d+):\d+ (.*)$", line)
        if m:
            chapters.setdefault(f"{m.group(1)}{m.group(2)}", []).append(m.group(3))
    for key, verses in chapters.items():
        yield Unit(key, verses, joiner="\n")


def jargon_units(root: Path) -> Iterator[Unit]:
    """The Jargon File glossary (entries start with ':term:') and its prose appendices A-B."""
    text = _read(root / "jargon-text/usr/share/doc/jargon-text/jargon.txt.gz")
    start = re.search(r"(?m)^   :[^:\n]+:", text)
    appendix_a = text.find("\nAppendix A. Hacker Folklore")
    appendix_c = text.find("\nAppendix C.")
    glossary = re.sub(r"\{([^{}]*)\}", r"\1", text[start.start():appendix_a])  # {cross refs}
    entries = re.split(r"(?m)^(?=   :[^:\n]+:)", glossary)
    yield Unit("glossary", [e.strip() for e in entries if e.strip()], register="reference",
               split_per_doc=True)
    yield Unit("appendices", textutil.split_paragraphs(text[appendix_a:appendix_c]),
               register="prose", split_per_doc=True)


# --------------------------------------------------------------------------- registry
def _lo(lang: str) -> Callable[[Path], Iterator[Unit]]:
    code = {"de": "de", "en": "en-US"}[lang]
    return lambda root: html_units(root, f"libreoffice-help-{code.lower()}",
                                   f"usr/share/libreoffice/help/{code}/text/**/*.html",
                                   start_marker='<div id="DisplayArea"')


SOURCES: list[Source] = [
    # ----- German
    Source("manpages-de", ("manpages-de", "manpages-de-dev"), "de", "reference",
           "German translations of Linux/GNU manual pages (commands, files, system and library calls)",
           lambda r: man_units(r, ("manpages-de", "manpages-de-dev"), "de"),
           notes="copyleft (GPL-3+)"),
    Source("libreoffice-help-de", ("libreoffice-help-de",), "de", "docs",
           "LibreOffice 7.4 online help, German", _lo("de"), notes="weak copyleft (MPL-2.0)"),
    Source("fortunes-de", ("fortunes-de",), "de", "quotes",
           "German fortune cookies: poems (verse), recipes, anecdotes, sayings, quotations",
           lambda r: fortune_units(r, ("fortunes-de",), "de"), notes="copyleft (GPL-2+)"),
    Source("debian-reference-de", ("debian-reference-de",), "de", "docs",
           "Debian Reference (system administration guide), German",
           lambda r: html_units(r, "debian-reference-de", "usr/share/debian-reference/*.de.html",
                                ("index.",)), notes="copyleft (GPL-2+)"),
    Source("developers-reference-de", ("developers-reference-de",), "de", "docs",
           "Debian Developer's Reference, German",
           lambda r: html_units(r, "developers-reference-de", "usr/share/developers-reference/de/*.html",
                                ("developers-reference.html", "index.html", "search.html", "genindex")),
           notes="copyleft (GPL-2)"),
    Source("debian-faq-de", ("debian-faq-de",), "de", "docs", "Debian FAQ, German",
           lambda r: html_units(r, "debian-faq-de", "usr/share/doc/debian/FAQ/de/*.html", ("index.",)),
           licence_fallback=(r"Permission is granted to make and distribute verbatim copies",
                             "permissive (verbatim, modified and translated copies allowed under the same notice)")),
    Source("maint-guide-de", ("maint-guide-de",), "de", "docs", "Debian New Maintainers' Guide, German",
           lambda r: html_units(r, "maint-guide-de", "usr/share/doc/maint-guide-de/html/*.html", ("index.",)),
           notes="copyleft (GPL-2+)"),
    Source("dpmb-de", ("debian-paketmanagement-buch",), "de", "docs",
           "Das Debian-Paketmanagement-Buch (a German book on Debian package management), one unit per chapter",
           lambda r: html_units(r, "debian-paketmanagement-buch", "usr/share/doc/debian-paketmanagement-buch/*.html",
                                split_tag="h2"), notes="share-alike (CC-BY-SA-4.0)"),
    # ----- English
    Source("austen", ("r-cran-janeaustenr",), "en", "prose",
           "Jane Austen's six novels (public-domain texts); documents labelled prose or dialogue",
           austen_units, notes="novels are public domain; the R package wrapping them is MIT"),
    Source("mobydick", ("r-cran-tokenizers",), "en", "prose",
           "Herman Melville, Moby Dick (Project Gutenberg #2701, public domain), shipped as test data",
           mobydick_units, notes="novel is public domain; the R package is MIT"),
    Source("kjv", ("bible-kjv-text", "bible-kjv"), "en", "scripture",
           "King James Version of the Bible (1611), one verse per line",
           kjv_units, licence_fallback=(r"King James Version text of the Bible is expired",
                                        "public domain (KJV text); BRS software: unrestricted use / GPL-2+")),
    Source("fortunes-en", ("fortunes", "fortunes-min"), "en", "quotes",
           "BSD fortune cookies: quotations, jokes, songs and poems (verse)",
           lambda r: fortune_units(r, ("fortunes", "fortunes-min"), ""),
           licence_fallback=(r"This program falls under the BSD copyright",
                             "BSD-3-clause (fortune-mod collection); individual quotations of mixed provenance")),
    Source("jargon", ("jargon-text",), "en", "reference",
           "The Jargon File 4.4.7 (hacker slang glossary, plus the prose appendices)",
           jargon_units, licence_fallback=(r"is in the public domain", "public domain")),
    Source("python-doc", ("python3.11-doc",), "en", "docs",
           "Python 3.11 documentation (reST sources: tutorial, library reference, HOWTOs, FAQ)",
           lambda r: rst_units(r, "python3.11-doc", "usr/share/doc/python3.11/html/_sources/**/*.txt",
                               ("changelog",)),
           licence_fallback=(r"PYTHON SOFTWARE FOUNDATION LICENSE", "PSF-2.0 (Python Software Foundation License)")),
    Source("linux-doc", ("linux-doc-6.1",), "en", "docs",
           "Linux 6.1 kernel documentation (reST sources); a fixed pseudo-random subset of files",
           lambda r: rst_units(r, "linux-doc-6.1", "usr/share/doc/linux-doc-6.1/html/_sources/**/*.txt",
                               ("/translations/",), hash_order=True),
           max_bytes=10_000_000, notes="copyleft (GPL-2)"),
    Source("libreoffice-help-en", ("libreoffice-help-en-us",), "en", "docs",
           "LibreOffice 7.4 online help, English", _lo("en"), notes="weak copyleft (MPL-2.0)"),
    Source("debian-reference-en", ("debian-reference-en",), "en", "docs",
           "Debian Reference (system administration guide), English",
           lambda r: html_units(r, "debian-reference-en", "usr/share/debian-reference/*.en.html", ("index.",)),
           notes="copyleft (GPL-2+)"),
    Source("developers-reference-en", ("developers-reference",), "en", "docs", "Debian Developer's Reference, English",
           lambda r: html_units(r, "developers-reference", "usr/share/developers-reference/*.html",
                                ("developers-reference.html", "index.html", "search.html", "genindex")),
           notes="copyleft (GPL-2)"),
    Source("maint-guide-en", ("maint-guide",), "en", "docs", "Debian New Maintainers' Guide, English",
           lambda r: html_units(r, "maint-guide", "usr/share/doc/maint-guide/html/*.html", ("index.",)),
           notes="copyleft (GPL-2+)"),
]

PACKAGES: list[str] = sorted({p for s in SOURCES for p in s.packages})
