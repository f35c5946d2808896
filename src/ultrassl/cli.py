"""Command line: parse arguments into configs and call :mod:`ultrassl.api`. No logic lives here.

The parser is built from light modules only (the configs' dataclasses, the read limits, the preset
files' names), and each command imports what it runs: ``--help`` answers without loading torch,
scikit-learn or matplotlib (tests/test_cli.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ultrassl import __version__
from ultrassl.config import (
    TrainConfig,
    parse_set,
    preset_names,
    to_dict,
)
from ultrassl.data.limits import ReadLimits
from ultrassl.data.skipped import report_skipped
from ultrassl.errors import UltrasslError
from ultrassl.finetune.options import ClassifyConfig, SegmentConfig, scratch_encoder, task_config
from ultrassl.workflow import PRETRAIN_OPTIONS, pretrain_options

#: the methods ``import ultrassl.methods`` registers, named here so that ``--help`` needs no torch
#: (tests/test_cli.py checks it against the registry); a --plugin adds its own
BUILTIN_METHODS = ("convmae", "deblur-convmae", "deblur-mae", "mae", "ultramae", "uscl")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ultrassl", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a module (dotted name or .py file) that registers its own methods; repeatable",
    )
    talk = p.add_mutually_exclusive_group()
    talk.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="on stderr only warnings and errors (no progress, no notes)",
    )
    talk.add_argument("-v", "--verbose", action="store_true", help="on stderr also debug lines")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write the built-in synthetic ultrasound data set")
    s.add_argument("out_dir", type=Path, help="folder to write the data set and its manifest.csv into")
    s.add_argument("--seed", type=int, default=0, help="seed of the generator (default: %(default)s)")
    s.add_argument("--patients", type=int, default=12, help="patients (each has its own clips)")
    s.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(96, 96),
        metavar=("H", "W"),
        help="frame size in pixels (default: 96 96)",
    )

    s = sub.add_parser("index", help="scan a folder of images/videos/DICOM into a manifest CSV")
    s.add_argument(
        "data_dir", type=Path, help="folder to scan (sub-folders too; a top folder's name is a label)"
    )
    s.add_argument("-o", "--out", type=Path, required=True, help="manifest.csv to write")
    s.add_argument("--labels", type=Path, help="CSV with columns path,label")
    s.add_argument(
        "--group-pattern",
        help="regex on the file name whose first group is the patient/group id; a file it does not match "
        "becomes a group of its own (warned, with examples)",
    )
    s.add_argument(
        "--strict-groups",
        action="store_true",
        help="make a file that --group-pattern does not match an error (naming the files) instead of a "
        "warning",
    )
    s.add_argument(
        "--salt-file",
        type=Path,
        help="salt for the DICOM PatientID pseudonyms (default: OUT.salt, created when missing); give "
        "one file to every index of the same patients",
    )
    s.add_argument(
        "--clear-patient-ids",
        action="store_true",
        help="write DICOM PatientIDs in clear as group ids (default: a salted hash, so no id leaves)",
    )
    limits = ReadLimits()
    s.add_argument(
        "--max-pixels",
        type=int,
        default=limits.max_pixels,
        help="limit: pixels per frame; files with larger frames are skipped (default: %(default)s)",
    )
    _renamed(
        s,
        "--max-frames-per-file",
        "--max-frames",
        type=int,
        default=limits.max_frames,
        metavar="N",
        help="limit: frames in one file (video, GIF, multi-frame DICOM); longer files are skipped "
        "(default: %(default)s)",
    )
    s.add_argument(
        "--file-timeout",
        type=float,
        default=limits.max_seconds,
        metavar="SECONDS",
        help="seconds one video may take to decode while indexing; slower files are skipped (images and "
        "DICOM are bounded by --max-pixels/--max-frames-per-file)",
    )

    s = sub.add_parser("pretrain", help="self-supervised pre-training")
    s.add_argument(
        "--method",
        help=f"a registered method: {', '.join(BUILTIN_METHODS)}, or a --plugin's (see `ultrassl methods`; "
        "default: the preset's, else mae)",
    )
    s.add_argument(
        "--preset", help=f"preset name ({', '.join(preset_names())}; see `ultrassl presets`) or a YAML file"
    )
    s.add_argument("--data", help="manifest CSV (`ultrassl index FOLDER -o manifest.csv` writes one)")
    s.add_argument("--out", type=Path, required=True, help="run folder")
    s.add_argument("--from", dest="init_from", help="run folder, export folder or checkpoint to start from")
    s.add_argument(
        "--max-steps",
        type=int,
        help="stop after this many optimisation steps (train.max_steps; default: none)",
    )
    s.add_argument(
        "--epochs", type=int, help="passes over the training data (train.epochs; the schedule's length)"
    )
    s.add_argument("--time-limit", type=float, metavar="MINUTES", help=_field_help(TrainConfig, "time_limit"))
    s.add_argument(
        "--schedule-to-time-limit",
        action="store_true",
        default=None,
        help="with --time-limit: a short calibration run measures this machine's samples/s and the "
        "schedule (train.max_steps, warm-up 5 %% of it) is sized to fill the minutes; the same command "
        "again keeps it (train.schedule_to_time_limit)",
    )
    s.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="STEPS",
        help="write checkpoints/last.pt every STEPS steps (train.checkpoint_every; also at the end)",
    )
    s.add_argument(
        "--batch-size",
        type=int,
        help="samples per step in each process (train.batch_size): under torchrun the global batch is "
        "this x processes, and the learning rate scales with the global batch",
    )
    s.add_argument(
        "--workers",
        type=int,
        help="DataLoader processes feeding the training loop, in each process (data.num_workers; 0: the "
        "loop's own process)",
    )
    again = s.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (the default already: a folder holding a run of the same config "
        "continues from its newest good checkpoint; one of another config is refused)",
    )
    again.add_argument(
        "--fresh", action="store_true", help="start over: remove the checkpoints and metrics in --out first"
    )
    s.add_argument("--seed", type=int, help="seed of the model's init, masks and augmentation (train.seed)")
    s.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="where to train (train.device; auto: cuda if there)"
    )
    s.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="train.precision: " + _field_help(TrainConfig, "precision"),
    )
    s.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model (compiles once per input shape at start-up)",
    )
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    s.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    s.add_argument(
        "--label-fraction",
        type=float,
        metavar="F",
        help="uscl: keep the labels of this fraction of the training videos (one value in [0, 1]; "
        "uscl.label_fraction)",
    )
    s.add_argument(
        "--probe-data",
        help="labelled manifest (label, group_id): score the frozen encoder on it by k-NN while training; "
        "best.pt keeps the best score (probe.* in --set for the rest)",
    )
    s.add_argument(
        "--probe-every", type=int, metavar="STEPS", help="probe every STEPS steps (default: 10 times per run)"
    )

    s = sub.add_parser("reconstruct", help="draw input / masked / reconstruction / target")
    s.add_argument("run", type=Path, help="a pre-training run folder")
    s.add_argument("--data", type=Path, required=True, help="manifest CSV")
    s.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    s.add_argument("-n", type=int, default=8, help="frames to draw, one row each (default: %(default)s)")
    s.add_argument(
        "--seed", type=int, default=0, help="seed of the frames and masks drawn (default: %(default)s)"
    )

    s = sub.add_parser("export", help="export a run's encoder for timm (model.safetensors + config.json)")
    s.add_argument("run", type=Path, help="a pre-training run folder")
    s.add_argument("-o", "--out", type=Path, required=True, help="export folder to write")
    s.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="best: the best online-probe score (runs with --probe-data), else the lowest validation loss (uscl)",
    )

    s = sub.add_parser("convert", help="import a MAE/DeblurringMIM/timm/USCL checkpoint as an export")
    s.add_argument("checkpoint", type=Path, help="the checkpoint file (.pth, .pt, .safetensors)")
    s.add_argument("-o", "--out", type=Path, required=True, help="export folder to write")
    s.add_argument(
        "--in-chans",
        type=int,
        help="input channels of the export (3 -> 1 sums the RGB kernels; default: as is)",
    )
    s.add_argument(
        "--img-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size of the export (position embeddings resampled to it; default: as is)",
    )

    s = sub.add_parser("finetune", help="downstream evaluation with grouped k-fold cross-validation")
    task = s.add_subparsers(dest="task", required=True)
    c = task.add_parser("classify", help="linear probe / partial / full fine-tuning for classification")
    c.add_argument(
        "--weights", required=True, help="run folder, export folder, checkpoint file, or 'scratch'"
    )
    _scratch_flags(c)
    c.add_argument("--data", type=Path, required=True, help="manifest CSV with labels and group ids")
    c.add_argument("--out", type=Path, required=True, help="evaluation folder")
    _task_flags(c, ClassifyConfig, "classify")

    g = task.add_parser("segment", help="segmentation fine-tuning (images with masks)")
    g.add_argument(
        "--weights", required=True, help="run folder, export folder, checkpoint file, or 'scratch'"
    )
    _scratch_flags(g)
    g.add_argument("--data", type=Path, required=True, help="manifest CSV with mask_path")
    g.add_argument("--out", type=Path, required=True, help="evaluation folder")
    _task_flags(g, SegmentConfig, "segment")

    s = sub.add_parser("confidence", help="ultrasound confidence maps (.npy per frame + PNG previews)")
    s.add_argument("data", type=Path, help="an image/video/DICOM file, a folder, or a manifest CSV")
    s.add_argument("-o", "--out", type=Path, required=True, help="folder for <stem>_fNNNN.npy/.png")
    s.add_argument("--workers", type=int, default=1, help="parallel processes (1 thread each)")
    s.add_argument(
        "--alpha",
        type=float,
        default=2.0,
        help="depth attenuation: intensities x (1 - exp(-alpha x depth)) (default: %(default)s)",
    )
    s.add_argument(
        "--beta",
        type=float,
        default=90.0,
        help="edge weights exp(-beta x intensity step): larger, edges cut the walk more (default: %(default)s)",
    )
    s.add_argument(
        "--gamma",
        type=float,
        default=0.05,
        help="cost added to horizontal and diagonal edges (default: %(default)s)",
    )
    s.add_argument("--sector", choices=("auto", "on", "off"), default="auto", help="solve along scan lines")
    s.add_argument("--cache", type=Path, help="cache folder (default OUT/.cache)")
    s.add_argument("--no-previews", action="store_true", help="write only the .npy maps")

    s = sub.add_parser("evaluate", help="predict new data with a finetune evaluation's saved models")
    s.add_argument("--model", type=Path, required=True, help="a finetune output folder (or its models/)")
    s.add_argument("--data", type=Path, required=True, help="manifest CSV (labels/masks optional)")
    s.add_argument("--out", type=Path, help="default: MODEL/evaluate_<manifest name>")
    s.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to predict (default: auto)"
    )

    sub.add_parser("presets", help="list the built-in presets")
    sub.add_parser("methods", help="list the registered pre-training methods")

    s = sub.add_parser("demo", help="the whole story on built-in synthetic data")
    s.add_argument("--out", type=Path, default=Path("demo"), help="folder to write into (default: demo)")
    s.add_argument("--max-steps", type=int, default=1500, help="pre-training steps (default: %(default)s)")
    s.add_argument(
        "--folds", type=int, default=5, help="folds of the fine-tuning evaluations (default: %(default)s)"
    )
    _benchmark_flags(sub)
    return p


def _benchmark_flags(sub: Any) -> None:
    """``ultrassl benchmark``: the flags of :class:`ultrassl.benchmark.BenchmarkOptions`."""
    s = sub.add_parser(
        "benchmark",
        help="evaluate encoders on public ultrasound tasks (grouped folds, 95%% intervals, paired lifts)",
    )
    s.add_argument(
        "--data",
        type=Path,
        required=True,
        help="data root holding pocus/, busi/, hc18/ (docs/benchmark-data.md)",
    )
    s.add_argument("--out", type=Path, required=True, help="folder for benchmark.json and work/ (resumable)")
    s.add_argument(
        "--tasks",
        default="pocus-classify,busi-classify,busi-segment,hc18-segment",
        help="comma-separated tasks (default: %(default)s)",
    )
    s.add_argument(
        "--methods",
        default=None,
        help="comma-separated: registered methods (pre-trained per fold; METHOD@multi pre-trains on every "
        "data set together), 'scratch' (their random twins), or scratch-vit, scratch-convvit, scratch-r18 "
        "(default without --weights: every method and deblur-mae@multi; --quick: deblur-mae)",
    )
    s.add_argument(
        "--weights",
        nargs="+",
        default=[],
        metavar="PATH",
        help="run folders, export folders or checkpoints to evaluate, each against a random twin of its shape",
    )
    s.add_argument(
        "--quick",
        action="store_true",
        help="a first look in minutes: deblur-mae against its random twin (unless --methods), folds "
        "0,1,2, seeds 0,1, 0.5 min pre-training, 3 segmentation and 3 classification fine-tuning epochs",
    )
    s.add_argument("--folds", default=None, help="comma-separated test folds (default: 0-4; --quick 0,1,2)")
    s.add_argument("--seeds", default=None, help="comma-separated probe seeds (default: 0,1,2; --quick 0,1)")
    s.add_argument(
        "--seg-seeds", type=int, default=1, help="segmentation runs the first N seeds (default: 1)"
    )
    s.add_argument(
        "--pretrain-minutes",
        type=float,
        default=None,
        help="pre-training budget per method and fold (default: 2; --quick 0.5), made a step count by a short "
        "calibration on this machine",
    )
    s.add_argument(
        "--pretrain-steps",
        type=int,
        default=None,
        help="pre-train every method this many steps instead (no calibration: the same steps on any "
        "machine, and recipes compared at equal steps)",
    )
    s.add_argument(
        "--seg-epochs", type=int, default=None, help="segmentation fine-tuning epochs (default: 10)"
    )
    s.add_argument(
        "--ft-tasks",
        default="busi-classify",
        help="comma-separated classification tasks also fine-tuned, protocol 'finetune' ('' for none; "
        "default: %(default)s: POCUS' thousands of frames take hours on a CPU)",
    )
    s.add_argument(
        "--ft-mode",
        default="full",
        choices=("full", "partial"),
        help="classification fine-tuning: full (layer-wise lr decay, as MAE) | partial (last block)",
    )
    s.add_argument(
        "--ft-epochs",
        type=int,
        default=None,
        help="classification fine-tuning epochs (default: 15; --quick 3)",
    )
    s.add_argument(
        "--ft-seeds",
        type=int,
        default=1,
        help="classification fine-tuning runs the first N seeds (default: 1)",
    )
    s.add_argument(
        "--label-fractions",
        default=None,
        help="comma-separated fractions of each class's training groups for the linear probe's "
        "few-label curve (default: 0.1,0.25,0.5; 1 is the linear probe itself)",
    )
    s.add_argument(
        "--calib-steps", type=int, default=None, help="steps of the speed calibration (default: 12)"
    )
    s.add_argument("--img-size", type=int, default=112, help="input size of every encoder (default: 112)")
    s.add_argument("--seed", type=int, default=0, help="seed of the folds and of pre-training (default: 0)")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    s.add_argument("--precision", default="auto", help="pre-training precision: auto | fp32 | bf16")
    s.add_argument(
        "--pretrain-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every pre-training, after the method's CPU preset; repeatable",
    )
    s.add_argument(
        "--pretrain-batch", type=int, default=None, help="pre-training batch size (default: presets')"
    )


def _scratch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--like", help="with --weights scratch: take the architecture from this run/export")
    p.add_argument(
        "--arch", help="with --weights scratch: a timm architecture or tiny|small|base (e.g. resnet18)"
    )
    p.add_argument("--patch-size", type=int, default=16, help="with --arch (ViTs)")
    p.add_argument("--in-chans", type=int, default=1, help="with --arch: input channels")


#: older flag names of fine-tuning fields: they still work, with a deprecation note on stderr
#: (``--label-fraction`` is pre-training's one uscl fraction, ``--max-frames`` index's limit per file)
_DEPRECATED_FIELD_FLAGS = {"label_fractions": "--label-fraction", "max_frames_per_video": "--max-frames"}
_PREFIX = "cfg__"


class _DeprecatedAlias(argparse.Action):
    """An older name of a flag: stores what the new flag would, after a one-line note on stderr. Left out
    of ``--help``."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, **{**kwargs, "help": argparse.SUPPRESS})

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog}: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _renamed(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, new: str, old: str, **kw: Any
) -> argparse.Action:
    """Add the (storing) flag ``new`` with ``kw`` as ``add_argument`` takes them, and keep its older name
    ``old`` working as a hidden alias (added first: the flag's own action is the last one of its dest)."""
    assert "action" not in kw, "only flags that store their value can have a deprecated alias"
    dest = kw.get("dest") or new.lstrip("-").replace("-", "_")
    same = {k: kw[k] for k in ("type", "nargs", "metavar") if k in kw}
    p.add_argument(old, action=_DeprecatedAlias, new=new, dest=dest, default=argparse.SUPPRESS, **same)
    return p.add_argument(new, **kw)


