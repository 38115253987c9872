"""Options declared once: each stage's config dataclass is the only place an option exists.

A field made with :func:`option` carries everything the command line needs beside its type
and default: its help, a short alias, whether it is part of the store's identity (what the
store holds, as opposed to how the stage runs), how its text is parsed (``kind``), and
whether it names a store the command reads (``reads``; an argument that may come from stdin
says how: ``stdin="line"`` or ``"lines"``). Choices are ``Literal`` types, so ``--help`` lists
them and a type checker sees a typo. The ways a command can print its result (``--json``,
``--csv``, ``--plot``, ``--html``) are declared once here, as the fields of :class:`Outputs`; a
config class names the ones its command offers in ``OUTPUTS``. ``jsaectl.cli`` turns a config
class into a Typer command (cli/_generate.py).

Every value is held to its declared type wherever it comes from: the command line (parsed by
click against the type), a ``--config`` file (:func:`check_given`, before anything converts
it), or Python (:func:`check_types`, run by every config's
``__post_init__``): ``true`` is not 1, ``[a, b]`` is not a path, ``null`` is no value.

Configs are frozen: checks that need nothing but the values run in ``__post_init__``; values
that depend on a store are resolved into a new config (``dataclasses.replace``), never
written back into the caller's.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Literal

from jsaectl.errors import ConfigError, shown
from jsaectl.units import format_count, parse_count

# --------------------------------------------------------------------------------------------
# How a kind of option is written as text: (parse text -> value, value -> text).


def _parse_floats(text: str, name: str) -> tuple[float, ...]:
    try:
        values = tuple(sorted(float(p) for p in str(text).split(",") if p.strip()))
    except ValueError:
        raise ConfigError(f"{name} must be numbers separated by commas, not {shown(text)}") from None
    return values


def _parse_pair(sep: str, what: str) -> Callable[[str, str], tuple[int, int]]:
    def parse(text: str, name: str) -> tuple[int, int]:
        try:
            a, b = (int(p) for p in str(text).split(sep))
        except ValueError:
            raise ConfigError(f"{name} must look like {what}, not {shown(text)}") from None
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
# What a config file or a JSON line may give for each kind, besides the text above.
_KIND_EXPECTS = {"count": "a count such as 2000000 or 2M", "count0": "a count such as 20000 or 20k, or 0",
                 "floats": "numbers: a list, or text such as 0.01,0.02", "shard": "text i/n such as 0/4",
                 "connection": "text IN:OUT such as 45:123"}


# --------------------------------------------------------------------------------------------
# Fields


@dataclasses.dataclass(frozen=True)
class Meta:
    help: str
    short: str | None = None
    identity: bool = True
    kind: str | None = None
    flag: str | None = None
    argument: bool = False
    required: bool = False
    negatable: bool | None = None
    reads: bool = False
    """The value names a store the command reads (and follows: see store.lineage)."""
    stdin: Literal["line", "lines"] | None = None
    """An argument that, missing or ``-``, is read from stdin: one line, or every line."""
    metavar: str | None = None


def option(default: Any = dataclasses.MISSING, *, help: str, short: str | None = None, identity: bool = True,
           kind: str | None = None, flag: str | None = None, argument: bool = False, required: bool = False,
           negatable: bool | None = None, reads: bool = False, stdin: Literal["line", "lines"] | None = None,
           metavar: str | None = None) -> Any:
    """A config field that is also a command-line option.

    ``help``: what ``--help`` and docs/cli.md say. ``short``: a one-letter alias (``-n``).
    ``identity``: part of what the store holds (False for how it runs: device, batch size of a
    pass, --out …). ``kind``: how the text is parsed (see KINDS; None: by its type). ``flag``:
    the option's name when not ``--field-name``. ``argument``: positional. ``required``: the
    command line must give it (the default then only means "not given"). ``negatable``: a
    boolean with a ``--no-`` form (default: when True by default or None). ``reads``: it names a
    store the command reads. ``stdin``: an
    argument read from stdin when missing (``reads`` too). ``metavar``: how ``--help`` names the
    value (an argument's default: its name in capitals)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(kind)
    meta = Meta(" ".join(help.split()), short, identity, kind, flag, argument, required, negatable,
                reads or stdin is not None, stdin, metavar)
    return dataclasses.field(default=default, metadata={"jsaectl": meta})


def meta(f: dataclasses.Field) -> Meta:
    found = f.metadata.get("jsaectl")
    if found is None:
        raise TypeError(f"{f.name} is not declared with option()")
    return found


def flag_name(f: dataclasses.Field) -> str:
    return meta(f).flag or "--" + f.name.replace("_", "-")


def field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def identity(cfg: Any) -> dict[str, Any]:
    """The options that define a store's content (compared when a stage is re-run)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if meta(f).identity}


def runtime(cfg: Any) -> dict[str, Any]:
    """The options that say how a stage runs (free to change on resume)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if not meta(f).identity}


