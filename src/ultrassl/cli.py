"""Command line: parse arguments into configs and call :mod:`ultrassl.api`. No logic lives here."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ultrassl.errors import ConfigError, UltrasslError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ultrassl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write the built-in synthetic ultrasound data set")
    s.add_argument("out_dir", type=Path)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--patients", type=int, default=12, help="patients (each has its own clips)")
    s.add_argument("--size", type=int, nargs=2, default=(96, 96), metavar=("H", "W"))

    s = sub.add_parser("index", help="scan a folder of images/videos/DICOM into a manifest CSV")
    s.add_argument("data_dir", type=Path)
    s.add_argument("-o", "--out", type=Path, required=True, help="manifest.csv to write")
    s.add_argument("--labels", type=Path, help="CSV with columns path,label")
    s.add_argument("--group-pattern", help="regex on the file name giving the patient/group id")

    s = sub.add_parser("pretrain", help="self-supervised pre-training")
    s.add_argument("--method", choices=("mae", "deblur-mae", "ultramae", "uscl"))
    s.add_argument("--preset", help="preset name (see `ultrassl presets`) or a YAML file")
    s.add_argument("--data", help="manifest CSV")
    s.add_argument("--out", type=Path, required=True, help="run folder")
    s.add_argument("--from", dest="init_from", help="run folder, export folder or checkpoint to start from")
    s.add_argument("--max-steps", type=int)
    s.add_argument("--epochs", type=int)
    s.add_argument("--time-limit", type=float, metavar="MINUTES")
    s.add_argument("--checkpoint-every", type=int, metavar="STEPS")
    s.add_argument("--batch-size", type=int)
    s.add_argument("--workers", type=int)
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--seed", type=int)
    s.add_argument("--device", choices=("auto", "cpu", "cuda"))
    s.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    s.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model (about a minute per shape)",
    )
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    s.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    s.add_argument(
        "--label-fraction", type=float, help="uscl: keep the labels of this fraction of training videos"
    )

    s = sub.add_parser("reconstruct", help="draw input / masked / reconstruction / target")
    s.add_argument("run", type=Path)
    s.add_argument("--data", type=Path, required=True, help="manifest CSV")
    s.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    s.add_argument("-n", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("export", help="export a run's encoder for timm (model.safetensors + config.json)")
    s.add_argument("run", type=Path)
    s.add_argument("-o", "--out", type=Path, required=True)
    s.add_argument(
        "--checkpoint", choices=("last", "best"), default="last", help="best: lowest validation loss (uscl)"
    )

    s = sub.add_parser("convert", help="import a MAE/DeblurringMIM/timm/USCL checkpoint as an export")
    s.add_argument("checkpoint", type=Path)
    s.add_argument("-o", "--out", type=Path, required=True)
    s.add_argument("--in-chans", type=int)
    s.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"))

    s = sub.add_parser("finetune", help="downstream evaluation with grouped k-fold cross-validation")
    task = s.add_subparsers(dest="task", required=True)
    c = task.add_parser("classify", help="linear probe / partial / full fine-tuning for classification")
    c.add_argument(
        "--weights", required=True, help="run folder, export folder, checkpoint file, or 'scratch'"
    )
    _scratch_flags(c)
    c.add_argument("--data", type=Path, required=True, help="manifest CSV with labels and group ids")
    c.add_argument("--out", type=Path, required=True, help="evaluation folder")
    c.add_argument("--mode", choices=("linear", "partial", "full"), default="linear")
    _protocol_flags(c)
    c.add_argument("--train-blocks", type=int, default=1, help="--mode partial: trainable last blocks")
    c.add_argument("--epochs", type=int, default=30)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--weight-decay", type=float, default=0.05)
    c.add_argument("--layer-decay", type=float, default=0.65, help="--mode full: layer-wise lr decay")
    c.add_argument("--drop-path", type=float, default=0.1, help="--mode full: stochastic depth rate")
    c.add_argument("--label-smoothing", type=float, default=0.1)
    c.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off)")
    c.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0: off)")
    c.add_argument("--no-class-weighting", action="store_true", help="plain (unweighted) cross-entropy")
    c.add_argument("--patience", type=int, default=8, help="early stopping on validation, in epochs")
    c.add_argument("--aug-scale", type=float, nargs=2, default=(0.4, 1.0), help="crop area range")
    c.add_argument("--aug-intensity", type=float, default=0.25, help="gain/offset jitter (normalised units)")
    c.add_argument("--aug-gamma", type=float, default=0.4, help="gamma jitter exp(+-x); 0 turns it off")
    c.add_argument("--frame-fps", type=float, default=3.0, help="frames sampled per second of video")
    c.add_argument("--max-frames", type=int, default=30, help="at most this many frames per video")
    c.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"))
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    g = task.add_parser("segment", help="segmentation fine-tuning (images with masks)")
    g.add_argument(
        "--weights", required=True, help="run folder, export folder, checkpoint file, or 'scratch'"
    )
    _scratch_flags(g)
    g.add_argument("--data", type=Path, required=True, help="manifest CSV with mask_path")
    g.add_argument("--out", type=Path, required=True, help="evaluation folder")
    g.add_argument(
        "--head",
        choices=("auto", "mae", "upernet", "unet"),
        default="auto",
        help="auto: the MAE-style decoder head for ViTs, a U-Net for ResNets",
    )
    _protocol_flags(g)
    g.add_argument("--epochs", type=int, default=40)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--freeze-encoder", action="store_true")
    g.add_argument("--empty-policy", choices=("one", "nan", "zero"), default="one")
    g.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"))
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    s = sub.add_parser("confidence", help="ultrasound confidence maps (.npy per frame + PNG previews)")
    s.add_argument("data", type=Path, help="an image/video/DICOM file, a folder, or a manifest CSV")
    s.add_argument("-o", "--out", type=Path, required=True, help="folder for <stem>_fNNNN.npy/.png")
    s.add_argument("--workers", type=int, default=1, help="parallel processes (1 thread each)")
    s.add_argument("--alpha", type=float, default=2.0)
    s.add_argument("--beta", type=float, default=90.0)
    s.add_argument("--gamma", type=float, default=0.05)
    s.add_argument("--sector", choices=("auto", "on", "off"), default="auto", help="solve along scan lines")
    s.add_argument("--cache", type=Path, help="cache folder (default OUT/.cache)")
    s.add_argument("--no-previews", action="store_true", help="write only the .npy maps")

    s = sub.add_parser("evaluate", help="predict new data with a finetune evaluation's saved models")
    s.add_argument("--model", type=Path, required=True, help="a finetune output folder (or its models/)")
    s.add_argument("--data", type=Path, required=True, help="manifest CSV (labels/masks optional)")
    s.add_argument("--out", type=Path, help="default: MODEL/evaluate_<manifest name>")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    sub.add_parser("presets", help="list the built-in presets")

    s = sub.add_parser("demo", help="the whole story on built-in synthetic data")
    s.add_argument("--out", type=Path, default=Path("demo"))
    s.add_argument("--max-steps", type=int, default=1500, help="pre-training steps")
    s.add_argument("--folds", type=int, default=5)
    return p


def _scratch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--like", help="with --weights scratch: take the architecture from this run/export")
    p.add_argument(
        "--arch", help="with --weights scratch: a timm architecture or tiny|small|base (e.g. resnet18)"
    )
    p.add_argument("--patch-size", type=int, default=16, help="with --arch (ViTs)")
    p.add_argument("--in-chans", type=int, default=1, help="with --arch: input channels")


def _protocol_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the evaluation protocol (``finetune.splits.Protocol``) shared by classify and segment."""
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--folds-file", type=Path, help="use these folds (folds.json format) instead of --folds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--label-fraction", type=float, nargs="+", default=[1.0])


