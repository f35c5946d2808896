"""The one-call Python API (``ultrassl.index/pretrain/export/finetune/evaluate``): a tiny project from
Python end to end with typed results and nothing printed, the command line's options under the same
names, and one-line errors for what does not exist."""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import TINY_PRETRAIN_CALL

import ultrassl
from ultrassl.cli import _parser
from ultrassl.errors import ConfigError
from ultrassl.finetune.options import ClassifyConfig, SegmentConfig

#: the tests' tiny MAE call, logging every step
TINY_RUN = {**TINY_PRETRAIN_CALL, "set": [*TINY_PRETRAIN_CALL["set"], "train.log_every=1"]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """``clips/`` (lung clips in one sub-folder per class, files named by patient) and ``new/`` (two of
    them, flat: no labels)."""
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("project")
    clips = root / "clips"
    make_synthetic_dataset(
        clips, n_patients=8, clips_per_patient=1, n_frames=4, size=(64, 64), n_lesion_images=0, seed=3
    )
    (clips / "manifest.csv").unlink()  # synth's own manifest: the index below writes the project's
    (root / "new").mkdir()
    for clip in sorted(clips.glob("*/p00[01]_*.mp4")):
        shutil.copy(clip, root / "new" / clip.name)
    return root


def test_a_tiny_project_from_python_returns_typed_results_and_prints_nothing(folders, tmp_path, capsys):
    summary = ultrassl.index(folders / "clips", tmp_path / "clips.csv", group_pattern=r"^(p\d+)")
    assert summary.n_indexed == 8 and summary.n_skipped == 0
    assert summary.manifest_path == tmp_path / "clips.csv"

    run = ultrassl.pretrain("mae", tmp_path / "clips.csv", tmp_path / "run", **TINY_RUN)
    assert isinstance(run, ultrassl.PretrainResult)
    assert (run.run_dir, run.method, run.steps, run.total_steps) == (tmp_path / "run", "mae", 2, 2)
    assert run.stopped_by == "max_steps" and run.finished
    assert run.last_checkpoint == tmp_path / "run" / "checkpoints" / "last.pt"
    assert run.last_checkpoint.exists() and run.best_checkpoint is None
    assert isinstance(run.final_loss, float) and run.seconds > 0
    assert "steps=2/2" in repr(run) and "PosixPath" not in repr(run)
    with pytest.raises(Exception, match="frozen|cannot assign"):
        run.steps = 3  # type: ignore[misc]
    # the same call again continues the run: here it had reached its end, so no step and no loss
    again = ultrassl.pretrain("mae", tmp_path / "clips.csv", tmp_path / "run", **TINY_RUN)
    assert again.steps == 2 and again.final_loss is None

    model = ultrassl.export(tmp_path / "run", tmp_path / "model")
    assert model == tmp_path / "model" and (model / "model.safetensors").exists()
    assert json.loads((model / "config.json").read_text())["pretrained_cfg"]["input_size"] == [1, 32, 48]

    scores = ultrassl.finetune(
        model, tmp_path / "clips.csv", tmp_path / "eval", folds=2, max_frames_per_video=2, device="cpu"
    )
    assert isinstance(scores, ultrassl.FinetuneResult) and scores.task == "classify"
    assert set(scores.scores) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
    accuracy = scores.scores["accuracy"]
    assert isinstance(accuracy, ultrassl.Score) and accuracy.n == 2 and 0.0 <= accuracy.mean <= 1.0
    assert scores.n_items == 16  # 8 clips x 2 frames
    assert scores.report == tmp_path / "eval" / "report.md" and scores.report.exists()
    assert scores.report_json.exists() and scores.predictions.exists()
    assert scores.models == tmp_path / "eval" / "models"
    assert "accuracy: " in repr(scores) and "PosixPath" not in repr(scores)
    # still the dict the engines returned before
    assert scores["summary"]["accuracy"]["n"] == 2 and scores["n_frames"] == 16
    assert set(scores) == {"summary", "paths", "n_frames"}
    assert dict(scores)["paths"] == scores.evaluation.paths

    labelled = ultrassl.evaluate(tmp_path / "eval", tmp_path / "clips.csv", tmp_path / "pred")
    assert isinstance(labelled, ultrassl.EvaluateResult) and labelled.task == "classify"
    assert labelled.out_dir == tmp_path / "pred" and labelled.n_items == 16
    assert labelled.predictions == tmp_path / "pred" / "predictions_videos.csv"
    assert labelled.frame_predictions == tmp_path / "pred" / "predictions_frames.csv"
    assert labelled.metrics_file.exists() and 0.0 <= labelled.metrics["video"]["accuracy"] <= 1.0

    ultrassl.index(folders / "new", tmp_path / "new.csv", group_pattern=r"^(p\d+)")
    new = ultrassl.evaluate(tmp_path / "eval", tmp_path / "new.csv")  # no labels: predictions only
    assert new.out_dir == tmp_path / "eval" / "evaluate_new" and new.metrics is None
    assert new.predictions.exists() and "metrics=None" in repr(new)

    assert capsys.readouterr() == ("", "")


# ----------------------------------------------------------------------------------------------------
# errors: one line, naming what is wrong and what is valid; nothing is written


def _one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_an_unknown_section_names_it_and_the_valid_ones(tmp_path):
    message = _one_line_error(ultrassl.pretrain, "mae", "clips.csv", tmp_path / "run", uscl={"k": 1})
    assert "'uscl'" in message and "blur, data, encoder, init_from, mae, method, optim" in message
    # the same section is valid for the method that reads it
    message = _one_line_error(
        ultrassl.pretrain, "deblur-mae", "clips.csv", tmp_path / "run", blur={"sigmaa": 2.0}
    )
    assert "'blur.sigmaa'" in message and "sigma" in message
    assert not (tmp_path / "run").exists()


def test_an_unknown_key_in_a_section_or_in_set_names_it_and_the_valid_ones(tmp_path):
    message = _one_line_error(ultrassl.pretrain, "mae", "clips.csv", tmp_path / "run", train={"epochz": 5})
    assert "'train.epochz'" in message and "epochs" in message and "max_steps" in message
    message = _one_line_error(ultrassl.pretrain, "mae", "clips.csv", tmp_path / "run", set="train.epochz=5")
    assert "'train.epochz'" in message and "epochs" in message
    message = _one_line_error(ultrassl.pretrain, "mae", "clips.csv", tmp_path / "run", train=5)
    assert "train" in message and "mapping" in message
    assert not (tmp_path / "run").exists()


def test_an_option_given_twice_is_refused(tmp_path):
    message = _one_line_error(
        ultrassl.pretrain, "mae", "clips.csv", tmp_path / "run", max_steps=3, train={"max_steps": 5}
    )
    assert "train.max_steps is given twice" in message
    # ``data`` may be the whole data section; its manifest and workers then are the section's
    message = _one_line_error(
        ultrassl.pretrain, "mae", {"manifest": "clips.csv", "num_workers": 1}, tmp_path / "run", workers=2
    )
    assert "data.num_workers is given twice" in message


def test_finetune_refuses_an_unknown_task_or_option_before_reading_anything(tmp_path):
    message = _one_line_error(ultrassl.finetune, "scratch", "x.csv", tmp_path / "eval", task="detect")
    assert "classify|segment" in message
    message = _one_line_error(ultrassl.finetune, "scratch", "x.csv", tmp_path / "eval", epochz=3)
    assert "'epochz'" in message and "epochs" in message
    # mode is classification's: segmentation names its own options
    message = _one_line_error(
        ultrassl.finetune, "scratch", "x.csv", tmp_path / "eval", task="segment", mode="full"
    )
    assert "'mode'" in message and "head" in message
    message = _one_line_error(ultrassl.finetune, "scratch", "x.csv", tmp_path / "eval", folds=1)
    assert "folds must be >= 2" in message
    message = _one_line_error(ultrassl.finetune, "models/x", "x.csv", tmp_path / "eval", arch="resnet18")
    assert "scratch" in message
    assert not (tmp_path / "eval").exists()


# ----------------------------------------------------------------------------------------------------
# the command line's options, under the same names


def _subcommand(*words: str) -> argparse.ArgumentParser:
    parser = _parser()
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest != "help"}