def read_stores(cfg: Any) -> list[str]:
    """The stores the config names as read (``reads`` fields), in field order."""
    out: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if meta(f).reads and value:
            out += list(value) if isinstance(value, (list, tuple)) else [value]
    return out


# --------------------------------------------------------------------------------------------
# Outputs: how a command prints its result, declared once for every command


OUTPUT_PARAMETER = "output_{}"  # a command's parameter for --json is output_json (its --config key: json)


@dataclasses.dataclass(frozen=True)
class Outputs:
    """What a command was asked to print, besides its tables on stderr. A text field names a
    FILE to write (checked like --out: never a store the command reads or follows)."""

    json: bool = option(False, identity=False, help=(
        "Print the result on stdout as one JSON document, for scripts: every figure shown, numbers as numbers "
        "and latent ids as integers."))
    csv: bool = option(False, identity=False, help=(
        "Print the result as CSV on stdout (a header, then one row each) instead of the table."))
    plot: str | None = option(None, identity=False, metavar="FILE", help=(
        "Also draw the result as a PNG figure to FILE (needs matplotlib: pip install 'jsaectl\\[plot]')."))
    html: str | None = option(None, identity=False, metavar="FILE", help=(
        "Also write the result as one self-contained HTML page to FILE (opens from disk, no network)."))

    def __post_init__(self) -> None:
        check_types(self)
        if self.json and self.csv:
            raise ConfigError("--json and --csv are exclusive: stdout carries one of them", hint="choose one")

    def files(self) -> list[tuple[str, str]]:
        """(flag, path) of every file asked for."""
        return [(flag_name(f), getattr(self, f.name)) for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), str)]


# --------------------------------------------------------------------------------------------
# Types


