"""docs/cli.md, generated from the commands themselves: `python -m jsaectl.cli._docs > docs/cli.md`.

A test checks that the file in the repository is what this prints, so the reference cannot
drift from the code.
"""

from __future__ import annotations

import inspect

import typer


def _default(param) -> str:
    if getattr(param, "is_flag", False) and not param.secondary_opts:
        return ""
    value = param.default
    if value is None or callable(value):
        return ""
    if isinstance(value, bool):
        return ("--" if value else "--no-") + param.name.replace("_", "-") if param.secondary_opts else str(value)
    return f"`{value}`"


def render() -> str:
    from jsaectl.cli import app

    group = typer.main.get_command(app)
    lines = ["# jsaectl command reference", "",
             "Generated from the code by `python -m jsaectl.cli._docs > docs/cli.md`; `jsaectl COMMAND --help` says the same.", ""]
    ctx = typer.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        lines += [f"## jsaectl {name}", "", inspect.cleandoc(cmd.help or ""), "", "| option | default | meaning |", "|---|---|---|"]
        for p in cmd.params:
            if p.name == "help":
                continue
            flags = " / ".join(f"`{o}`" for o in [*p.opts, *getattr(p, "secondary_opts", [])]) if p.param_type_name == "option" else f"`{p.name.upper()}` (argument)"
            text = (getattr(p, "help", None) or "").replace("|", "\\|")
            allowed = getattr(getattr(p, "type", None), "choices", None)
            if allowed:
                text += " One of: " + ", ".join(f"`{c}`" for c in allowed) + "."
            lines.append(f"| {flags} | {_default(p)} | {text} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
