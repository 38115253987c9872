"""What every command shares: the stderr console, --config files, reading a
store from stdin, writing the one line (or JSON document) of stdout, and progress bars."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

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

from jsaectl.errors import ConfigError, JsaectlError, shown
from jsaectl.options import OUTPUT_PARAMETER, Outputs, check_given, describe
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
    """The console for results that go to stdout (the commands that write no store)."""
    return _Console(highlight=False, **kwargs)


# --------------------------------------------------------------------------------------------
# --config FILE.yaml


class _StrictLoader(yaml.SafeLoader):
    """YAML as a config file may hold it: no anchors or aliases (whose expansion has no limit),
    no key given twice (PyYAML would keep the last one silently)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            mark = self.peek_event().start_mark
            raise ConfigError(f"YAML anchors and aliases are not allowed in a config file (line {mark.line + 1})",
                              hint="write each value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"the key {shown(key)} is given twice (line {key_node.start_mark.line + 1})",
                                  hint="give each option once")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config: no such file: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path} is not UTF-8 text", hint="a config file is YAML text, key: value per line") from None
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror or e}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader, stricter)
    except ConfigError as e:
        raise ConfigError(f"--config {path}: {e.message}", hint=e.hint) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping of option: value, not {describe(data)}",
                          hint="e.g. tokens: 2M on a line of its own")
    return data


def load_config(ctx: typer.Context, value: Path | None, cls: type) -> Path | None:
    """Eager callback of --config for a command made from config class ``cls``: the file's keys
    become the command's defaults (so flags still win), each value held to its option's declared
    type before click converts anything."""
    if value is None:
        return None
    data = _read_yaml(Path(value))
    # A key is an option's long name (`context-size`, `json`) or its parameter name (`context_size`).
    names = {p.name: next((o[2:] for o in p.opts if o.startswith("--")), p.name)
             for p in ctx.command.params if p.name not in ("config", "help")}
    aliases = {alias.replace("-", "_"): name for name, long in names.items() for alias in (name, long)}
    outputs = {OUTPUT_PARAMETER.format(f.name): f.name for f in dataclasses.fields(Outputs)}
    given: dict[str, Any] = {}
    for key, raw in data.items():
        name = aliases.get(str(key).replace("-", "_"))
        if name is None:
            raise ConfigError(f"--config {value}: unknown key {shown(key)}", hint="valid keys: " + ", ".join(sorted(names.values())))
        where = f"--config {value}"
        given[name] = check_given(Outputs, outputs[name], raw, where) if name in outputs else check_given(cls, name, raw, where)
    ctx.default_map = {**(ctx.default_map or {}), **given}
    return value


# --------------------------------------------------------------------------------------------
# stdin / stdout

# A store URL on stdin longer than this is not a store URL (and is not echoed back whole).
MAX_STDIN_LINE = 4096


def _stdin_store(line: str) -> str:
    """One line of stdin as a store URL: the URL itself, or a stage's --json document."""
    if len(line) > MAX_STDIN_LINE:
        raise JsaectlError(f"stdin's line is longer than {MAX_STDIN_LINE:,} characters, which no store URL is",
                           hint="pipe a jsaectl stage into this one, or pass the store as an argument")
    if not line.startswith("{"):
        return line
    try:
        doc = json.loads(line)
    except json.JSONDecodeError:
        raise JsaectlError("stdin holds a line that starts like JSON but is not", hint="pipe a jsaectl stage into this one") from None
    if not isinstance(doc, dict) or "store" not in doc:
        raise JsaectlError("stdin holds JSON without a \"store\" key", hint="pipe a jsaectl stage into this one")
    store = doc["store"]
    if not isinstance(store, str) or not store:
        raise JsaectlError(f"stdin's JSON has \"store\": {describe(store)}, which is not a store URL (text)",
                           hint="pipe a jsaectl stage into this one")
    return store


def store_from_arg(value: str | None) -> str:
    """A store argument, or (when it is missing or ``-``) one line of stdin."""
    if value not in (None, "-"):
        return value
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        raise ConfigError("no store given, and stdin is a terminal",
                          hint="pass the store path, or pipe the previous stage in: jsaectl harvest | jsaectl train")
    line = stdin.readline(MAX_STDIN_LINE + 2).strip()
    if not line:
        raise JsaectlError("no store arrived on stdin", hint="the previous stage printed nothing; see its error above")
    return _stdin_store(line)


def stores_from_args(args: list[str] | None) -> tuple[str, ...]:
    """Several store arguments, or (when none or ``-``) one per line of stdin (at least one)."""
    if args and args != ["-"]:
        return tuple(args)
    if sys.stdin is None or sys.stdin.isatty():
        raise ConfigError("no stores given, and stdin is a terminal", hint="pass the stores, or pipe them in one per line")
    lines = []
    while line := sys.stdin.readline(MAX_STDIN_LINE + 2):
        if line.strip():
            lines.append(_stdin_store(line.strip()))
    if not lines:
        raise JsaectlError("no stores arrived on stdin", hint="the previous stage printed nothing; see its error above")
    return tuple(lines)


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
