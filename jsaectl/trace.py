"""`jsaectl trace`: what fires, and what computes what, on a text you give.

The text is tokenized by the model of the JSAE's activations store and cut into contexts as
harvest cuts its stream (BOS first, at most ``context_size`` tokens each, the last one
shorter), run to layer L's MLP input through the same truncated forward pass harvest uses,
and through the JSAE with its Jacobian (``JSAE.forward``, evaluated where the JSAE was
trained). For every token: its active input and output latents and its strongest J entries;
over the text: the connections ranked by Σ|J| over its tokens, with the tokens where each
acts. Labels come from a jacobian store, or are computed as `jacobian` computes them (each
latent's most frequent tokens among its top activations in the activations store).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from jsaectl.configs import TraceConfig
from jsaectl.data import text_contexts
from jsaectl.errors import DataError
from jsaectl.jacobian import labels_for, pair_stats, reduce_pairs
from jsaectl.jsae import active_pairs
from jsaectl.progress import SILENT, Reporter
from jsaectl.trained import LoadedJSAE


@dataclass
class Latent:
    latent: int
    activation: float
    label: str


@dataclass
class Entry:
    input: int
    output: int
    J: float


@dataclass
class TokenTrace:
    position: int
    """Index of the token in the text (BOS tokens not counted, unless --include-bos)."""
    token: str
    inputs: list[Latent]
    """Its active input latents, strongest first (the top ones; ``active_in`` has them all)."""
    outputs: list[Latent]
    entries: list[Entry]
    """Its strongest J entries by |J| (input → output, signed)."""
    active_in: list[int] = field(default_factory=list)
    active_out: list[int] = field(default_factory=list)


@dataclass
class Link:
    input: int
    output: int
    input_label: str
    output_label: str
    sum_abs: float
    """Σ |J[out, in]| over the text's tokens."""
    mean: float
    """Mean signed J over the tokens where both latents are active."""
    count: int
    tokens: list[dict[str, Any]]
    """Where it acts most: ``{"position", "token", "J"}``, strongest first."""


@dataclass
class TraceResult:
    jsae: str
    jacobian: str | None
    labels: str
    n_tokens: int
    tokens: list[TokenTrace]
    connections: list[Link]
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_text(cfg: TraceConfig) -> str:
    """The text to trace: --text, --text - (stdin) or --file, strictly UTF-8."""
    import sys

    if cfg.file is not None:
        try:
            with open(cfg.file, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise DataError(f"cannot read {cfg.file}: {e.strerror or e}", hint="check the path") from None
        where = cfg.file
    elif cfg.text == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise DataError("--text - reads the text from stdin, but stdin is a terminal", hint='pipe it in, or pass --text "…"')
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        where = "stdin"
    else:
        return cfg.text or ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start})", hint="give UTF-8 text") from None


def trace(cfg: TraceConfig, text: str, reporter: Reporter = SILENT) -> TraceResult:
    from jsaectl.device import pick_device

    model = LoadedJSAE.open(cfg.jsae, device=pick_device(cfg.device), include_bos=cfg.include_bos)
    lm = model.acts.model(model.device)
    contexts = _contexts(text, lm.tokenizer, model)
    began = time.perf_counter()
    skip = model.acts.skips_bos(cfg.include_bos)  # the tokens the JSAE reads: BOS left out unless asked
    ids = np.concatenate([c[1:] if skip else c for c in contexts])
    code_in, code_out, jac_out, J = _run(model, lm, contexts, skip)
    texts = model.acts.token_texts(ids)
    n = len(ids)
    per_token = [_token(i, texts[i], code_in, code_out, jac_out, J, cfg.top) for i in range(n)]
    links = _links(code_in, jac_out, J, texts, cfg.connections, model.n_latents)
    seconds = time.perf_counter() - began
    shown = {"in": sorted({x.latent for t in per_token for x in t.inputs} | {c.input for c in links}),
             "out": sorted({x.latent for t in per_token for x in t.outputs} | {c.output for c in links})}
    labels, where = labels_for(model, shown, cfg.label_tokens, cfg.batch_size, reporter)
    _label_all(per_token, links, labels)
    jac = model.jacobian
    return TraceResult(model.store.url, jac.url if jac else None, where, n, per_token, links, seconds)


def _contexts(text: str, tokenizer: Any, model: LoadedJSAE) -> list[np.ndarray]:
    """The text's contexts, refused when it holds no token the JSAE would read."""
    if not text.strip():
        raise DataError("the text is empty", hint='give some text: --text "…", --file F, or --text - with text on stdin')
    bos = model.acts.bos
    contexts = text_contexts(text, tokenizer, model.acts.context_size, bos=bos)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    body = [t for c in contexts for t in (c[1:] if bos else c)]
    if not body or all(int(t) in special for t in body):
        raise DataError("the text holds no tokens but special ones (BOS, EOS, padding)", hint="give some ordinary text")
    return contexts