def _field_help(cls: type, name: str) -> str:
    """A config field's ``metadata["help"]`` (one text for the flag and the config)."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def _yaml_value(text: str) -> Any:
    """A flag's value as YAML (numbers, null, lists), as ``--set`` reads values."""
    return parse_set([f"v={text}"])["v"]


def _task_flags(p: argparse.ArgumentParser, cls: type, task: str) -> None:
    """One flag per field of the task's config dataclass, its help the field's ``metadata["help"]``
    (kept with the dataclass, so it needs no source files), plus --preset, --set and --print-config."""
    p.add_argument("--preset", help=f"a {task} preset ({', '.join(preset_names('finetune'))}) or a YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    group = p.add_argument_group(f"{task} options (fields of {cls.__name__}; also --set NAME=VALUE)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        options = [t for t in typing.get_args(tp) if t is not type(None)] if _is_optional(tp) else [tp]
        base = options[0] if len(options) == 1 else Any
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {
            "dest": _PREFIX + f.name,
            "default": argparse.SUPPRESS,
            "metavar": "VALUE",
            "help": f"{f.metadata.get('help', '')} (default: {default})".strip(),
        }
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
            del kw["metavar"]
        elif typing.get_origin(base) is tuple:
            args = typing.get_args(base)
            kw["nargs"] = "+" if len(args) == 2 and args[1] is Ellipsis else len(args)
            kw["type"] = _yaml_value
        else:  # a plain string stays as typed; an optional one reads "null" as None, as --set does
            kw["type"] = str if base is str and not _is_optional(tp) else _yaml_value
        flag = "--" + f.name.replace("_", "-")
        if f.name in _DEPRECATED_FIELD_FLAGS:
            _renamed(group, flag, _DEPRECATED_FIELD_FLAGS[f.name], **kw)
        else:
            group.add_argument(flag, **kw)


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _task_config(a: argparse.Namespace, cls: type) -> Any:
    """defaults <- --preset <- flags <- --set, then one check of the final values."""
    options = {k.removeprefix(_PREFIX): v for k, v in vars(a).items() if k.startswith(_PREFIX)}
    return task_config(cls, a.preset, options, a.set)


def _scratch_spec(a: argparse.Namespace, img_size: tuple[int, int] | None = None) -> Any:
    """The EncoderSpec of ``--weights scratch --arch NAME`` (at --img-size, default 224), or None."""
    return scratch_encoder(a.weights, a.arch, patch_size=a.patch_size, in_chans=a.in_chans, img_size=img_size)


def _pretrain_flags(a: argparse.Namespace) -> dict[str, Any]:
    """The config sections the pre-training flags set (one table with ``ultrassl.pretrain``)."""
    return pretrain_options({name: getattr(a, name) for name in PRETRAIN_OPTIONS})


def main(argv: list[str] | None = None) -> int:
    import logging

    from ultrassl.logs import command_logging

    args = _parser().parse_args(argv)
    # the library's notes and progress (logging, under "ultrassl") as plain lines on stderr
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    with command_logging(level):
        try:
            for plugin in args.plugin:
                load_plugin(plugin)
            return _run(args)
        except UltrasslError as exc:
            print(f"ultrassl {args.command}: error: {exc}", file=sys.stderr)
            return 2


def load_plugin(name: str) -> None:
    """Import a --plugin's module (the method registry, and with it torch, loads only for one)."""
    from ultrassl.methods import load_plugin as load

    load(name)


# Each command imports what it runs (the parser above needs none of it: --help stays quick).


def _synth(a: argparse.Namespace) -> int:
    from ultrassl import api

    manifest = api.synth(a.out_dir, seed=a.seed, n_patients=a.patients, size=tuple(a.size))
    print(f"wrote synthetic data set to {a.out_dir} (manifest {manifest})")
    return 0


def _confidence(a: argparse.Namespace) -> int:
    from ultrassl import api

    res = api.confidence(
        a.data,
        a.out,
        alpha=a.alpha,
        beta=a.beta,
        gamma=a.gamma,
        sector=a.sector,
        workers=a.workers,
        cache_dir=a.cache,
        previews=not a.no_previews,
    )
    report_skipped(res.skipped)
    print(f"wrote {res.written} confidence maps to {a.out} ({res.cached} from the cache)")
    return 0


def _index(a: argparse.Namespace) -> int:
    from ultrassl import api

    summary = api.index(
        a.data_dir,
        a.out,
        labels_csv=a.labels,
        group_pattern=a.group_pattern,
        strict_groups=a.strict_groups,
        clear_patient_ids=a.clear_patient_ids,
        salt_file=a.salt_file,
        limits=ReadLimits(a.max_pixels, a.max_frames_per_file, a.file_timeout),
    )
    report_skipped(summary.skipped)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(summary.by_kind.items()))
    files = "file" if summary.n_indexed == 1 else "files"
    print(f"indexed {summary.n_indexed} {files} ({kinds}); skipped {summary.n_skipped}; wrote {a.out}")
    if summary.salt_file is not None:
        print(
            f"DICOM PatientIDs are written as salted-hash group ids; the salt is in {summary.salt_file} "
            "(keep it private; share the manifest without it)"
        )
    return 0


