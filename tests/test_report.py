"""Exploring a jacobian store: `jsaectl connections` queries and the HTML report, the report
checked in a real headless browser (Debian's chromium; the test is skipped, saying so, where
it is not installed — .ci/run installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from jsaectl import store as st
from jsaectl.cli import app
from jsaectl.jacobian import JacobianConfig, jacobian
from jsaectl.report import _lam_start
from jsaectl.text import pack

runner = CliRunner()
SCRIPT = "<script>document.body.dataset.pwned='1'</script>"


@pytest.fixture(scope="module")
def jac(jsae_store, tmp_path_factory) -> str:
    return jacobian(JacobianConfig(jsae=jsae_store, tokens=4000, out=str(tmp_path_factory.mktemp("q") / "jac.zarr"))).store


def _all(jac: str) -> dict[str, np.ndarray]:
    g = zarr.open_group(jac, mode="r")["connections"]
    return {name: g[name][...] for name in ("input", "output", "strength", "count", "mean_abs")}


def _query(*args: str) -> list[dict]:
    result = runner.invoke(app, ["connections", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["connections"]


def test_connections_queries_equal_the_full_table(jac):
    every = _all(jac)
    top = _query(jac, "--top", "7")
    assert [(c["input"], c["output"]) for c in top] == list(zip(every["input"][:7].tolist(), every["output"][:7].tolist()))
    out = int(every["output"][3])
    into = _query(jac, "--output-latent", str(out), "--top", "0")
    mask = every["output"] == out
    assert [(c["input"], c["output"]) for c in into] == list(zip(every["input"][mask].tolist(), every["output"][mask].tolist()))
    a, b = int(every["input"][0]), int(every["input"][5])
    both = _query(jac, "--input-latent", str(a), "--input-latent", str(b), "--top", "0")
    mask = np.isin(every["input"], [a, b])
    assert sorted((c["input"], c["output"]) for c in both) == sorted(zip(every["input"][mask].tolist(), every["output"][mask].tolist()))
    assert [c["strength"] for c in both] == sorted((c["strength"] for c in both), reverse=True)
    pair = _query(jac, "--input-latent", str(a), "--output-latent", str(int(every["output"][0])))
    assert len(pair) == 1 and pair[0]["count"] == int(every["count"][0])
    by_count = _query(jac, "--sort", "count", "--top", "5")
    assert [c["count"] for c in by_count] == sorted(every["count"].tolist(), reverse=True)[:5]
    threshold = float(every["strength"][10])
    strong = _query(jac, "--min-strength", str(threshold), "--top", "0")
    assert len(strong) == int((every["strength"] >= np.float32(threshold)).sum()) >= 11


def test_connections_csv_and_one_line_errors(jac):
    result = runner.invoke(app, ["connections", jac, "--top", "3", "--csv"])
    assert result.exit_code == 0 and result.stdout.splitlines()[0].startswith("input,output,strength")
    assert len(result.stdout.splitlines()) == 4
    bad = runner.invoke(app, ["connections", jac, "--output-latent", "100000"])
    assert bad.exit_code == 2 and "out of range" in bad.stderr and bad.stdout == ""


def test_a_jacobian_store_stands_for_its_jsae_everywhere(jac, jsae_store, tmp_path):
    via_jac = runner.invoke(app, ["maxact", jac, "--latent", "1", "--json"])
    via_jsae = runner.invoke(app, ["maxact", jsae_store, "--latent", "1", "--json"])
    assert via_jac.exit_code == 0 and json.loads(via_jac.stdout)["latents"] == json.loads(via_jsae.stdout)["latents"]
    wrong = runner.invoke(app, ["train", jac, "-o", str(tmp_path / "x.zarr")])
    assert wrong.exit_code == 1 and "was made from is" in wrong.stderr  # the refusal names the right store


# ---------------------------------------------------------------------------------------------
# The report


@pytest.fixture(scope="module")
def hostile(acts_store, jsae_store, tmp_path_factory) -> str:
    """A jacobian store whose vocabulary makes the most frequent token `<script>…</script>`:
    the report must show it as text."""
    root = tmp_path_factory.mktemp("hostile")
    acts = str(shutil.copytree(acts_store, root / "acts.zarr"))
    jsae = str(shutil.copytree(jsae_store, root / "jsae.zarr"))
    g = zarr.open_group(store=st.checked_store(acts, read_only=False), mode="r+")
    tokens = g["tokens"][...]
    common = int(np.bincount(tokens).argmax())
    vocab = g["vocab"][...].astype(object)
    vocab[common] = SCRIPT
    st.write_array(g, "vocab", vocab)
    data, offsets = g["vocab_bytes/data"][...], g["vocab_bytes/offsets"][...]
    pieces = [data[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]
    pieces[common] = SCRIPT.encode()
    data, offsets = pack(pieces)
    st.write_array(g["vocab_bytes"], "data", data)
    st.write_array(g["vocab_bytes"], "offsets", offsets)
    j = zarr.open_group(store=st.checked_store(jsae, read_only=False), mode="r+")
    j.attrs["jsaectl"] = {**j.attrs["jsaectl"], "acts_store": acts}
    return jacobian(JacobianConfig(jsae=jsae, tokens=6000, out=str(root / "jac.zarr"))).store


@pytest.fixture(scope="module")
def report_dir(hostile, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "rep"
    result = runner.invoke(app, ["report", hostile, "--out", str(out), "--connections", "15", "--tokens", "6000", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["index"] == str(out / "index.html") and summary["connections"] == 15
    return out


def test_the_report_is_self_contained_small_and_escapes_tokens(report_dir):
    files = [p for p in report_dir.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5e6
    pages = [p for p in files if p.suffix == ".html"]
    assert len(list((report_dir / "connections").glob("*.html"))) == 15 and len(list((report_dir / "latents").glob("*.html"))) > 2
    for page in pages:
        html = page.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", html), page  # nothing fetched from the network
        assert SCRIPT not in html, page  # tokens are text, never markup
    assert any("&lt;script&gt;" in p.read_text() for p in pages)


class _Links(HTMLParser):
    """Every href and src of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in ("href", "src") and v is not None]


