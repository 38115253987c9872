"""Text cleaning helpers for the corpus recipe: HTML/reST to paragraphs, language and junk tests,
and packing paragraphs into documents. Standard library only."""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Iterable, Iterator

# --------------------------------------------------------------------------- language test
# Frequent function words that are (nearly) unambiguous between English and German.
# Words that exist in both languages ("in", "an", "so", "was", "will", "also", "man",
# "hat", "war", "die" in English is rare but kept for German) are left out on purpose.
EN_WORDS = frozenset("""
the and of to that it is with for you this are be as on by or not from have has which
his her they their were been would there what when we he she its at but if our your who
into about than then these those should could does had him them my me said all any more
only how other some such no do upon thou thee thy unto shall hath ye very been being
""".split())
DE_WORDS = frozenset("""
der die und das ist nicht mit sie ein eine einen einem einer den für auf wird dem des sich
im zu von es auch werden oder wenn kann bei als ich du wir ihr er sind sein haben wie noch
nach aus über nur aber dass daß diese dieser dieses wurde wurden können muss müssen soll
sollte zum zur vom durch gegen ohne bis unter um mir mich dir dich uns ihm ihn ihnen kein
keine schon sehr dann doch hier mehr immer sowie bzw werden wird
""".split())
WORD_RE = re.compile(r"[a-zäöüß]+")
MIN_WORDS_FOR_DECISION = 6


def paragraph_language(text: str) -> str | None:
    """'en', 'de', 'mixed', or None when the paragraph is too short to tell.

    A paragraph is English/German when its stopword hits for that language outnumber the
    other language's more than twofold (and there are at least two). Short paragraphs
    (headings, option names, one-line verses) are undecided and inherit from neighbours.
    """
    words = WORD_RE.findall(text.lower())
    if len(words) < MIN_WORDS_FOR_DECISION:
        return None
    en = sum(w in EN_WORDS for w in words)
    de = sum(w in DE_WORDS for w in words)
    if en + de < 2:
        return None
    if en > 2 * de:
        return "en"
    if de > 2 * en:
        return "de"
    return "mixed"


def fill_undecided(decisions: list[str | None]) -> list[str | None]:
    """Undecided paragraphs take the language of the previous decided one (or, at the start
    of a unit, of the first decided one). A unit with no decided paragraph stays undecided."""
    out: list[str | None] = []
    last = next((d for d in decisions if d is not None), None)
    for d in decisions:
        last = d if d is not None else last
        out.append(last)
    return out


# --------------------------------------------------------------------------- junk test
# Characters that are rare in prose but common in code, tables and markup. Parentheses,
# underscores and slashes are left out: API documentation prose is full of f_name() and paths.
CODE_CHARS = set("{}[];=<>|\\#$*@~^`%")
RULE_LINE_RE = re.compile(r"^[\s\-=_*+|#~.:^`'\"<>]{3,}$")


def is_junk(text: str) -> bool:
    """Markup residue, symbol tables, code and ASCII art: few letters, many code characters,
    or mostly ruler/table lines."""
    chars = [c for c in text if not c.isspace()]
    if len(chars) < 3:
        return True
    letters = sum(c.isalpha() for c in chars)
    if letters / len(chars) < 0.65:
        return True
    if sum(c in CODE_CHARS for c in chars) / len(chars) > 0.04:
        return True
    lines = [ln for ln in text.splitlines() if ln.strip()]
    rules = sum(bool(RULE_LINE_RE.match(ln)) or ln.count("  ") > 4 for ln in lines)
    return rules * 2 > len(lines)


def normalize_space(text: str, keep_lines: bool) -> str:
    """Collapse runs of blanks; join hard-wrapped lines unless line breaks carry meaning
    (verse, man page option lists, fortunes)."""
    text = text.replace("\xa0", " ").replace("\r", "")
    lines = [re.sub(r"[ \t]+", " ", ln).strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln]
    return "\n".join(lines) if keep_lines else " ".join(lines)


def split_paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


# --------------------------------------------------------------------------- packing
MAX_DOC_CHARS = 4000
MIN_DOC_CHARS = 200


def _split_long(paragraph: str, limit: int) -> Iterator[str]:
    """Split an over-long paragraph at sentence ends (or, failing that, spaces)."""
    while len(paragraph) > limit:
        cut = max(paragraph.rfind(". ", 0, limit), paragraph.rfind("\n", 0, limit))
        if cut < limit // 2:
            cut = paragraph.rfind(" ", 0, limit)
        if cut <= 0:
            cut = limit
        yield paragraph[:cut + 1].strip()
        paragraph = paragraph[cut + 1:].strip()
    if paragraph:
        yield paragraph


def pack(paragraphs: Iterable[str], joiner: str = "\n\n", limit: int = MAX_DOC_CHARS,
         minimum: int = MIN_DOC_CHARS) -> list[str]:
    """Greedily group consecutive paragraphs into documents of at most `limit` characters;
    drop leftovers shorter than `minimum` (too little context to be useful)."""
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for para in paragraphs:
        for piece in _split_long(para, limit):
            if current and size + len(joiner) + len(piece) > limit:
                docs.append(joiner.join(current))
                current, size = [], 0
            current.append(piece)
            size += len(piece) + (len(joiner) if size else 0)
    if current:
        docs.append(joiner.join(current))
    return [d for d in docs if len(d) >= minimum]