def _pretrain(a: argparse.Namespace) -> int:
    from ultrassl import api

    cfg = api.build_pretrain_config(a.method, a.preset, _pretrain_flags(a), a.set)
    if a.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    result = api.pretrain(cfg, a.out, resume="fresh" if a.fresh else "auto")
    print(
        f"{cfg.method}: {result.step} steps ({result.stopped_by}) in {result.seconds:.0f} s, "
        f"last loss {result.last_loss:.4f}; checkpoint {result.checkpoint}"
    )
    return 0


def _reconstruct(a: argparse.Namespace) -> int:
    from ultrassl import api

    print(f"wrote {api.reconstruct(a.run, a.data, a.out, n=a.n, seed=a.seed)}")
    return 0


def _export(a: argparse.Namespace) -> int:
    from ultrassl import api

    print(f"wrote {api.export(a.run, a.out, checkpoint=a.checkpoint)}")
    return 0


def _convert(a: argparse.Namespace) -> int:
    from ultrassl import api

    kwargs: dict[str, Any] = {}
    if a.in_chans:
        kwargs["in_chans"] = a.in_chans
    if a.img_size:
        kwargs["img_size"] = tuple(a.img_size)
    report = api.convert(a.checkpoint, a.out, **kwargs)
    print(json.dumps(report, indent=2, default=str))
    return 0


