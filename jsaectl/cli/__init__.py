"""The ``jsaectl`` command: thin commands over the library, and the one error boundary."""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import logging
import os
import signal
import sys
import threading
import warnings
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from jsaectl import __version__
from jsaectl.errors import JsaectlError, JsaectlWarning, first_line


def _fail(message: str, hint: str | None, code: int) -> int:
    # Plain write, not rich: one line that no terminal width wraps or restyles.
    line = f"jsaectl: error: {message}" + (f" (hint: {hint})" if hint else "")
    _say(line)
    return code


def _say(line: str) -> None:
    try:
        sys.stderr.write(line.replace("\n", " ") + "\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # stderr closed as well: nothing left to say it on
        pass


class _Signalled(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt (every ``finally``
    runs: spill files go, locks are released, a store stays resumable), but click does not
    turn it into its own Abort."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _PipeClosed(BaseException):
    """stdout's reader went away (``| head``): carried past click, which would make it exit 1."""


_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_RESUME = {"train": "run the same command with --resume to continue",
           "harvest": "run the same command again to resume", "jacobian": "run the same command again (the analysis starts over)"}


@contextlib.contextmanager
def _signals_unwind() -> Any:
    """SIGINT, SIGTERM and SIGHUP raise ``_Signalled`` once; later ones are ignored while the
    command cleans up."""

    def handler(signum: int, frame: Any) -> None:
        for s in _SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise _Signalled(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _quiet_stdout() -> None:
    """The reader of stdout went away (``| head``): point stdout at /dev/null so that the
    interpreter's own flush at exit does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """Every warning as one line (a library's too, without its source line)."""
    if issubclass(category, JsaectlWarning):
        _say(f"jsaectl: note: {message}")
    else:
        _say(f"jsaectl: note: {category.__name__}: {first_line(message)}")


_DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _environment_error(e: BaseException) -> tuple[str, str] | None:
    """(message, hint) for failures of the machine rather than of jsaectl, or None."""
    if isinstance(e, MemoryError):
        return "out of memory", "lower --batch-size (and --buffer-tokens for train), or use a machine with more memory"
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
        where = f" writing {e.filename}" if e.filename else ""
        return (f"the disk is full{where} ({e.strerror})",
                "free some space, then run the same command again: the store is incomplete and resumes")
    if isinstance(e, OSError) and e.errno is not None:
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror}{where}", "check the path, its permissions and the free space"
    if type(e).__module__.startswith(("numcodecs", "zarr")) or "decompression" in str(e).lower():
        return (f"a chunk of a store could not be decoded ({first_line(e)})",
                "the store is damaged; run `jsaectl verify` on the stores this command read")
    return None


def _plain_flags(command: Any, ctx: Any) -> None:
    """No type label beside an option that takes no value (--json, --help): `<bool>` there reads
    as if it wanted one."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class _Boundary(TyperGroup):
    """Turns every failure into one line on stderr and an exit code (1: the input or the run
    failed, 2: the command line was wrong, 128 + N: signal N, 141: stdout closed). Nothing is
    written to stdout on failure, so a pipe stops. ``JSAECTL_DEBUG=1`` re-raises so the
    traceback shows."""

    def get_command(self, ctx: Any, name: str) -> Any:
        command = super().get_command(ctx, name)
        if command is not None:
            _plain_flags(command, ctx)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _plain_flags(self, ctx)
        super().format_help(ctx, formatter)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # SIGINT outside our handler (a thread, an embedding program)
            raise _Signalled(signal.SIGINT) from None
        except BrokenPipeError:
            raise _PipeClosed from None

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        debug = os.environ.get("JSAECTL_DEBUG", "") not in ("", "0")
        argv = list(sys.argv[1:] if args is None else args)
        command = next((a for a in argv if not a.startswith("-")), "")
        # zarr reads chunks on its own event loop: after an error, the reads it cancels would log
        # "Task was destroyed but it is pending!" at exit, lines after the one that says what happened.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        with _signals_unwind(), warnings.catch_warnings():
            warnings.showwarning = _show_warning
            # numpy's arithmetic warnings (raised from numpy, or from the jsaectl line that called
            # it): a NaN or inf that matters is refused by name where it arises.
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="numpy")
            warnings.filterwarnings("ignore", r"(invalid value|divide by zero|overflow) encountered", RuntimeWarning)
            code = self._run(args, prog_name, complete_var, extra, debug, command)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(self, args: Any, prog_name: str | None, complete_var: str | None, extra: dict, debug: bool, command: str) -> int:
        try:
            rv = super().main(args=args, prog_name=prog_name or "jsaectl", complete_var=complete_var,
                              standalone_mode=False, **extra)
            sys.stdout.flush()  # here, not at exit: a reader gone away (`| head -1`) ends the command with 141
            return rv if isinstance(rv, int) else 0
        except JsaectlError as e:
            if debug:
                raise
            hint = e.hint or (f"see `jsaectl {command} --help`" if e.exit_code == 2 else None)
            return _fail(e.message, hint, e.exit_code)
        except _Signalled as e:
            name = signal.Signals(e.signum).name
            _say(f"jsaectl: interrupted ({name}) — {_RESUME.get(command, 'run the same command again')}")
            return 128 + e.signum
        except typer.Abort:  # click's own: an EOF at a prompt
            return _fail("interrupted", None, 130)
        except typer.exceptions.TyperException as e:  # usage errors from the vendored click
            ctx = getattr(e, "ctx", None)
            hint = f"see `{ctx.command_path} --help`" if ctx is not None else "see `jsaectl --help`"
            return _fail(e.format_message(), hint, getattr(e, "exit_code", 2))
        except (BrokenPipeError, _PipeClosed):
            _quiet_stdout()  # the reader went away (`| head`): nothing to say, the conventional status
            return 128 + 13
        except Exception as e:
            if debug:
                raise
            known = _environment_error(e)
            if known is not None:
                return _fail(known[0], known[1], 1)
            return _fail(f"internal error: {type(e).__name__}: {e}",
                         "set JSAECTL_DEBUG=1 to see the traceback, and please report it", 1)


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


def _paragraphs(doc: str | None) -> str:
    """A module docstring as help: the lines of each paragraph joined, so that the terminal's
    width, not the source's, decides where lines break."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc or "").split("\n\n"))


def _register() -> None:
    # Each command module is imported here; heavy libraries (torch, zarr, transformers) are
    # imported inside the commands, so `jsaectl --help` and `--version` start at once.
    from jsaectl.cli import (compare, connections, contrast, export, harvest, import_pair, jacobian, maxact, report, trace, train,
                             verify)

    for name, module, command in (("harvest", harvest, harvest.harvest_cmd), ("train", train, train.train_cmd),
                                  ("jacobian", jacobian, jacobian.jacobian_cmd),
                                  ("connections", connections, connections.connections_cmd), ("maxact", maxact, maxact.maxact_cmd),
                                  ("trace", trace, trace.trace_cmd), ("contrast", contrast, contrast.contrast_cmd),
                                  ("compare", compare, compare.compare_cmd), ("report", report, report.report_cmd),
                                  ("export", export, export.export_cmd),
                                  ("import", import_pair, import_pair.import_cmd), ("verify", verify, verify.verify_cmd)):
        app.command(name, help=_paragraphs(module.__doc__))(command)


_register()


def main() -> None:
    app()
