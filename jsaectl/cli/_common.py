"""What every command shares: the stderr console, option aliases, --config files, reading a
store from stdin, writing the one line (or JSON document) of stdout, and progress bars."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console, ConsoleDimensions
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from jsaectl.errors import ConfigError, JsaectlError
from jsaectl.units import format_count

class _Console(Console):
    """A rich console that lets a closed pipe (``| head``) end the command through the CLI's
    error boundary (exit 141, nothing said), not rich's own ``SystemExit(1)``; and that, writing
    to a file or a pipe, draws tables at their natural width instead of squeezing them into 80
    columns."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError

    @property
    def size(self) -> ConsoleDimensions:
        found = super().size
        if self.is_terminal or self._width is not None:
            return found
        return ConsoleDimensions(200, found.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


# Everything for humans goes to stderr; stdout carries only what the next stage reads.
err = _Console(stderr=True, highlight=False, soft_wrap=True)


def out_console(**kwargs: Any) -> Console:
    """The console for results that go to stdout (maxact, compare)."""
    return _Console(highlight=False, **kwargs)


# --------------------------------------------------------------------------------------------
# --config FILE.yaml


def _load_config(ctx: typer.Context, param: Any, value: Path | None) -> Path | None:
    """Eager callback: the file's keys become the command's defaults, so flags still win."""
    if value is None:
        return None
    try:
        data = yaml.safe_load(Path(value).read_text())
    except FileNotFoundError:
        raise typer.BadParameter(f"no such file: {value}") from None
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{value} is not a text file (a YAML config is UTF-8 text)") from None
    except OSError as e:
        raise typer.BadParameter(f"cannot read {value}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise typer.BadParameter(f"{value} is not valid YAML: {str(e).splitlines()[0]}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{value} must hold a mapping of option: value")
    # A key is an option's long name (`context-size`, `json`) or its parameter name (`context_size`).
    aliases: dict[str, str] = {}
    shown: set[str] = set()
    for p in ctx.command.params:
        if p.name in ("config", "help"):
            continue
        longs = [o[2:] for o in p.opts if o.startswith("--")]
        shown.add(longs[0] if longs else p.name)
        for alias in (p.name, *longs):
            aliases[alias.replace("-", "_")] = p.name
    keys = {str(k): str(k).replace("-", "_") for k in data}
    unknown = sorted(k for k, norm in keys.items() if norm not in aliases)
    if unknown:
        raise typer.BadParameter(f"unknown key(s) in {value}: {', '.join(unknown)} (valid: {', '.join(sorted(shown))})")
    ctx.default_map = {**(ctx.default_map or {}), **{aliases[keys[str(k)]]: v for k, v in data.items()}}
    return value


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file of option values (keys are option names, e.g. `tokens: 2M`); flags given on the command line win.",
        is_eager=True,
        callback=_load_config,
        dir_okay=False,
    ),
]
OutOpt = Annotated[str | None, typer.Option("--out", "-o", help="Where to write the store: a path or an fsspec URL (s3://…).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing store at --out that was made with a different config.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document (the store URL and summary figures) instead of the URL.")]
ResultJsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON document on stdout instead of the table.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")]


# --------------------------------------------------------------------------------------------
# stdin / stdout