# --------------------------------------------------------------------------- HTML
BLOCK_TAGS = {"p", "div", "li", "tr", "br", "dt", "dd", "table", "section", "blockquote",
              "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "td", "th", "title"}
SKIP_TAGS = {"script", "style", "head", "nav", "pre", "math", "svg", "object", "footer", "aside"}
# (inline <code> is kept: manuals name commands with it mid-sentence; <pre> blocks are dropped)
SKIP_CLASSES = {"debug", "navheader", "navfooter", "toc", "breadcrumb", "sphinxsidebar", "related",
                "footer", "header", "list-of-tables", "list-of-figures", "list-of-examples",
                "screen", "programlisting", "literallayout", "synopsis", "cmdsynopsis"}
VOID_TAGS = {"br", "img", "meta", "link", "hr", "input", "area", "base", "col", "embed",
             "source", "wbr", "param", "track"}


class _TextExtractor(HTMLParser):
    """Collects visible text; block elements become paragraph breaks; code/navigation
    elements (and everything nested in them) are skipped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.stack: list[tuple[str, bool]] = []  # (tag, starts a skipped region)
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in BLOCK_TAGS:
            self.parts.append("\n\n")
        if tag in VOID_TAGS:
            return
        classes = set((dict(attrs).get("class") or "").split())
        skip = tag in SKIP_TAGS or bool(classes & SKIP_CLASSES)
        self.stack.append((tag, skip))
        self.skip_depth += skip

    def handle_endtag(self, tag: str) -> None:
        if tag in BLOCK_TAGS:
            self.parts.append("\n\n")
        # Pop up to the matching open tag; tolerates unclosed <p>/<li> in sloppy HTML.
        if any(t == tag for t, _ in self.stack):
            while self.stack:
                t, skip = self.stack.pop()
                self.skip_depth -= skip
                if t == tag:
                    break

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.parts.append(data)


def html_paragraphs(markup: str) -> list[str]:
    """Visible text of an HTML page as paragraphs with hard wraps joined."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = html.unescape("".join(parser.parts)).replace("¶", "")  # Sphinx heading anchors
    return [normalize_space(p, keep_lines=False) for p in split_paragraphs(text)]


# --------------------------------------------------------------------------- reStructuredText
# Directives whose indented body is prose worth keeping (admonitions, API descriptions);
# every other directive (code, tables, toctrees, images, comments) is dropped with its body.
KEEP_BODY_DIRECTIVES = {
    "note", "warning", "tip", "hint", "important", "caution", "attention", "danger", "error",
    "admonition", "seealso", "versionadded", "versionchanged", "deprecated", "topic", "sidebar",
    "rubric", "function", "method", "class", "attribute", "data", "exception", "decorator",
    "describe", "option", "envvar", "module", "opcode", "cmdoption", "abstractmethod",
    "classmethod", "staticmethod", "coroutinefunction", "coroutinemethod", "decoratormethod",
    "c:function", "c:macro", "c:type", "c:member", "c:var", "c:struct", "py:function",
    "py:method", "py:class", "py:attribute", "py:data", "glossary", "impl-detail", "epigraph",
}
DIRECTIVE_RE = re.compile(r"^\.\.\s+([\w:.-]+)::")
UNDERLINE_RE = re.compile(r"^([=\-~^\"'`#*+<>_:.])\1{2,}\s*$")
INLINE_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r":[\w:.-]+:`~?!?([^`<]*?)\s*(?:<[^`>]*>)?`"), r"\1"),  # :role:`text <target>`
    (re.compile(r"``([^`]+)``"), r"\1"),                              # ``literal``
    (re.compile(r"`([^`<]+?)\s*<[^`>]+>`_{1,2}"), r"\1"),             # `text <url>`_
    (re.compile(r"`([^`]+)`_{0,2}"), r"\1"),                          # `ref`_ / `interpreted`
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),                          # **strong**
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])"), r"\1"),     # *emphasis*
    (re.compile(r"\|([\w -]+)\|_?"), r"\1"),                          # |substitution|
    (re.compile(r"\[#?\w*\]_"), ""),                                  # footnote refs
]


def _clean_inline(text: str) -> str:
    for pattern, repl in INLINE_RULES:
        text = pattern.sub(repl, text)
    return text


def rst_paragraphs(source: str) -> list[str]:
    """Prose paragraphs of a reST file: headings kept as short paragraphs, code blocks
    (after '::' or in code directives), comments, tables and directive options dropped."""
    lines = source.replace("\t", "    ").split("\n")
    out: list[str] = []
    skip_above: int | None = None  # drop lines indented deeper than this
    literal_next = False           # previous paragraph ended with '::'
    para_indent = 0
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_above is not None:
            if not stripped or indent > skip_above:
                continue
            skip_above = None
        if not stripped:
            out.append("")
            continue
        if literal_next and indent > para_indent:
            skip_above, literal_next = para_indent, False
            continue
        literal_next = False
        directive = DIRECTIVE_RE.match(stripped)
        if stripped.startswith(".."):
            if directive and directive.group(1).lower() in KEEP_BODY_DIRECTIVES:
                out.append("")  # drop the directive line itself, keep its body
            else:
                skip_above = indent
            continue
        if UNDERLINE_RE.match(stripped) or (stripped.startswith(":") and re.match(r"^:[\w -]+:", stripped)):
            continue  # heading underline/overline, or a field list / directive option line
        if stripped.startswith((">>>", "...", "$ ", "# ")) or stripped[0] in "+|":
            continue  # doctest prompts, shell prompts, grid-table rows
        if stripped.endswith("::"):
            literal_next, para_indent = True, indent
            stripped = stripped[:-1] if not stripped == "::" else ""
        out.append(stripped)
    text = "\n".join(out)
    return [normalize_space(_clean_inline(p), keep_lines=False) for p in split_paragraphs(text)]