@torch.no_grad()
def _run(model: LoadedJSAE, lm: Any, contexts: list[np.ndarray], skip: bool) -> tuple[Any, Any, Any, torch.Tensor]:
    """Codes and J (on the CPU) of every token of ``contexts`` the JSAE reads (their BOS left out
    when ``skip``)."""
    xs = []
    for c in contexts:
        x = lm.forward(torch.from_numpy(c.astype(np.int64))[None]).float()[0]  # [T', d]
        xs.append(x[1:] if skip else x)
    out = model.jsae(torch.cat(xs).to(model.device), None, jacobian="value")
    cpu = [type(code)(*(t.cpu() for t in code)) for code in (out.code_in, out.code_out, out.jac_out)]  # one copy each
    return *cpu, out.J.cpu()


def _active(code: Any, b: int, top: int) -> tuple[list[Latent], list[int]]:
    values, ids = code.values[b], code.indices[b]
    order = torch.argsort(values, descending=True)
    active = [int(ids[i]) for i in order if values[i] > 0]
    return [Latent(int(ids[i]), round(float(values[i]), 5), "") for i in order[:top] if values[i] > 0], active


def _token(b: int, text: str, code_in: Any, code_out: Any, jac_out: Any, J: torch.Tensor, top: int) -> TokenTrace:
    inputs, active_in = _active(code_in, b, top)
    outputs, active_out = _active(code_out, b, top)
    Jb = J[b]  # [k_out, k_in]: rows jac_out's latents, columns code_in's
    flat = torch.argsort(Jb.abs().flatten(), descending=True)[:top]
    k_in = Jb.shape[1]
    entries = [Entry(int(code_in.indices[b, f % k_in]), int(jac_out.indices[b, f // k_in]), round(float(Jb.flatten()[f]), 6))
               for f in flat.tolist() if Jb.flatten()[f] != 0]
    return TokenTrace(b, text, inputs, outputs, entries, active_in, active_out)


def _links(code_in: Any, jac_out: Any, J: torch.Tensor, texts: list[str], top: int, n: int) -> list[Link]:
    """The connections carrying most of Σ|J| over the text, and the tokens where each acts."""
    both, keys = active_pairs(code_in, jac_out, n)  # [B, k_out, k_in] each
    values = J[both].double()
    rows = torch.arange(J.shape[0])[:, None, None].expand_as(both)[both]
    uniq, inverse, stats = reduce_pairs(keys[both], pair_stats(values))
    counts, sums, signed = stats[:, 0], stats[:, 1], stats[:, 2]
    links = []
    for u in torch.argsort(sums, descending=True)[:top].tolist():
        where = torch.nonzero(inverse == u).squeeze(1)
        where = where[torch.argsort(values[where].abs(), descending=True)][:8]
        acts = [{"position": int(rows[w]), "token": texts[int(rows[w])], "J": round(float(values[w]), 6)} for w in where]
        key = int(uniq[u])
        links.append(Link(key // n, key % n, "", "", round(float(sums[u]), 6), round(float(signed[u] / counts[u]), 6),
                          int(counts[u]), acts))
    return links


def _label_all(tokens: list[TokenTrace], links: list[Link], labels: dict[tuple[str, int], str]) -> None:
    for t in tokens:
        for x in t.inputs:
            x.label = labels.get(("in", x.latent), "")
        for x in t.outputs:
            x.label = labels.get(("out", x.latent), "")
    for c in links:
        c.input_label, c.output_label = labels.get(("in", c.input), ""), labels.get(("out", c.output), "")


def write_html(result: TraceResult, path: str) -> None:
    """One self-contained page (no network): the text as a strip of tokens; a token shows its
    latents and J entries, a latent shades every token where it is active. Every token is
    escaped (autoescape, and JSON through ``tojson``, which escapes ``<``, ``>`` and ``&``)."""
    import os
    import tempfile
    from importlib import resources

    from jinja2 import Environment, FileSystemLoader, select_autoescape

    folder = resources.files("jsaectl") / "assets" / "trace"
    env = Environment(loader=FileSystemLoader(str(folder)), autoescape=select_autoescape(["html"]))
    page = env.get_template("trace.html").render(result=result, data=result.to_json(),
                                                  title=" ".join(t.token for t in result.tokens[:8]).strip())
    fd, tmp = tempfile.mkstemp(prefix=".trace-", suffix=".html", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(page)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)  # whole or not at all
