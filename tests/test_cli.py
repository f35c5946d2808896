"""The command line answers at once and explains itself: building the parser and every ``--help`` loads
no deep-learning or plotting library, every flag has help text, renamed flags keep their old names as
aliases with a note, and a data folder given where a manifest goes says how to make one."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest

from ultrassl.cli import BUILTIN_METHODS, _DeprecatedAlias, _parser, main
from ultrassl.data.manifest import read_manifest
from ultrassl.errors import UnreadableFileError

#: what ``ultrassl --help`` must not import (each costs seconds on a small machine)
HEAVY = ("torch", "sklearn", "matplotlib", "timm")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {
        name: sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    }


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)command's parser by its words: () the top level, ("finetune", "classify") ..."""
    out = {path: parser}
    for name, sub in _subparsers(parser).items():
        out.update(_commands(sub, (*path, name)))
    return out


#: runs in a fresh interpreter: build the parser, print every command's --help (each found by walking the
#: parser), report what got imported
_HELP_EVERYWHERE = r"""
import argparse, contextlib, io, json, sys
from ultrassl.cli import _parser, main

def commands(parser, words=()):
    yield words
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*words, name))

shown = {}
for words in commands(_parser()):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*words, "--help"])
        except SystemExit as exc:
            assert exc.code == 0, (words, exc.code)
    shown[" ".join(words)] = out.getvalue()
print(json.dumps({"shown": shown, "modules": sorted(sys.modules)}))
"""


def test_the_parser_and_every_help_import_no_heavy_library():
    done = subprocess.run(
        [sys.executable, "-c", _HELP_EVERYWHERE], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(done.stdout)
    loaded = [m for m in report["modules"] if m.split(".")[0] in HEAVY]
    assert loaded == []
    shown = report["shown"]
    assert set(shown) == {" ".join(words) for words in _commands(_parser())}
    assert all(text.startswith("usage: ultrassl") for text in shown.values())
    assert "--max-frames-per-file" in shown["index"] and "--label-fractions" in shown["finetune classify"]


def test_import_ultrassl_registers_convvit_with_timm_when_timm_comes_later():
    script = (
        "import sys, ultrassl\n"
        "from ultrassl import index, pretrain, export, finetune, evaluate, PretrainResult, FinetuneResult\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules\n"
        "import timm\n"
        "print(sorted(timm.list_models('convvit_*')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    names = done.stdout.strip()
    assert all(f"convvit_{size}_patch16" in names for size in ("tiny", "small", "base"))


def test_a_failed_convvit_registration_never_breaks_import_timm():
    script = (
        "import ultrassl, ultrassl.models.timm_registration as reg\n"
        "reg.CONVVIT = 'ultrassl.no_such_module'\n"
        "import timm\n"
        "print(sorted(timm.list_models('convvit_*')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


def test_every_flag_and_command_has_help_text():
    missing = []
    for words, parser in _commands(_parser()).items():
        for action in parser._actions:
            where = f"ultrassl {' '.join(words)} {'/'.join(action.option_strings) or action.dest}"
            if isinstance(action, argparse._SubParsersAction):
                missing += [
                    f"{where} {c.dest}" for c in action._choices_actions if not (c.help or "").strip()
                ]
            elif action.help == argparse.SUPPRESS:
                if not isinstance(action, _DeprecatedAlias):  # only a deprecated alias is left out of --help
                    missing.append(where)
            elif not (action.help or "").strip():
                missing.append(where)
    assert missing == []


def test_the_static_method_names_are_the_registry_s_built_in_ones():
    from ultrassl.methods import get_method, method_names

    built_in = {
        n for n in method_names() if get_method(n).build_model.__module__.startswith("ultrassl.methods.")
    }
    assert set(BUILTIN_METHODS) == built_in


# ----------------------------------------------------------------------------------------------------
# one meaning per flag name: renamed flags, their old names kept as aliases


FINETUNE = ["--weights", "scratch", "--data", "m.csv", "--out", "o"]


@pytest.mark.parametrize(
    "command, argv, dest, old, new, value",
    [
        (
            "index",
            ["d", "-o", "m.csv"],
            "max_frames_per_file",
            "--max-frames",
            "--max-frames-per-file",
            ["5"],
        ),
        (
            "finetune classify",
            FINETUNE,
            "cfg__max_frames_per_video",
            "--max-frames",
            "--max-frames-per-video",
            ["4"],
        ),
        (
            "finetune classify",
            FINETUNE,
            "cfg__label_fractions",
            "--label-fraction",
            "--label-fractions",
            ["0.5", "1"],
        ),
        (
            "finetune segment",
            FINETUNE,
            "cfg__label_fractions",
            "--label-fraction",
            "--label-fractions",
            ["0.5"],
        ),
    ],
)
def test_a_renamed_flag_keeps_its_old_name_with_a_one_line_note(capsys, command, argv, dest, old, new, value):
    words = command.split()
    parsed_new = vars(_parser().parse_args([*words, *argv, new, *value]))
    assert capsys.readouterr().err == ""
    parsed_old = vars(_parser().parse_args([*words, *argv, old, *value]))
    err = capsys.readouterr().err
    assert parsed_old == parsed_new and parsed_new[dest] not in (None, argparse.SUPPRESS)
    assert err.count("\n") == 1 and err.startswith(f"ultrassl {command}: {old} is deprecated, use {new}")
    # the new name is in the help, the old one is not
    shown = _commands(_parser())[tuple(words)].format_help()
    assert re.search(rf"{re.escape(new)}\b", shown) and not re.search(rf"{re.escape(old)}[\s\]]", shown)


def test_index_reads_the_default_limit_and_pretrain_keeps_its_one_label_fraction(capsys):
    assert _parser().parse_args(["index", "d", "-o", "m.csv"]).max_frames_per_file == 50_000
    a = _parser().parse_args(["pretrain", "--out", "r", "--label-fraction", "0.25"])
    assert a.label_fraction == 0.25 and capsys.readouterr().err == ""  # pre-training's own flag: no note
    with pytest.raises(SystemExit):  # fine-tuning's list is not pre-training's flag
        _parser().parse_args(["pretrain", "--out", "r", "--label-fractions", "0.25", "0.5"])


# ----------------------------------------------------------------------------------------------------
# errors that say what to do next


def test_a_folder_where_a_manifest_goes_says_to_index_it(tmp_path):
    data = tmp_path / "my scans"
    data.mkdir()
    with pytest.raises(UnreadableFileError, match="a folder, not a manifest CSV") as info:
        read_manifest(data)
    assert info.value.path == str(data)
    assert f"ultrassl index '{data}' -o manifest.csv" in str(info.value)


def test_the_command_line_says_it_in_one_line(tmp_path, capsys):
    data = tmp_path / "scans"
    data.mkdir()
    argv = ["finetune", "classify", "--weights", "scratch", "--arch", "tiny", "--img-size", "32", "32"]
    assert main([*argv, "--data", str(data), "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err == (
        f"ultrassl finetune: error: {data}: a folder, not a manifest CSV: index it first with "
        f"`ultrassl index {data} -o manifest.csv`, then pass the manifest"
    )


def test_version_prints_the_package_version_without_a_heavy_library():
    import ultrassl

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys\nfrom ultrassl.cli import main\ntry:\n    main(['--version'])\n"
            "except SystemExit as exc:\n    assert exc.code == 0\n"
            "print(json.dumps(sorted(sys.modules)), file=sys.stderr)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout == f"ultrassl {ultrassl.__version__}\n"
    assert [m for m in json.loads(done.stderr) if m.split(".")[0] in HEAVY] == []