def _parameters(function) -> set[str]:
    return set(inspect.signature(function).parameters)


def test_pretrain_takes_every_flag_of_the_command_line_by_its_name():
    only_the_cli = {"print_config", "fresh"}  # resume="fresh" is --fresh; --resume is resume="auto"
    assert _dests(_subcommand("pretrain")) - only_the_cli <= _parameters(ultrassl.pretrain)


@pytest.mark.parametrize("task, options", [("classify", ClassifyConfig), ("segment", SegmentConfig)])
def test_finetune_takes_every_flag_of_the_command_line_by_its_name(task, options):
    from ultrassl.cli import _PREFIX

    flags = {d.removeprefix(_PREFIX) for d in _dests(_subcommand("finetune", task))} - {"print_config"}
    fields = {f.name for f in options.__dataclass_fields__.values()}
    assert flags - fields <= _parameters(ultrassl.workflow.finetune)
    # every field is an option by its name: the named ones in the signature, the rest through **options
    named = _parameters(ultrassl.workflow.finetune) & fields
    assert named == ({"mode", "folds", "seeds", "label_fractions"} & fields)


def test_export_and_evaluate_take_the_command_lines_names():
    assert _dests(_subcommand("export")) <= _parameters(ultrassl.export)
    assert _dests(_subcommand("evaluate")) <= _parameters(ultrassl.evaluate)
    index_flags = _dests(_subcommand("index")) - {"data_dir"}
    assert index_flags <= _parameters(ultrassl.index) and "folder" in _parameters(ultrassl.index)


