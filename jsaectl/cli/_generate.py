"""Typer commands generated from the stages' config dataclasses (see jsaectl/options.py).

    @from_config(TrainConfig)
    def train_cmd(ctx: typer.Context, cfg: TrainConfig, json_out: JsonOpt = False, config: ConfigOpt = None) -> None:
        ...

The parameter annotated with the config class is replaced, in the signature Typer reads, by
one command-line parameter per field: its name, short alias, default and help come from the
field; text options (counts such as ``2M``, comma lists, ``i/n``) are parsed into the field's
value. The command then receives the built config. Parameters that are not config fields
(``--json``, ``--config``, the context) pass through as declared.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from jsaectl import options as opts
from jsaectl.cli._common import store_from_arg, stores_from_args

# Fields named like this are store arguments: missing or "-" means one line (or, for a list,
# every line) of stdin.
STORE_ARGUMENTS = {"acts", "jsae", "store"}


def _base(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def cli_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if opts.meta(f)["cli"]]


def cli_default(f: dataclasses.Field) -> Any:
    """The field's default as the command line writes it."""
    m = opts.meta(f)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if m["required"]:
        return ...
    if m["kind"] and default is not None:
        return opts.KINDS[m["kind"]][1](default)
    if isinstance(default, tuple):
        return list(default) or None
    return default


def _parameter(cls: type, f: dataclasses.Field, hints: dict[str, Any]) -> inspect.Parameter:
    m = opts.meta(f)
    tp, optional = _base(hints[f.name])
    default = cli_default(f)
    if m["kind"]:
        tp = str
    elif typing.get_origin(tp) is tuple:  # a repeatable option
        tp = list[typing.get_args(tp)[0]]
        optional = True
    annotation = tp | None if optional or default is None else tp
    help_text = opts.docs(cls).get(f.name, "")
    show_default = default not in (None, ..., "", []) and not (tp is bool and not m["negatable"] and default is False)
    if m["argument"]:
        info: Any = typer.Argument(help=help_text, show_default=show_default, metavar=f.name.upper())
    else:
        names = [opts.flag_name(f)]
        negatable = m["negatable"] if m["negatable"] is not None else (tp is bool and default is not False)
        if tp is bool and negatable:
            names = [f"{names[0]}/--no-{names[0][2:]}"]
        if m["short"]:
            names.append(m["short"])
        info = typer.Option(*names, help=help_text, show_default=show_default)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[annotation, info],
                             default=default)


def _value(cls: type, f: dataclasses.Field, raw: Any) -> Any:
    """The field's value from what the command line gave."""
    m = opts.meta(f)
    if f.name in STORE_ARGUMENTS and m["argument"]:
        return store_from_arg(raw or None)
    if f.name == "stores":
        return stores_from_args(raw)
    if raw is None:  # not given (an empty repeatable option, an optional value): the dataclass's default
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if m["kind"]:
        return opts.KINDS[m["kind"]][0](raw, opts.flag_name(f))
    if isinstance(raw, list):
        return tuple(raw)
    return raw


def build(cls: type, given: dict[str, Any]) -> Any:
    """The config from the command line's values."""
    return cls(**parsed(cls, given))


def parsed(cls: type, given: dict[str, Any], only: set[str] | None = None) -> dict[str, Any]:
    """The command line's values of ``cls``'s fields (those in ``only``), parsed."""
    return {f.name: _value(cls, f, given[f.name]) for f in cli_fields(cls) if f.name in given and (only is None or f.name in only)}


def from_config(cls: type, build_with: Callable[..., Any] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Expand the command's ``cls``-typed parameter into one parameter per config field.
    ``build_with(ctx, given)``, when given, may build the config another way (it returns None
    to build it from the command line as usual)."""
    field_hints = typing.get_type_hints(cls)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(func, include_extras=True)
        target = next(name for name, tp in hints.items() if tp is cls)
        fields = cli_fields(cls)
        params: list[inspect.Parameter] = []
        for p in inspect.signature(func).parameters.values():
            if p.name == target:
                params += [_parameter(cls, f, field_hints) for f in fields]
            else:
                params.append(p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY))
        names = {f.name for f in fields}

        def command(**kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            cfg = build_with(kwargs.get("ctx"), given) if build_with is not None else None
            return func(**kwargs, **{target: cfg if cfg is not None else build(cls, given)})

        command.__name__, command.__doc__, command.__module__ = func.__name__, func.__doc__, func.__module__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.config_class = cls  # type: ignore[attr-defined]
        return command

    return decorate