def _protocol(a: argparse.Namespace) -> dict[str, Any]:
    return dict(
        folds=a.folds,
        folds_file=str(a.folds_file) if a.folds_file else None,
        seeds=tuple(a.seeds),
        label_fractions=tuple(a.label_fraction),
    )


def _scratch_spec(a: argparse.Namespace) -> Any:
    """The EncoderSpec of ``--weights scratch --arch NAME`` (at --img-size, default 224), or None."""
    from ultrassl.models.vit import EncoderSpec

    if not a.arch:
        return None
    if str(a.weights) != "scratch":
        raise ConfigError("--arch only applies to --weights scratch (pre-trained weights bring their own)")
    size = tuple(a.img_size) if a.img_size else (224, 224)
    return EncoderSpec(arch=a.arch, img_size=size, patch_size=a.patch_size, in_chans=a.in_chans)


def _pretrain_flags(a: argparse.Namespace) -> dict[str, Any]:
    train = {
        "max_steps": a.max_steps,
        "epochs": a.epochs,
        "time_limit": a.time_limit,
        "checkpoint_every": a.checkpoint_every,
        "batch_size": a.batch_size,
        "seed": a.seed,
        "device": a.device,
        "precision": a.precision,
        "compile": a.compile,
    }
    flags: dict[str, Any] = {"train": {k: v for k, v in train.items() if v is not None}}
    data = {"manifest": a.data, "num_workers": a.workers}
    flags["data"] = {k: v for k, v in data.items() if v is not None}
    if a.init_from:
        flags["init_from"] = a.init_from
    if a.label_fraction is not None:
        flags["uscl"] = {"label_fraction": a.label_fraction}
    return flags


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except UltrasslError as exc:
        print(f"ultrassl {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace) -> int:
    from ultrassl import api, config

    if a.command == "synth":
        manifest = api.synth(a.out_dir, seed=a.seed, n_patients=a.patients, size=tuple(a.size))
        print(f"wrote synthetic data set to {a.out_dir} (manifest {manifest})")
    elif a.command == "confidence":
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
        for path, reason in res.skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        print(f"wrote {res.written} confidence maps to {a.out} ({res.cached} from the cache)")
    elif a.command == "index":
        summary = api.index(a.data_dir, a.out, labels_csv=a.labels, group_pattern=a.group_pattern)
        for path, reason in summary.skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(summary.by_kind.items()))
        print(f"indexed {summary.n_indexed} files ({kinds}); skipped {summary.n_skipped}; wrote {a.out}")
    elif a.command == "pretrain":
        cfg = config.build_pretrain_config(a.method, a.preset, _pretrain_flags(a), a.set)
        if a.print_config:
            import yaml

            print(yaml.safe_dump(config.to_dict(cfg), sort_keys=False))
            return 0
        result = api.pretrain(cfg, a.out, resume=a.resume)
        print(
            f"{cfg.method}: {result.step} steps ({result.stopped_by}) in {result.seconds:.0f} s, "
            f"last loss {result.last_loss:.4f}; checkpoint {result.checkpoint}"
        )
    elif a.command == "reconstruct":
        print(f"wrote {api.reconstruct(a.run, a.data, a.out, n=a.n, seed=a.seed)}")
    elif a.command == "export":
        print(f"wrote {api.export(a.run, a.out, checkpoint=a.checkpoint)}")
    elif a.command == "convert":
        kwargs: dict[str, Any] = {}
        if a.in_chans:
            kwargs["in_chans"] = a.in_chans
        if a.img_size:
            kwargs["img_size"] = tuple(a.img_size)
        report = api.convert(a.checkpoint, a.out, **kwargs)
        print(json.dumps(report, indent=2, default=str))
    elif a.command == "finetune" and a.task == "segment":
        from ultrassl.finetune.segment import SegmentConfig, finetune_segment

        scfg = SegmentConfig(
            head=a.head,
            **_protocol(a),
            epochs=a.epochs,
            batch_size=a.batch_size,
            lr=a.lr,
            freeze_encoder=a.freeze_encoder,
            empty_policy=a.empty_policy,
            img_size=tuple(a.img_size) if a.img_size else None,
            device=a.device,
        )
        out = finetune_segment(
            a.weights, a.data, a.out, scfg, scratch_like=a.like, scratch_spec=_scratch_spec(a)
        )
        dice, iou = out["summary"]["dice"], out["summary"]["iou"]
        print(
            f"Dice {dice['mean']:.3f} ± {dice['std']:.3f}, IoU {iou['mean']:.3f} ± {iou['std']:.3f} "
            f"({a.folds} folds, {out['n_images']} images); report {out['paths'].get('report_md', a.out)}"
        )
    elif a.command == "finetune":
        from ultrassl.finetune.classify import ClassifyConfig, finetune_classify

        cfg = ClassifyConfig(
            mode=a.mode,
            **_protocol(a),
            train_blocks=a.train_blocks,
            epochs=a.epochs,
            batch_size=a.batch_size,
            lr=a.lr,
            weight_decay=a.weight_decay,
            layer_decay=a.layer_decay,
            drop_path=a.drop_path,
            label_smoothing=a.label_smoothing,
            mixup=a.mixup,
            cutmix=a.cutmix,
            class_weighting=not a.no_class_weighting,
            patience=a.patience,
            aug_scale=tuple(a.aug_scale),
            aug_intensity=a.aug_intensity,
            aug_gamma=a.aug_gamma,
            frame_fps=a.frame_fps,
            max_frames_per_video=a.max_frames,
            img_size=tuple(a.img_size) if a.img_size else None,
            device=a.device,
        )
        out = finetune_classify(
            a.weights, a.data, a.out, cfg, scratch_like=a.like, scratch_spec=_scratch_spec(a)
        )
        head = out["summary"]
        print(
            f"accuracy {head['accuracy']['mean']:.3f} ± {head['accuracy']['std']:.3f}, balanced accuracy "
            f"{head['balanced_accuracy']['mean']:.3f}, macro-F1 {head['macro_f1']['mean']:.3f} "
            f"({a.folds} folds, {out['n_frames']} frames); report {out['paths']['report_md']}"
        )
    elif a.command == "evaluate":
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
    elif a.command == "presets":
        print("\n".join(config.preset_names()))
    elif a.command == "demo":
        t0 = time.monotonic()
        r = api.demo(a.out, max_steps=a.max_steps, folds=a.folds)
        print(Path(r.report).read_text())
        print(f"demo finished in {time.monotonic() - t0:.0f} s; report: {r.report}")
    return 0