@lru_cache(maxsize=None)
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def base_type(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True
    return tp, False


def choices(cls: type, name: str) -> tuple[str, ...] | None:
    """The allowed values of a choice option (a Literal type), or None."""
    tp, _ = base_type(hints(cls)[name])
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def is_int(v: Any) -> bool:
    """An integer (a bool is not one, as JSON and YAML see it)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An integer or a float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _expects(tp: Any) -> tuple[Callable[[Any], bool], str]:
    """(does a value have this type, what the type is called in an error)."""
    if tp is bool:
        return (lambda v: isinstance(v, bool)), "true or false"
    if tp is int:
        return is_int, "an integer"
    if tp is float:
        return is_number, "a number"
    if tp is str:
        return (lambda v: isinstance(v, str)), "text"
    if typing.get_origin(tp) is Literal:
        allowed = typing.get_args(tp)
        return (lambda v: isinstance(v, str) and v in allowed), "one of " + ", ".join(allowed)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            check, name = _expects(args[0])
            return (lambda v: isinstance(v, tuple) and all(check(x) for x in v)), f"a list of {name.removeprefix('an ').removeprefix('a ')}s"
        checks = [_expects(a)[0] for a in args]
        return (lambda v: isinstance(v, tuple) and len(v) == len(checks) and all(c(x) for c, x in zip(checks, v))), \
            f"{len(args)} values"
    raise TypeError(f"no check for options of type {tp}")


def check_types(cfg: Any) -> None:
    """Every field of a config holds a value of its declared type (None only where the type
    allows it), and every number is finite. Run by every config's ``__post_init__``."""
    for f in dataclasses.fields(cfg):
        tp, optional = base_type(hints(type(cfg))[f.name])
        value = getattr(cfg, f.name)
        if value is None and optional:
            continue
        _hold(tp, value, flag_name(f))


def _hold(tp: Any, value: Any, label: str) -> None:
    """Refuse a value (a list stands for a tuple) that is not of type ``tp``, or holds a number
    that is not finite; ``label`` names the option in the error."""
    check, expected = _expects(tp)
    if not check(tuple(value) if isinstance(value, list) else value):
        raise ConfigError(f"{label} must be {expected}, not {describe(value)}")
    values = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise ConfigError(f"{label} must be a finite number, not {shown(value)}", hint="NaN and inf are not valid option values")


def check_given(cls: type, name: str, value: Any, where: str) -> Any:
    """A value given for field ``name`` by a config file (``where`` names it),
    held to the field's declared type before anything converts it; returned as the command
    line would give it (text for text-parsed kinds, a list for repeatable options)."""
    f = field(cls, name)
    m = meta(f)
    tp, _ = base_type(hints(cls)[name])
    if value is None:
        raise ConfigError(f"{where}: {name}: null is not a value", hint="leave the key out for the default")
    if m.kind:
        ok = (isinstance(value, str) or (is_int(value) and m.kind.startswith("count"))
              or (m.kind == "floats" and (is_number(value) or (isinstance(value, list) and all(map(is_number, value)))))
              or (m.kind in ("shard", "connection") and isinstance(value, list) and len(value) == 2 and all(map(is_int, value))))
        if not ok:
            raise ConfigError(f"{where}: {name} must be {_KIND_EXPECTS[m.kind]}, not {describe(value)}")
        if isinstance(value, list):
            text = ",".join(map(str, value)) if m.kind == "floats" else ("/" if m.kind == "shard" else ":").join(map(str, value))
        else:
            text = str(value)
        KINDS[m.kind][0](text, f"{where}: {name}")  # parsed now, so that a bad value names the file
        return text
    if typing.get_origin(tp) is tuple and typing.get_args(tp)[-1] is Ellipsis:  # repeatable: one value or a list
        value = value if isinstance(value, list) else [value]
    _hold(tp, value, f"{where}: {name}")
    return value


def describe(value: Any) -> str:
    """A value as an error message names it: what it is, and (briefly) what it holds."""
    what = {bool: "a boolean", int: "an integer", float: "a number", str: "text", list: "a list", tuple: "a list",
            dict: "a mapping"}.get(type(value))
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    return f"{shown(value)} ({what or type(value).__name__})"


# --------------------------------------------------------------------------------------------
# Checks of values shared by the configs


def positive(cfg: Any, *names: str, zero: bool = False) -> None:
    """Refuse a value that is not positive (or negative, with ``zero``) among ``names`` (None is fine)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and (value < 0 if zero else value <= 0):
            raise ConfigError(f"{flag_name(field(type(cfg), name))} must be {'>= 0' if zero else 'positive'}, not {value}")


def at_most(cfg: Any, bounds: dict[str, int]) -> None:
    """Refuse a count above its bound: what it sizes (tables of examples, batches) would not fit
    in memory, or it would run for ever. Said with the figure and the bound, before any work."""
    for name, bound in bounds.items():
        value = getattr(cfg, name)
        if value is not None and value > bound:
            raise ConfigError(f"{flag_name(field(type(cfg), name))} {value:,} is more than the {bound:,} it can be",
                              hint=f"give at most {bound:,}")


def fractions(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not 0 <= value <= 1:
            raise ConfigError(f"{flag_name(field(type(cfg), name))} must be a fraction between 0 and 1, not {value}")


def thresholds(cfg: Any, *names: str) -> None:
    for name in names:
        values = getattr(cfg, name)
        if not values or any(t <= 0 for t in values):
            raise ConfigError(f"{flag_name(field(type(cfg), name))} must be positive numbers, not {shown(values)}")
