"""The CLI frame shared by every command: exit codes, one-line errors, debug tracebacks, stdin."""

from __future__ import annotations

import io
import json

import pytest
from typer.testing import CliRunner

from jsaectl.cli import app
from jsaectl.cli._common import store_from_arg
from jsaectl.errors import ConfigError, JsaectlError, StoreError

runner = CliRunner()


def test_no_arguments_prints_help_and_exits_2():
    result = runner.invoke(app, [])
    assert result.exit_code == 2 and "harvest" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("args,code,text", [(["frobnicate"], 2, "No such command"), (["train", "--k", "x"], 2, "--k"),
                                            (["train", "/no/such/store.zarr"], 1, "no store at")])
def test_errors_are_one_line_on_stderr(args, code, text):
    result = runner.invoke(app, args)
    assert result.exit_code == code and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jsaectl: error:") and text in lines[0] and "hint:" in lines[0]


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("JSAECTL_DEBUG", "1")
    result = runner.invoke(app, ["train", "/no/such/store.zarr"])
    assert isinstance(result.exception, StoreError)


def test_store_argument_from_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("runs/a.zarr\n"))
    assert store_from_arg(None) == "runs/a.zarr"
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"store": "runs/b.zarr", "n_tokens": 5}) + "\n"))
    assert store_from_arg("-") == "runs/b.zarr"
    assert store_from_arg("given.zarr") == "given.zarr"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(JsaectlError, match="no store arrived"):
        store_from_arg(None)
    monkeypatch.setattr("sys.stdin", io.StringIO('{"other": 1}\n'))
    with pytest.raises(JsaectlError, match="store"):
        store_from_arg(None)


def test_config_errors_are_usage_errors():
    assert ConfigError("x").exit_code == 2 and JsaectlError("x").exit_code == 1
