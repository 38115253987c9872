"""Typer commands generated from the stages' config dataclasses (see jsaectl/options.py).

    @from_config(TrainConfig)
    def train_cmd(cfg: TrainConfig, out: Outputs) -> None:
        ...

The parameter annotated with the config class is replaced, in the signature Typer reads, by
one command-line parameter per field: its name, short alias, default, choices and help come
from the field; text options (counts such as ``2M``, comma lists, ``i/n``) are parsed into the
field's value; a store argument that is missing or ``-`` is read from stdin. Every command
also gets ``--config FILE.yaml`` and the output options its config class names in
``OUTPUTS`` (declared once, as the fields of ``options.Outputs``), which arrive as one ``Outputs``; a FILE
they name is checked, before the command runs, never to be a store the command reads or
follows. A ``typer.Context`` parameter passes through.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from jsaectl import options as opts
from jsaectl.cli._common import load_config, store_from_arg, stores_from_args
from jsaectl.options import OUTPUT_PARAMETER, Outputs

CONFIG_HELP = ("YAML file of option values (keys are option names, e.g. `tokens: 2M`); each value is held to the "
               "option's type; flags given on the command line win.")


def cli_default(f: dataclasses.Field) -> Any:
    """The field's default as the command line writes it."""
    m = opts.meta(f)
    default = f.default
    if m.required:
        return ...
    if m.kind and default is not None:
        return opts.KINDS[m.kind][1](default)
    if isinstance(default, tuple):
        return list(default) or None
    return default


def _parameter(cls: type, f: dataclasses.Field, name: str | None = None) -> inspect.Parameter:
    """The command-line parameter of field ``f`` (named ``name``, by default the field's)."""
    m = opts.meta(f)
    tp, optional = opts.base_type(opts.hints(cls)[f.name])
    default = cli_default(f)
    if m.kind:
        tp = str
    elif typing.get_origin(tp) is tuple:  # a repeatable option
        tp = list[typing.get_args(tp)[0]]
        optional = True
    annotation = tp | None if optional or default is None else tp
    show_default = default not in (None, ..., "", []) and not (tp is bool and not m.negatable and default is False)
    if m.argument:
        info: Any = typer.Argument(help=m.help, show_default=show_default, metavar=m.metavar or f.name.upper())
    else:
        names = [opts.flag_name(f)]
        negatable = m.negatable if m.negatable is not None else (tp is bool and default is not False)
        if tp is bool and negatable:
            names = [f"{names[0]}/--no-{names[0][2:]}"]
        if m.short:
            names.append(m.short)
        info = typer.Option(*names, help=m.help, show_default=show_default, metavar=m.metavar)
    return inspect.Parameter(name or f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[annotation, info], default=default)


def _config_parameter(cls: type) -> inspect.Parameter:
    def callback(ctx: typer.Context, value: Path | None) -> Path | None:
        return load_config(ctx, value, cls)

    info = typer.Option("--config", help=CONFIG_HELP, is_eager=True, callback=callback, dir_okay=False, show_default=False)
    return inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[Path | None, info], default=None)


def _value(f: dataclasses.Field, raw: Any) -> Any:
    """The field's value from what the command line gave."""
    m = opts.meta(f)
    if m.stdin == "line":
        return store_from_arg(raw or None)
    if m.stdin == "lines":
        return stores_from_args(raw)
    if raw is None:  # not given (an empty repeatable option, an optional value): the dataclass's default
        return f.default
    if m.kind:
        return opts.KINDS[m.kind][0](raw, opts.flag_name(f))
    if isinstance(raw, list):
        return tuple(raw)
    return raw


def build(cls: type, given: dict[str, Any]) -> Any:
    """The config from the command line's values."""
    return cls(**parsed(cls, given))


def parsed(cls: type, given: dict[str, Any], only: set[str] | None = None) -> dict[str, Any]:
    """The command line's values of ``cls``'s fields (those in ``only``), parsed."""
    return {f.name: _value(f, given[f.name]) for f in dataclasses.fields(cls) if f.name in given and (only is None or f.name in only)}


def check_output_files(outputs: Outputs, cfg: Any) -> None:
    """Every FILE an output option names may be written: not a directory, in a writable
    directory, and never a store (or inside or around one) that the command reads or follows."""
    files = outputs.files()
    if not files:
        return
    from jsaectl import store as st

    for flag, path in files:
        st.check_output_file(path, opts.read_stores(cfg), flag)


def from_config(cls: type, build_with: Callable[..., Any] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Expand the command's ``cls``-typed parameter into one parameter per config field, add
    ``--config`` and the output options of ``cls.OUTPUTS`` (passed as the ``Outputs``-typed
    parameter). ``build_with(ctx, given)``, when given, may build the config another way (it
    returns None to build it from the command line as usual)."""
    outputs = tuple(getattr(cls, "OUTPUTS", ()))

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(func, include_extras=True)
        target = next(name for name, tp in hints.items() if tp is cls)
        wants_outputs = next((name for name, tp in hints.items() if tp is Outputs), None)
        context = next((name for name, tp in hints.items() if tp is typer.Context), None)
        fields = dataclasses.fields(cls)
        params = [inspect.Parameter(context, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)] if context else []
        params += [_parameter(cls, f) for f in fields] + [_parameter(Outputs, opts.field(Outputs, name), OUTPUT_PARAMETER.format(name)) for name in outputs]
        params += [_config_parameter(cls)]
        names = {f.name for f in fields}

        def command(**kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            chosen = Outputs(**{name: kwargs.pop(OUTPUT_PARAMETER.format(name)) for name in outputs})
            kwargs.pop("config", None)
            cfg = build_with(kwargs.get(context), given) if build_with is not None else None
            cfg = cfg if cfg is not None else build(cls, given)
            check_output_files(chosen, cfg)
            extra = {wants_outputs: chosen} if wants_outputs else {}
            return func(**kwargs, **extra, **{target: cfg})

        command.__name__, command.__doc__, command.__module__ = func.__name__, func.__doc__, func.__module__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