def _finetune(a: argparse.Namespace) -> int:
    task_cls = SegmentConfig if a.task == "segment" else ClassifyConfig
    tcfg = _task_config(a, task_cls)
    if a.print_config:
        print(yaml.safe_dump(to_dict(tcfg), sort_keys=False))
        return 0
    if a.task == "segment":
        from ultrassl.finetune.segment import finetune_segment as run
    else:
        from ultrassl.finetune.classify import finetune_classify as run
    out = run(
        a.weights, a.data, a.out, tcfg, scratch_like=a.like, scratch_spec=_scratch_spec(a, tcfg.img_size)
    )
    m = out["summary"]
    if a.task == "segment":
        print(
            f"Dice {m['dice']['mean']:.3f} ± {m['dice']['std']:.3f}, IoU {m['iou']['mean']:.3f} ± "
            f"{m['iou']['std']:.3f} ({tcfg.folds} folds, {out['n_images']} images); "
            f"report {out['paths'].get('report_md', a.out)}"
        )
    else:
        print(
            f"accuracy {m['accuracy']['mean']:.3f} ± {m['accuracy']['std']:.3f}, balanced accuracy "
            f"{m['balanced_accuracy']['mean']:.3f}, macro-F1 {m['macro_f1']['mean']:.3f} "
            f"({tcfg.folds} folds, {out['n_frames']} frames); report {out['paths']['report_md']}"
        )
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    from ultrassl.finetune.evaluate import evaluate

    out = evaluate(a.model, a.data, a.out, device=a.device)
    m = out["metrics"]
    if out["task"] == "classify" and m:
        print(
            f"accuracy {m['frame']['accuracy']:.3f} per frame, {m['video']['accuracy']:.3f} per video "
            f"({out['n']} frames)"
        )
    elif out["task"] == "segment" and m:
        print(f"Dice {m['dice']:.3f}, IoU {m['iou']:.3f} ({out['n']} images)")
    print("\n".join(f"  {k:<20} {v}" for k, v in out["paths"].items()))
    return 0


