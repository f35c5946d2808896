"""Write the documentation site's reference pages from the code (run by mkdocs-gen-files at build time).

- ``reference/cli.md``: every command and its flags, read from the CLI's own argparse parser;
- ``reference/config.md``: every pre-training config key (the common sections and each method's own)
  and every fine-tuning option, with type, default and help, read from the config dataclasses.

The pages exist only in the built site: nothing here is written into the repository, so they cannot
go stale. ``python docs/gen_reference.py OUT_DIR`` writes them into a folder instead (to read them
without building the site).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUPPRESS = argparse.SUPPRESS


# ----------------------------------------------------------------------------------------------------
# commands


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(command path, help, parser) for every sub-command, depth first, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub
                for child, child_help, child_parser in _subcommands(sub):
                    yield f"{name} {child}", child_help, child_parser


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _expand(action: argparse.Action) -> str:
    """The help text as ``--help`` prints it (``%(default)s`` and the like filled in)."""
    return argparse.HelpFormatter("ultrassl")._expand_help(action) if action.help else ""


def _flag_row(action: argparse.Action) -> str | None:
    if action.help == SUPPRESS or isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
        return None
    if action.option_strings:
        name = ", ".join(f"`{o}`" for o in action.option_strings)
        takes_value = action.nargs != 0
        if takes_value:
            metavar = action.metavar or (
                "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
            )
            name += f" `{metavar}`"
    else:
        name = f"`{action.metavar or action.dest}`"
    default = action.default
    shown = "" if default in (None, SUPPRESS, False) or default == [] else f"`{default}`"
    return f"| {name} | {_cell(_expand(action))} | {shown} |"


def cli_page() -> str:
    from ultrassl.cli import _parser

    root = _parser()
    lines = [
        "# Command line",
        "",
        "Every command and flag of `ultrassl`, generated from the command line's own parser (so it says "
        "what `ultrassl <command> --help` says). `python -m ultrassl` is the same program.",
        "",
        "## ultrassl",
        "",
        _cell(root.description.splitlines()[0]) if root.description else "",
        "",
        "| flag | meaning | default |",
        "| --- | --- | --- |",
    ]
    lines += [row for a in root._actions if (row := _flag_row(a))]
    for path, help_text, parser in _subcommands(root):
        rows = [row for a in parser._actions if (row := _flag_row(a))]
        lines += ["", f"## ultrassl {path}", "", help_text[:1].upper() + help_text[1:] + "."]
        if parser.description and parser.description != help_text:
            lines += ["", parser.description]
        if rows:
            lines += ["", "| flag | meaning | default |", "| --- | --- | --- |", *rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# configs


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    if isinstance(tp, str):
        return tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is None:
        return getattr(tp, "__name__", str(tp))
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_type_name(a) for a in args)
    return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"


def config_rows(obj: Any, prefix: str = "") -> Iterator[tuple[str, str, Any, str]]:
    """(key, type, value, help) of every leaf field of a config dataclass instance, sections flattened:
    the values are the instance's (a method's config holds the method's defaults)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from config_rows(value, f"{prefix}{f.name}.")
            continue
        yield f"{prefix}{f.name}", _type_name(hints.get(f.name, f.type)), value, f.metadata.get("help", "")


def _table(rows: Iterator[tuple[str, str, Any, str]]) -> list[str]:
    out = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, tp, value, help_text in rows:
        out.append(f"| `{key}` | `{_cell(tp)}` | `{_cell(repr(value))}` | {_cell(help_text)} |")
    return out


def config_page() -> str:
    from ultrassl.config import PretrainConfig
    from ultrassl.finetune.options import ClassifyConfig, SegmentConfig
    from ultrassl.methods import get_method, method_names

    base = PretrainConfig()
    common = {f.name for f in dataclasses.fields(base)}
    base_values = {key: value for key, _t, value, _h in config_rows(base)}
    lines = [
        "# Configuration keys",
        "",
        "Every key a run's config holds, generated from the config classes. Change one with "
        "`--set key=value` (`ultrassl pretrain`; repeatable); `ultrassl pretrain --print-config` shows a "
        "run's resolved values. A method's defaults, then a preset (`ultrassl presets`), then the flags "
        "and every `--set` are layered over the defaults below.",
        "",
        "## Pre-training: the sections every method reads",
        "",
        *_table(config_rows(base)),
    ]
    for name in method_names():
        spec = get_method(name)
        cfg = spec.config()
        lines += ["", f"## Pre-training: `--method {name}`", "", spec.summary + "."]
        for f in dataclasses.fields(cfg):
            if f.name not in common:
                lines += [
                    "",
                    f"Section `{f.name}`:",
                    "",
                    *_table(config_rows(getattr(cfg, f.name), f"{f.name}.")),
                ]
        changed = [
            f"`{key}={value!r}`"
            for key, _t, value, _h in config_rows(cfg)
            if key in base_values and key != "method" and value != base_values[key]
        ]
        if changed:
            lines += ["", "Its defaults for the common sections: " + ", ".join(changed) + "."]
    for title, cls in (("classify", ClassifyConfig), ("segment", SegmentConfig)):
        lines += [
            "",
            f"## Fine-tuning: `finetune {title}`",
            "",
            f"Each option is also a flag of `ultrassl finetune {title}` (underscores as dashes).",
            "",
            *_table(config_rows(cls())),
        ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------

PAGES = {"reference/cli.md": cli_page, "reference/config.md": config_page}


def main(argv: list[str]) -> None:
    if argv:  # a folder: write the pages there
        out = Path(argv[0])
        for name, make in PAGES.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(make())
        return
    import mkdocs_gen_files

    for name, make in PAGES.items():
        with mkdocs_gen_files.open(name, "w") as fh:
            fh.write(make())


if __name__ == "__main__":  # by hand, with a folder
    main(sys.argv[1:2] or ["site-reference"])
else:  # run by mkdocs-gen-files (runpy.run_path)
    main([])