# ----------------------------------------------------------------------------------------------------
# import ultrassl stays light


def test_the_new_names_import_without_torch():
    script = (
        "import sys, ultrassl, inspect\n"
        "from ultrassl import index, pretrain, export, finetune, evaluate\n"
        "from ultrassl import PretrainResult, FinetuneResult, EvaluateResult, Score\n"
        "assert callable(finetune) and finetune is ultrassl.finetune\n"
        "assert 'weights' in inspect.signature(finetune).parameters\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'sklearn'))\n"
        "assert heavy == [], heavy\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_ultrassl_finetune_is_the_package_and_the_function_in_either_import_order():
    import ultrassl.finetune.classify  # binds the sub-package to ``ultrassl.finetune``

    assert ultrassl.finetune.classify.finetune_classify is not None  # the modules are still reached
    assert callable(ultrassl.finetune)
    assert inspect.signature(ultrassl.finetune) == inspect.signature(ultrassl.workflow.finetune)
    with pytest.raises(ConfigError, match="classify|segment"):
        ultrassl.finetune("scratch", "x.csv", "never-written", task="detect")
    assert {"index", "pretrain", "export", "finetune", "evaluate", "PretrainResult"} <= set(dir(ultrassl))
    with pytest.raises(AttributeError, match="no attribute 'pretrian'"):
        ultrassl.pretrian  # noqa: B018


def test_finetune_segment_and_evaluate_its_masks(tmp_path, capsys):
    from ultrassl.data.synthetic import make_synthetic_dataset

    data = tmp_path / "lesions"
    make_synthetic_dataset(data, n_patients=1, clips_per_patient=0, n_lesion_images=12, size=(32, 32))
    (data / "manifest.csv").unlink()
    ultrassl.index(data, tmp_path / "lesions.csv", group_pattern=r"^(l\d+)")
    tiny = dict(arch="tiny", patch_size=8, img_size=(32, 32), decoder_dim=16, decoder_depth=1)
    scores = ultrassl.finetune(
        "scratch",
        tmp_path / "lesions.csv",
        tmp_path / "seg",
        task="segment",
        folds=2,
        epochs=1,
        n_overlays=0,
        device="cpu",
        **tiny,
    )
    assert scores.task == "segment" and set(scores.scores) == {"dice", "iou"}
    assert scores.n_items == 12 and scores["n_images"] == 12 and scores.predictions is None
    assert scores.report.name == "report.md" and scores.models == tmp_path / "seg" / "models"
    masks = ultrassl.evaluate(scores.out_dir, tmp_path / "lesions.csv")
    assert masks.task == "segment" and masks.n_items == 12 and masks.frame_predictions is None
    assert masks.predictions.name == "predictions.csv" and 0.0 <= masks.metrics["dice"] <= 1.0
    assert "dice: " in repr(masks)
    assert capsys.readouterr() == ("", "")