def _presets(a: argparse.Namespace) -> int:
    print("\n".join(preset_names()))
    print("\n".join(f"{name:<20} (finetune --preset)" for name in preset_names("finetune")))
    return 0


def _methods(a: argparse.Namespace) -> int:
    from ultrassl import api

    names = api.method_names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {api.get_method(name).summary}")
    return 0


def _demo(a: argparse.Namespace) -> int:
    from ultrassl.demo import run_demo

    t0 = time.monotonic()
    r = run_demo(a.out, max_steps=a.max_steps, folds=a.folds)
    print(Path(r.report).read_text())
    print(f"demo finished in {time.monotonic() - t0:.0f} s; report: {r.report}")
    return 0


def _benchmark(a: argparse.Namespace) -> int:
    import shlex

    from ultrassl.benchmark import BenchmarkOptions, run_benchmark

    def items(text: str | None) -> tuple[str, ...]:
        return tuple(x.strip() for x in (text or "").split(",") if x.strip())

    def ints(text: str | None) -> tuple[int, ...] | None:
        return tuple(int(x) for x in items(text)) if text else None

    def floats(text: str | None) -> tuple[float, ...] | None:
        return tuple(float(x) for x in items(text)) if text else None

    opt = BenchmarkOptions(
        data=a.data,
        out=a.out,
        tasks=items(a.tasks),
        methods=items(a.methods),
        weights=tuple(a.weights),
        quick=a.quick,
        folds=ints(a.folds),
        seeds=ints(a.seeds),
        seg_seeds=a.seg_seeds,
        pretrain_minutes=a.pretrain_minutes,
        pretrain_steps=a.pretrain_steps,
        seg_epochs=a.seg_epochs,
        calib_steps=a.calib_steps,
        img_size=a.img_size,
        seed=a.seed,
        device=a.device,
        precision=a.precision,
        pretrain_set=tuple(a.pretrain_set),
        pretrain_batch=a.pretrain_batch,
        ft_tasks=items(a.ft_tasks),
        ft_mode=a.ft_mode,
        ft_epochs=a.ft_epochs,
        ft_seeds=a.ft_seeds,
        label_fractions=floats(a.label_fractions),
        command="ultrassl " + shlex.join(sys.argv[1:]),
    )
    r = run_benchmark(opt)
    for task, encoders in r.summary.items():
        for enc, protocols in encoders.items():
            for protocol, metrics in protocols.items():
                metric = "balanced_accuracy" if "balanced_accuracy" in metrics else "dice"
                m = metrics[metric]
                line = f"{task:15s} {enc:22s} {protocol:11s} {metric} {_iv(m)}"
                lift = r.lifts.get(task, {}).get(enc, {}).get(protocol, {}).get(metric)
                if lift:
                    line += f"  lift {_iv(lift)} (detectable {_num(lift['detectable'])}, n={lift['n']})"
                print(line)
    for note in r.skipped:
        print(f"skipped: {note}")
    completed = f" ({r.completed} of them completing earlier entries)" if r.completed else ""
    print(
        f"{r.evaluated} evaluated{completed}, {r.read_back} read back, {r.seconds / 60:.1f} min; "
        f"results: {r.results_file}"
    )
    return 0


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _iv(m: dict[str, Any]) -> str:
    """``mean [low, high]`` of an interval dict."""
    return f"{_num(m['mean'])} [{_num(m['low'])}, {_num(m['high'])}]"


#: subcommand -> its handler (each parses nothing: the config and api calls do the work)
_COMMANDS = {
    "synth": _synth,
    "confidence": _confidence,
    "index": _index,
    "pretrain": _pretrain,
    "reconstruct": _reconstruct,
    "export": _export,
    "convert": _convert,
    "finetune": _finetune,
    "evaluate": _evaluate,
    "presets": _presets,
    "methods": _methods,
    "demo": _demo,
    "benchmark": _benchmark,
}


def _run(a: argparse.Namespace) -> int:
    return _COMMANDS[a.command](a)
