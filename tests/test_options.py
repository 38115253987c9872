"""Options declared once: every config field is an option with help, and the command line's
default is the dataclass's. The command line is built without importing torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import typer

from jsaectl import configs
from jsaectl.errors import ConfigError
from jsaectl import options as opts
from jsaectl.cli import app
from jsaectl.cli._generate import cli_default

COMMANDS = {"harvest": configs.HarvestConfig, "train": configs.TrainConfig, "jacobian": configs.JacobianConfig,
            "connections": configs.ConnectionsConfig, "maxact": configs.MaxactConfig, "compare": configs.CompareConfig,
            "report": configs.ReportConfig, "export": configs.ExportConfig, "import": configs.ImportConfig,
            "verify": configs.VerifyConfig}
CONFIGS = list(COMMANDS.values())


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_help(cls):
    missing = [f.name for f in dataclasses.fields(cls) if len(opts.meta(f).help) < 10]
    assert not missing, f"{cls.__name__} fields without help: {missing}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_cli_defaults_are_the_dataclass_defaults(name):
    cls = COMMANDS[name]
    command = typer.main.get_command(app).get_command(typer.Context(typer.main.get_command(app)), name)
    params = {p.name: p for p in command.params}
    for f in dataclasses.fields(cls):
        assert f.name in params, f"{name}: {f.name} is not on the command line"
        param, meta = params[f.name], opts.meta(f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if meta.required:
            continue
        shown = param.default
        if meta.kind and shown is not None:
            shown = opts.KINDS[meta.kind][0](shown, f.name)
        elif isinstance(shown, (list, tuple)):
            shown = tuple(shown)
        elif shown is None and default == ():
            shown = ()
        assert shown == default, f"{name} {f.name}: CLI default {param.default!r} is not the dataclass's {default!r}"
        assert cli_default(f) == param.default
        assert param.help and param.help == opts.meta(f).help


def test_identity_is_what_the_store_holds():
    cfg = configs.TrainConfig(acts="a.zarr", lam=1.0)
    ident = opts.identity(cfg)
    assert "lam" in ident and "acts" in ident and "device" not in ident and "out" not in ident
    assert set(ident) | set(opts.runtime(cfg)) == {f.name for f in dataclasses.fields(cfg)}


def test_configs_are_frozen_and_resolved_into_new_ones():
    cfg = configs.TrainConfig(acts="a.zarr")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lam = 2.0  # type: ignore[misc]
    resolved = cfg.resolved(d_model=64, n_tokens=100_000, world=1)
    assert cfg.lam is None and cfg.latents is None and cfg.tokens is None  # the caller's config is untouched
    assert resolved.lam == 0.5 * 32**2 / 64 and resolved.latents == 32 * 64 and resolved.tokens == 98_304
    assert configs.HarvestConfig().resolved().layer == configs.BUNDLED_DEFAULT_LAYER


@pytest.mark.parametrize("args", [["--version"], ["export", "--help"], ["train", "--help"], ["--help"]])
def test_the_command_line_is_built_without_torch(args):
    code = ("import sys; from jsaectl.cli import app\n"
            f"try:\n    app({args!r}, standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "NO TORCH", proc.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_the_allowed_values_of_every_choice(name):
    from typer.testing import CliRunner

    cls = COMMANDS[name]
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0
    shown = result.output
    for f in dataclasses.fields(cls):
        allowed = opts.choices(cls, f.name)
        for value in allowed or ():
            assert f"{value}|" in shown or f"|{value}>" in shown, f"{name} --help does not list {value!r} for {opts.flag_name(f)}"
    assert any(opts.choices(cls, f.name) for f in dataclasses.fields(cls)) or name not in ("harvest", "train", "maxact", "export")


def test_choices_are_literal_types_checked_in_python_too():
    with pytest.raises(ConfigError, match="--format must be one of|unknown export format"):
        configs.ExportConfig(store="s", format="SAELens", out="o")
    with pytest.raises(ConfigError, match="--side must be one of in, out"):
        configs.MaxactConfig(jsae="j", side="middle", latents=(1,))