def test_every_link_in_the_report_leads_to_a_page_it_wrote(report_dir):
    checked, dead, external = 0, [], []
    for page in sorted(report_dir.rglob("*.html")):
        parser = _Links()
        parser.feed(page.read_text())
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme in ("http", "https", "mailto", "javascript"):
                external.append((page.name, link))
                continue
            if not parts.path:  # a fragment-only link stays on the page
                continue
            checked += 1
            target = (page.parent / unquote(parts.path)).resolve()
            if not (target.is_file() and target.is_relative_to(report_dir.resolve())):
                dead.append(f"{page.relative_to(report_dir)} -> {link}")
    assert not external, external  # the report is self-contained
    assert not dead, f"{len(dead)} of {checked} links lead nowhere: {dead[:10]}"
    assert checked > 20  # the walk found the links it should check


def test_the_lambda_curve_starts_at_0(report_dir):
    html = (report_dir / "index.html").read_text()
    chart = re.search(r"<h3>λ</h3>.*?</svg>\s*(<p[^>]*>[^<]*</p>)?", html, re.S).group(0)
    assert re.search(r"y=\"132\" class=\"tick\">0</text>", chart)  # the y axis starts at 0, not at the least λ logged
    assert "before the first logged step (10)" in chart  # the tiny run's 5.85-step warm-up was never logged: said so
    meta = {"config": {"lam_warmup": 0.05}, "n_steps": 1000, "lam": 2.0}  # λ ramps up over steps 0–50
    xs, ys, note = _lam_start(meta, np.array([10.0, 20.0, 60.0]), np.array([2 * 9 / 50, 2 * 19 / 50, 2.0]))
    assert (xs[0], ys[0], note) == (1, 0, "")  # logged on the ramp: drawn down to the 0 that step 1 used
    xs, ys, note = _lam_start(meta, np.array([10.0, 20.0]), np.array([0.5, 0.5]))
    assert xs[0] == 10 and note == ""  # a history off the schedule gets no invented point


def test_a_report_is_replaced_only_with_overwrite_and_never_a_foreign_folder(hostile, report_dir, tmp_path):
    again = runner.invoke(app, ["report", hostile, "--out", str(report_dir)])
    assert again.exit_code == 1 and "already holds a report" in again.stderr
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = runner.invoke(app, ["report", hostile, "--out", str(foreign), "--overwrite"])
    assert refused.exit_code == 1 and "holds no jsaectl report" in refused.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"


def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _browse(url: str, *extra: str, tmp: Path) -> subprocess.CompletedProcess:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium here (Debian: apt-get install chromium); the report's browser test did not run")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr",
             "--v=0", "--virtual-time-budget=3000", *extra, url]
    return subprocess.run([browser, *flags], capture_output=True, text=True, timeout=120)


def test_the_report_works_in_a_real_browser(report_dir, tmp_path):
    index = f"file://{report_dir}/index.html"
    proc = _browse(index + "#selftest", "--dump-dom", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-ready="1"' in dom  # the script ran
    check = json.loads(re.search(r"data-selftest=\"([^\"]+)\"", dom).group(1).replace("&quot;", '"'))
    assert check["lit"] == check["expected"] > 0  # clicking a latent highlights exactly its edges
    assert check["pinnedRows"] == check["expected"]  # and its rows in the table
    assert check["rows"] == 15 and 1 <= check["byId"] <= 15 and check["none"] == 0  # the filter box filters
    assert 'class="edge' in dom and 'class="node in' in dom and "<svg class=\"histogram\"" in dom
    assert "data-pwned" not in dom and "&lt;script&gt;" in dom  # a <script> token is text, never run
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    for page in sorted((report_dir / "latents").glob("*.html"))[:2] + sorted((report_dir / "connections").glob("*.html"))[:2]:
        seen = _browse(f"file://{page}", "--dump-dom", tmp=tmp_path)
        assert 'data-ready="1"' in seen.stdout and 'class="example"' in seen.stdout
        assert not [line for line in seen.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    shot = tmp_path / "index.png"
    _browse(index, f"--screenshot={shot}", "--window-size=1300,1600", tmp=tmp_path)
    assert shot.stat().st_size > 20_000


def test_the_report_names_the_run_the_jsae_was_trained_in(jsae_store, acts_store, tmp_path):
    jsae = str(shutil.copytree(jsae_store, tmp_path / "jsae.zarr"))
    g = zarr.open_group(jsae, mode="r+")
    g.attrs["jsaectl"] = {**g.attrs["jsaectl"], "acts_store": acts_store,
                          "wandb": {"id": "abc123", "url": None, "project": "jsaes", "entity": "lab", "name": "L1"}}
    jac = jacobian(JacobianConfig(jsae=jsae, tokens=1000, out=str(tmp_path / "jac.zarr"))).store
    result = runner.invoke(app, ["report", jac, "--out", str(tmp_path / "r"), "--tokens", "1000", "--connections", "3"])
    assert result.exit_code == 0, result.output
    assert "Weights &amp; Biases: lab/jsaes/abc123" in (tmp_path / "r" / "index.html").read_text()
