"""The documentation says what the code does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from jsaectl.cli import app
from jsaectl.cli._docs import render

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == render(), "run: python -m jsaectl.cli._docs > docs/cli.md"


def test_every_command_and_option_is_documented():
    group = typer.main.get_command(app)
    ctx = typer.Context(group)
    readme = (ROOT / "README.md").read_text()
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd.help and len(cmd.help) > 40, name
        assert f"jsaectl {name}" in readme, name
        for p in cmd.params:
            if p.name != "help":
                assert getattr(p, "help", None), f"{name} {p.name} has no help"


def test_readme_first_screen_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = (ROOT / ".ci" / "run").read_text()
    first = "\n".join(readme[:15])
    assert "pip install torch==2.13.0" in first and "jsaectl harvest | jsaectl train | jsaectl jacobian" in first
    assert 'pip install -e ".[dev]" && python -m pytest' in first
    assert "torch==2.13.0" in ci and '-e ".[dev]"' in ci and "python -m pytest" in ci


def test_stages_without_a_language_model_do_not_import_transformers():
    code = ("import sys, jsaectl.train, jsaectl.jacobian, jsaectl.maxact, jsaectl.export, jsaectl.cli;"
            "assert 'transformers' not in sys.modules, 'transformers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
