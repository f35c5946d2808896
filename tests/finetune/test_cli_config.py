"""Fine-tuning configs through the command line: a flag for every field, presets, --set, one check."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import linecache
import re

import pytest
import yaml

from ultrassl.cli import _parser, _task_config, main
from ultrassl.config import to_dict
from ultrassl.errors import ConfigError
from ultrassl.finetune.classify import ClassifyConfig
from ultrassl.finetune.segment import SegmentConfig

#: command-line values for fields whose default (None) a flag cannot spell
FOR_NONE = {
    "img_size": (["32", "48"], (32, 48)),
    "folds_file": (["folds.json"], "folds.json"),
    "only_folds": (["0", "2"], (0, 2)),
    "foreground_ids": (["1"], (1,)),
    "upernet_indices": (["0", "1"], (0, 1)),
    "fg_weight": (["2.5"], 2.5),
    "clip_grad": (["1.5"], 1.5),
    "workers": (["2"], 2),
}


def _argv(value) -> list[str]:
    if isinstance(value, tuple):
        return [str(v) for v in value]
    return [str(value)]


def _resolve(task: str, *extra: str):
    a = _parser().parse_args(
        ["finetune", task, "--weights", "scratch", "--data", "m.csv", "--out", "o", *extra]
    )
    return _task_config(a, SegmentConfig if task == "segment" else ClassifyConfig)


@pytest.mark.parametrize("task, cls", [("classify", ClassifyConfig), ("segment", SegmentConfig)])
def test_every_field_has_a_flag(task, cls):
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(cls(), f.name)
        if isinstance(default, bool):
            argv, want = [f"--no-{flag[2:]}" if default else flag], not default
        elif default is None:
            argv, want = [flag, *FOR_NONE[f.name][0]], FOR_NONE[f.name][1]
        else:
            argv, want = [flag, *_argv(default)], default
        if f.name == "folds_file":
            argv += ["--folds", "2"]
        assert getattr(_resolve(task, *argv), f.name) == want, f.name


def test_flags_presets_and_set_layer_in_order(tmp_path):
    cfg = _resolve("classify", "--mode", "full", "--label-fraction", "0.5", "1.0", "--max-frames", "4")
    assert (cfg.mode, cfg.label_fractions, cfg.max_frames_per_video) == ("full", (0.5, 1.0), 4)
    assert _resolve("classify", "--no-class-weighting").class_weighting is False  # the older flag
    assert _resolve("classify", "--folds-file", "null").folds_file is None  # as --set reads it
    cfg = _resolve("segment", "--preset", "hc18-segment", "--epochs", "3", "--set", "batch_size=2")
    assert (cfg.epochs, cfg.batch_size, cfg.n_overlays) == (3, 2, 2)  # flag and --set beat the preset
    mine = tmp_path / "mine.yaml"
    mine.write_text("epochs: 7\nlinear_c: [0.5, 5]\n")
    assert _resolve("classify", "--preset", str(mine)).linear_c == (0.5, 5.0)


@pytest.mark.parametrize(
    "task, extra, message",
    [
        ("classify", ["--set", "mode=probe"], "mode must be linear|partial|full"),
        ("classify", ["--set", "aug_scale=[0.5, 2.0]"], "aug_scale must satisfy"),
        ("classify", ["--set", "epochs=0"], "epochs, batch_size and train_blocks"),
        ("classify", ["--set", "label_fractions=[0]"], "label_fractions must be in (0, 1]"),
        ("classify", ["--set", "nonsense=1"], "unknown config key 'nonsense'"),
        ("segment", ["--head", "fcn"], "head must be auto or one of"),
        ("segment", ["--set", "crop_scale=[0, 1]"], "crop_scale must satisfy"),
        ("segment", ["--preset", "no-such"], "unknown preset 'no-such'"),
        # every numeric value is checked on its final value, whichever layer set it
        ("classify", ["--lr", "-1"], "lr must be in [1e-12, inf], got -1.0"),
        ("classify", ["--set", "weight_decay=-0.1"], "weight_decay must be in [0, inf], got -0.1"),
        ("classify", ["--set", "layer_decay=1.5"], "layer_decay must be in [1e-06, 1], got 1.5"),
        ("classify", ["--set", "max_frames_per_video=0"], "max_frames_per_video must be in [1, inf]"),
        ("classify", ["--set", "clip_grad=-1"], "clip_grad must be in [1e-12, inf], got -1"),
        ("classify", ["--set", "label_smoothing=1"], "label_smoothing must be in [0, 0.99]"),
        ("segment", ["--set", "patience=0"], "patience must be in [1, inf], got 0"),
        ("segment", ["--lr", "0"], "lr must be in [1e-12, inf], got 0.0"),
        ("segment", ["--set", "drop_path=1"], "drop_path must be in [0, 0.99], got 1"),
        ("segment", ["--set", "encoder_lr_scale=-1"], "encoder_lr_scale must be in [0, inf]"),
        ("segment", ["--set", "decoder_depth=0"], "decoder_depth must be in [1, inf]"),
    ],
)
def test_bad_values_are_refused_naming_the_key(task, extra, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _resolve(task, *extra)


def test_print_config_and_a_one_line_error(capsys):
    base = ["finetune", "classify", "--weights", "scratch", "--data", "m.csv", "--out", "o"]
    assert main([*base, "--preset", "pocus-classify", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["epochs"] == 10 and printed == to_dict(_resolve("classify", "--preset", "pocus-classify"))
    assert main([*base, "--set", "mode=probe"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mode must be linear|partial|full" in err


def test_pretrain_refuses_a_bad_override_in_one_line(capsys, tmp_path):
    argv = [
        "pretrain",
        "--method",
        "mae",
        "--preset",
        "tiny",
        "--out",
        str(tmp_path / "r"),
        "--data",
        "m.csv",
    ]
    assert main([*argv, "--set", "mae.mask_ratio=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mae.mask_ratio 0" in err and not (tmp_path / "r").exists()


def _task_parser(task: str) -> argparse.ArgumentParser:
    def sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return action.choices[name]

    return sub(sub(_parser(), "finetune"), task)


@pytest.mark.parametrize("task, cls", [("classify", ClassifyConfig), ("segment", SegmentConfig)])
def test_every_flag_field_has_help_text_and_its_flag_shows_it(task, cls):
    fields = dataclasses.fields(cls)
    assert [f.name for f in fields if not str(f.metadata.get("help", "")).strip()] == []
    shown = {a.dest: a.help for a in _task_parser(task)._actions}
    for f in fields:
        assert shown["cfg__" + f.name].startswith(f.metadata["help"] + " (default: "), f.name


def test_flag_help_needs_no_source_files(monkeypatch):
    """An installed package may have no .py files (a wheel of .pyc, a zipapp): help text must not be read
    from the source."""

    def no_source(*args, **kwargs):
        raise OSError("could not get source code")

    for name in ("getsource", "getsourcelines", "findsource", "getsourcefile"):
        monkeypatch.setattr(inspect, name, no_source)
    monkeypatch.setattr(linecache, "getlines", lambda *args, **kwargs: [])
    shown = {a.dest: a.help for a in _task_parser("classify")._actions}
    assert shown["cfg__frame_fps"] == "frames sampled per second of video (None: every frame) (default: 3.0)"
    assert shown["cfg__folds_file"].startswith("a folds.json (")
    shown = {a.dest: a.help for a in _task_parser("segment")._actions}
    assert shown["cfg__empty_policy"].startswith("one | nan | zero: Dice/IoU of an image")
