"""Options declared once: each stage's config dataclass is the only place an option exists.

A field made with :func:`option` carries what the command line needs beside its type and
default: a short alias, whether it is part of the store's identity (what the store holds, as
opposed to how the stage runs), and how its text is parsed (``kind``). Its help is the
docstring written under it in the class body (read from the source), so the library's
documentation and ``--help`` are one text. ``jsaectl.cli`` turns a config class into a Typer
command (cli/_generate.py); a test checks that every field has help and that every CLI
default is the dataclass default.

Configs are frozen: checks that need nothing but the values run in ``__post_init__``; values
that depend on a store are resolved into a new config (``dataclasses.replace``), never
written back into the caller's.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from jsaectl.errors import ConfigError
from jsaectl.units import format_count, parse_count

# How a kind of option is written on the command line: (parse text -> value, value -> text).


def _parse_floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(sorted(float(p) for p in str(text).split(",") if p.strip()))
    except ValueError:
        raise ConfigError(f"{name} must be numbers separated by commas, not {text!r}") from None


def _parse_pair(sep: str, what: str) -> Callable[[str, str], tuple[int, int]]:
    def parse(text: str, name: str) -> tuple[int, int]:
        try:
            a, b = (int(p) for p in str(text).split(sep))
        except ValueError:
            raise ConfigError(f"{name} must look like {what}, not {text!r}") from None
        return a, b

    return parse


def _exact_count(value: int) -> str:
    """``2M`` where that reads back as the same number, else the digits (131072 is not 131.1k)."""
    text = format_count(value)
    return text if parse_count(text) == value else str(value)


def _parse_count0(text: str, name: str) -> int:
    return 0 if str(text).strip() == "0" else parse_count(text, name)


KINDS: dict[str, tuple[Callable[[str, str], Any], Callable[[Any], str]]] = {
    "count": (lambda text, name: parse_count(text, name), _exact_count),  # 2M, 500k, 1.5e6
    "count0": (_parse_count0, lambda v: "0" if v == 0 else _exact_count(v)),  # a count, or 0 for none
    "floats": (_parse_floats, lambda v: ",".join(f"{x:g}" for x in v)),  # 0.01,0.02
    "shard": (_parse_pair("/", "i/n (e.g. 0/4)"), lambda v: f"{v[0]}/{v[1]}"),
    "connection": (_parse_pair(":", "IN:OUT (two latent ids)"), lambda v: f"{v[0]}:{v[1]}"),
}


def option(default: Any = dataclasses.MISSING, *, short: str | None = None, identity: bool = True,
           kind: str | None = None, flag: str | None = None, argument: bool = False, required: bool = False,
           negatable: bool | None = None, cli: bool = True, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field that is also a command-line option.

    ``short``: a one-letter alias (``-n``). ``identity``: part of what the store holds (False for
    how it runs: device, batch size of a pass, --out …). ``kind``: how the text is parsed (see
    KINDS; None: by its type). ``flag``: the option's name when not ``--field-name``.
    ``argument``: positional. ``required``: the command line must give it (the default then only
    means "not given"). ``negatable``: a boolean with a ``--no-`` form (default: when True by
    default or None). ``cli``: False for fields only the library sets."""
    if kind is not None and kind not in KINDS:
        raise ValueError(kind)
    meta = {"short": short, "identity": identity, "kind": kind, "flag": flag, "argument": argument,
            "required": required, "negatable": negatable, "cli": cli}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"jsaectl": meta})


def meta(f: dataclasses.Field) -> dict[str, Any]:
    return f.metadata.get("jsaectl") or {"short": None, "identity": True, "kind": None, "flag": None, "argument": False,
                                         "required": False, "negatable": None, "cli": True}


def flag_name(f: dataclasses.Field) -> str:
    return meta(f)["flag"] or "--" + f.name.replace("_", "-")


@lru_cache(maxsize=None)
def docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (attribute docstrings are not kept
    at run time, so they are read from the class's source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    found = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            found[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return found


def identity(cfg: Any) -> dict[str, Any]:
    """The options that define a store's content (compared when a stage is re-run)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if meta(f)["identity"]}


def runtime(cfg: Any) -> dict[str, Any]:
    """The options that say how a stage runs (free to change on resume)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if not meta(f)["identity"]}


def check_finite(cfg: Any) -> None:
    """NaN and inf are no option's value (in a store's config, NaN != NaN would make every
    re-run a different run)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{flag_name(f)} must be a finite number, not {value}", hint="NaN and inf are not valid option values")


def positive(cfg: Any, *names: str, zero: bool = False) -> None:
    """Refuse a value that is not positive (or negative, with ``zero``) among ``names`` (None is fine)."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for name in names:
        value = getattr(cfg, name)
        if value is not None and (value < 0 if zero else value <= 0):
            raise ConfigError(f"{flag_name(fields[name])} must be {'>= 0' if zero else 'positive'}, not {value}")


def one_of(cfg: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        f = next(f for f in dataclasses.fields(cfg) if f.name == name)
        raise ConfigError(f"{flag_name(f)} must be one of {', '.join(choices)}, not {value!r}")
