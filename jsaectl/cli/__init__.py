"""The ``jsaectl`` command: thin commands over the library, and the one error boundary."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from jsaectl import __version__
from jsaectl.errors import JsaectlError


def _fail(message: str, hint: str | None, code: int) -> int:
    # Plain write, not rich: one line that no terminal width wraps or restyles.
    line = f"jsaectl: error: {message}" + (f" (hint: {hint})" if hint else "")
    sys.stderr.write(line.replace("\n", " ") + "\n")
    sys.stderr.flush()
    return code


class _Boundary(TyperGroup):
    """Turns every failure into one line on stderr and an exit code (1: the input or the run
    failed, 2: the command line was wrong, 130: interrupted). ``JSAECTL_DEBUG=1`` re-raises
    so the traceback shows. Nothing is written to stdout on failure, so a pipe stops."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        debug = os.environ.get("JSAECTL_DEBUG", "") not in ("", "0")
        try:
            rv = super().main(args=args, prog_name=prog_name or "jsaectl", complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except JsaectlError as e:
            if debug:
                raise
            code = _fail(e.message, e.hint, e.exit_code)
        except typer.Abort:
            code = _fail("interrupted", None, 130)
        except typer.exceptions.TyperException as e:  # usage errors from the vendored click
            ctx = getattr(e, "ctx", None)
            hint = f"see `{ctx.command_path} --help`" if ctx is not None else "see `jsaectl --help`"
            code = _fail(e.format_message(), hint, getattr(e, "exit_code", 2))
        except KeyboardInterrupt:
            code = _fail("interrupted", "run the same command again to resume", 130)
        except BrokenPipeError:
            sys.stderr.close()  # the reader went away: nothing left to say
            code = 141
        except Exception as e:
            if debug:
                raise
            code = _fail(f"internal error: {type(e).__name__}: {e}",
                         "set JSAECTL_DEBUG=1 to see the traceback, and please report it", 1)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="jsaectl",
    cls=_Boundary,
    help="Jacobian sparse autoencoders: which input features of a transformer MLP compute which output features.\n\n"
    "Each stage reads a store and prints the URL of the store it writes, so stages pipe:\n\n"
    "    jsaectl harvest | jsaectl train | jsaectl jacobian",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"jsaectl {__version__}\n")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_version)] = False,
) -> None:
    """Jacobian sparse autoencoders from the command line."""
    if ctx.invoked_subcommand is None:  # `jsaectl` alone: help on stderr (stdout stays for data), exit 2
        with contextlib.redirect_stdout(sys.stderr):
            sys.stdout.write(ctx.get_help() + "\n")
        raise typer.Exit(2)


def _register() -> None:
    # Each command module is imported here; heavy libraries are imported inside the commands.
    from jsaectl.cli import compare, export, harvest, jacobian, maxact, train

    app.command("harvest", help=harvest.__doc__)(harvest.harvest_cmd)
    app.command("train", help=train.__doc__)(train.train_cmd)
    app.command("jacobian", help=jacobian.__doc__)(jacobian.jacobian_cmd)
    app.command("maxact", help=maxact.__doc__)(maxact.maxact_cmd)
    app.command("compare", help=compare.__doc__)(compare.compare_cmd)
    app.command("export", help=export.__doc__)(export.export_cmd)


_register()


def main() -> None:
    app()