def store_from_arg(value: str | None) -> str:
    """A store argument, or (when it is missing or ``-``) one line of stdin."""
    if value not in (None, "-"):
        return value
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        raise ConfigError("no store given, and stdin is a terminal",
                          hint="pass the store path, or pipe the previous stage in: jsaectl harvest | jsaectl train")
    line = stdin.readline().strip()
    if not line:
        raise JsaectlError("no store arrived on stdin", hint="the previous stage printed nothing; see its error above")
    if line.startswith("{"):  # the previous stage ran with --json
        try:
            return json.loads(line)["store"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise JsaectlError("stdin holds JSON without a \"store\" key", hint="pipe a jsaectl stage into this one") from None
    return line


def stores_from_args(args: list[str] | None) -> tuple[str, ...]:
    """Several store arguments, or (when none or ``-``) one per line of stdin."""
    if args and args != ["-"]:
        return tuple(args)
    if sys.stdin is None or sys.stdin.isatty():
        raise ConfigError("no stores given, and stdin is a terminal", hint="pass the stores, or pipe them in one per line")
    lines = []
    for line in sys.stdin:
        line = line.strip()
        if line.startswith("{"):  # a stage's --json line
            try:
                line = json.loads(line).get("store", "")
            except (json.JSONDecodeError, AttributeError):
                raise JsaectlError("stdin holds JSON without a \"store\" key", hint="pipe a jsaectl stage into this one") from None
        if line:
            lines.append(line)
    return tuple(lines)


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """``"0.01,0.02"`` -> ``(0.01, 0.02)``, sorted (for --thresholds-like options)."""
    try:
        return tuple(sorted(float(p) for p in text.split(",") if p.strip()))
    except ValueError:
        raise ConfigError(f"{option} must be numbers separated by commas, not {text!r}") from None


def emit(store: str, summary: dict[str, Any], as_json: bool) -> None:
    """The only thing a command writes to stdout."""
    sys.stdout.write((json.dumps(summary) if as_json else store) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# Progress


class _CountColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else format_count(task.total)
        return Text(f"{format_count(task.completed)}/{total} {self.unit}")


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{format_count(speed)} {self.unit}/s")


def _format_metrics(metrics: dict[str, float]) -> str:
    # `wait` is a share of the time (train's data wait)
    return "  ".join(f"{k} {v:.0%}" if k == "wait" else f"{k} {v:.3g}" for k, v in metrics.items())


class RichReporter:
    """The CLI's :class:`jsaectl.progress.Reporter`: rich progress bars on a terminal; on a file
    or a pipe (stderr redirected), plain complete lines instead — one when a phase starts, one
    at most every 10% or 30 seconds, one when it ends — that no width cuts or wraps."""

    PLAIN_EVERY = 30.0  # seconds between plain progress lines at most

    def __init__(self, console: Console = err) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: Any = None
        self._plain: dict[str, Any] | None = None

    def start(self, description: str, total: int | None, unit: str) -> None:
        self.finish()
        if not self.console.is_terminal:
            self._plain = {"name": description, "total": total, "unit": unit, "done": 0, "began": time.monotonic(),
                           "said_at": time.monotonic(), "said_done": 0, "metrics": ""}
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            _CountColumn(unit),
            _RateColumn(unit),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, metrics="")

    def advance(self, n: int, **metrics: float) -> None:
        if self._plain is not None:
            p = self._plain
            p["done"] += n
            p["metrics"] = _format_metrics(metrics) if metrics else p["metrics"]
            tenth = p["total"] and p["done"] - p["said_done"] >= p["total"] / 10
            if tenth or time.monotonic() - p["said_at"] >= self.PLAIN_EVERY:
                self._say_plain()
        elif self._progress is not None:
            fields = {"metrics": _format_metrics(metrics)} if metrics else {}
            self._progress.update(self._task, advance=n, **fields)

    def _say_plain(self, final: bool = False) -> None:
        p = self._plain
        elapsed = time.monotonic() - p["began"]
        total = f"/{format_count(p['total'])}" if p["total"] else ""
        share = f" ({p['done'] / p['total']:.0%})" if p["total"] and not final else ""
        rate = f", {format_count(p['done'] / elapsed)} {p['unit']}/s" if elapsed > 0 and p["done"] else ""
        when = f" in {elapsed:.0f} s" if final else ""
        line = f"{p['name']}: {format_count(p['done'])}{total} {p['unit']}{share}{when}{rate}"
        self.console.print(line + (f"  {p['metrics']}" if p["metrics"] else ""), markup=False, highlight=False, soft_wrap=True)
        p["said_at"], p["said_done"] = time.monotonic(), p["done"]

    def note(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def finish(self) -> None:
        if self._plain is not None:
            self._say_plain(final=True)
            self._plain = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
