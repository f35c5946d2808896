"""``ultrassl evaluate``: predictions (and metrics, where the data carry labels or masks) for new data.

The model is the folder a ``finetune classify|segment`` run wrote (or its ``models/`` sub-folder): every
fold's selected model, averaged (mean probability). Data are fed exactly as in that evaluation (frame
rate, frames per video, scan-area crop, input size, normalisation), read from a manifest made by
``ultrassl index``.

Every patient (group) of an evaluation was in some fold model's training data, so scores on the
evaluation's own patients are no fair estimate: such an overlap, read from the evaluation's
``folds.json``, is warned about and counted in ``metrics.json`` (:func:`seen_groups`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ultrassl.atomic import atomic_write_bytes, atomic_write_text
from ultrassl.data.datasets import load_frame_cache
from ultrassl.data.manifest import ManifestRow, read_manifest
from ultrassl.data.readers import read_frames
from ultrassl.data.segdata import read_mask
from ultrassl.data.skipped import report_skipped
from ultrassl.distributed import select_device
from ultrassl.errors import UltrasslError, UnreadableFileError
from ultrassl.finetune.saved import classifier_architecture, load_fold_models, read_card, spec_of
from ultrassl.jsonable import jsonable
from ultrassl.metrics import classification_metrics, segmentation_metrics
from ultrassl.models.seg_heads import SegModel, build_seg_head
from ultrassl.models.vit import create_encoder
from ultrassl.transforms.model_input import resize_frame, to_tensor_batch

log = logging.getLogger(__name__)


def evaluate(
    model: str | Path,
    data: str | Path,
    out_dir: str | Path | None = None,
    *,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every row of the manifest ``data`` with the saved model ``model``; write predictions
    (and metrics when labels/masks are present) to ``out_dir`` (default ``MODEL/evaluate_<manifest>``).
    Returns {"task", "metrics", "paths", "n"}."""
    folder, card = read_card(model)
    out = Path(out_dir) if out_dir else folder.parent / f"evaluate_{Path(data).stem}"
    out.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(data)
    seen = seen_groups(folder, card, rows, data)
    dev = select_device(device)
    if card["task"] == "classify":
        return _evaluate_classify(folder, rows, out, dev, progress, seen)
    if card["task"] == "segment":
        return _evaluate_segment(folder, rows, out, dev, progress, seen)
    raise UltrasslError(f"{folder}: unknown task {card['task']!r}")


#: how many group ids the warning about groups the fold models were trained on shows
_SHOWN = 3


def seen_groups(
    folder: Path, card: dict[str, Any], rows: Sequence[ManifestRow], data: str | Path
) -> dict[str, Any]:
    """The groups (patients) of ``rows`` that some fold model was trained or validated on, from the
    evaluation's ``folds.json`` beside ``models/``: ``{"n_groups", "groups_seen_in_training"}`` (None:
    no folds.json to check against), with a warning when any is. A fold's test groups are in the other
    folds' training data, so with every fold's model kept, every group of the evaluation counts."""
    groups = sorted({r.group_id for r in rows})
    record: dict[str, Any] = {"n_groups": len(groups), "groups_seen_in_training": None}
    folds_file = folder.parent / "folds.json"
    try:
        folds = json.loads(folds_file.read_text(encoding="utf-8"))["folds"]
        trained: set[str] = set()
        for k in card["folds"]:
            trained.update(map(str, folds[k]["train_groups"]), map(str, folds[k]["val_groups"]))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        log.info(
            f"{folds_file} is missing or unreadable: whether {data} holds patients the fold models were "
            "trained on is not checked"
        )
        return record
    seen = [g for g in groups if g in trained]
    record["groups_seen_in_training"] = len(seen)
    if seen:
        shown = ", ".join(seen[:_SHOWN]) + (", ..." if len(seen) > _SHOWN else "")
        log.warning(
            f"{len(seen)} of the {len(groups)} groups (patients) in {data} were in the training or "
            f"validation data of the fold models ({shown}): scores on them are not a fair estimate of "
            "how the model does on new patients"
        )
    return record


@torch.no_grad()
def _ensemble(models: Sequence[torch.nn.Module], x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Mean softmax over the fold models, in chunks; ``[N, classes, ...]`` on the CPU."""
    chunks = []
    for start in range(0, len(x), 64):
        xb = x[start : start + 64].to(device)
        chunks.append(torch.stack([torch.softmax(m(xb).float(), 1) for m in models]).mean(0).cpu())
    return torch.cat(chunks)


# ----------------------------------------------------------------------------------------------------
# classification


def _evaluate_classify(
    folder: Path,
    rows: list[ManifestRow],
    out: Path,
    device: torch.device,
    progress: bool,
    seen: dict[str, Any],
) -> dict[str, Any]:
    card, models = load_fold_models(folder, classifier_architecture)
    models = [m.to(device) for m in models]
    spec = spec_of(card)
    names = list(card["class_names"])
    cache = load_frame_cache(
        rows,
        rgb=spec.in_chans == 3,
        video_fps=card.get("frame_fps"),
        max_frames_per_video=card.get("max_frames_per_video"),
        scan_area=card.get("scan_area", True),
        spread=False,
        progress=progress,
    )
    report_skipped(cache.skipped)
    probs = []
    for start in range(0, len(cache), 256):
        frames = [resize_frame(f, tuple(spec.img_size)) for f in cache.frames[start : start + 256]]
        x = to_tensor_batch(frames, tuple(spec.img_size), spec.in_chans, card["mean"], card["std"])
        probs.append(_ensemble(models, x, device))
    prob = torch.cat(probs).numpy()
    row_ids = np.asarray(cache.row_index)

    frame_rows, video_rows = [], []
    for j, i in enumerate(row_ids):
        row = rows[i]
        frame_rows.append(
            {
                "path": row.path,
                "frame_index": cache.frame_index[j],
                "label": row.label or "",
                "pred": names[int(prob[j].argmax())],
            }
            | {f"prob_{c}": float(p) for c, p in zip(names, prob[j])}
        )
    video_ids = sorted(set(row_ids.tolist()))
    vprob = np.stack([prob[row_ids == i].mean(0) for i in video_ids])
    for i, p in zip(video_ids, vprob):
        row = rows[i]
        video_rows.append(
            {
                "path": row.path,
                "group_id": row.group_id,
                "n_frames": int((row_ids == i).sum()),
                "label": row.label or "",
                "pred": names[int(p.argmax())],
            }
            | {f"prob_{c}": float(v) for c, v in zip(names, p)}
        )
    paths = {
        "predictions_frames": _write_csv(out / "predictions_frames.csv", frame_rows),
        "predictions_videos": _write_csv(out / "predictions_videos.csv", video_rows),
    }
    metrics: dict[str, Any] = {}
    labelled = [j for j, r in enumerate(frame_rows) if r["label"]]
    if labelled:
        unknown = sorted({frame_rows[j]["label"] for j in labelled} - set(names))
        if unknown:
            raise UltrasslError(
                f"labels {unknown} are not among the model's classes {names}; predictions are written "
                f"to {paths['predictions_frames']}"
            )
        index = {c: k for k, c in enumerate(names)}
        y = [index[frame_rows[j]["label"]] for j in labelled]
        metrics["frame"] = classification_metrics(y, prob[labelled], names)
        vl = [k for k, r in enumerate(video_rows) if r["label"]]
        metrics["video"] = classification_metrics(
            [index[video_rows[k]["label"]] for k in vl], vprob[vl], names
        )
    result = {
        "task": "classify",
        "model": str(folder),
        "class_names": names,
        "folds": card["folds"],
        "n_frames": len(frame_rows),
        "n_videos": len(video_rows),
        "skipped": [list(s) for s in cache.skipped],
        **seen,
        "metrics": metrics,
    }
    return _finish(out, result, paths, len(frame_rows))


# ----------------------------------------------------------------------------------------------------
# segmentation


def _seg_architecture(card: dict[str, Any]) -> torch.nn.Module:
    encoder = create_encoder(spec_of(card))
    return SegModel(encoder, build_seg_head(card["head"], encoder, 2, **card.get("head_args", {})))


def _evaluate_segment(
    folder: Path,
    rows: list[ManifestRow],
    out: Path,
    device: torch.device,
    progress: bool,
    seen: dict[str, Any],
) -> dict[str, Any]:
    card, models = load_fold_models(folder, _seg_architecture)
    models = [m.to(device) for m in models]
    spec = spec_of(card)
    preds, targets, records = [], [], []
    skipped: list[tuple[str, str]] = []
    for row in rows:
        if row.n_frames > 1:
            skipped.append((row.path, f"{row.n_frames} frames (only still images are segmented)"))
            continue
        try:
            img = read_frames(row.path, [0], rgb=spec.in_chans == 3)[0]
            mask = read_mask(row.mask_path, card.get("foreground_ids")) if row.mask_path else None
        except (UnreadableFileError, OSError, IndexError) as exc:
            skipped.append((row.path, str(exc)))
            continue
        frame = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        x = to_tensor_batch([frame], tuple(spec.img_size), spec.in_chans, card["mean"], card["std"])
        prob = _ensemble(models, x, device)
        prob = F.interpolate(prob, size=img.shape[:2], mode="bilinear", align_corners=False)[0]
        pred = prob.argmax(0).numpy().astype(bool)
        name = f"{Path(row.path).stem}_pred.png"
        buf = io.BytesIO()
        Image.fromarray(pred.astype(np.uint8) * 255).save(buf, format="PNG")
        atomic_write_bytes(out / "masks" / name, buf.getvalue())
        rec: dict[str, Any] = {
            "path": row.path,
            "pred_mask": f"masks/{name}",
            "foreground_fraction": float(pred.mean()),
        }
        if mask is not None:
            if mask.shape != pred.shape:
                skipped.append(
                    (row.path, f"mask {row.mask_path} is {mask.shape} but the image is {pred.shape}")
                )
                continue
            m = segmentation_metrics([pred], [mask])
            rec.update(dice=m["dice"], iou=m["iou"])
            preds.append(pred)
            targets.append(mask)
        records.append(rec)
    report_skipped(skipped)
    if not records:
        raise UltrasslError(f"none of the {len(rows)} rows could be segmented (see the reasons above)")
    metrics = segmentation_metrics(preds, targets) if preds else {}
    paths = {"predictions": _write_csv(out / "predictions.csv", records)}
    result = {
        "task": "segment",
        "model": str(folder),
        "folds": card["folds"],
        "n_images": len(records),
        "skipped": [list(s) for s in skipped],
        **seen,
        "metrics": metrics,
    }
    return _finish(out, result, paths, len(records))


def _finish(out: Path, result: dict[str, Any], paths: dict[str, Path], n: int) -> dict[str, Any]:
    """Write ``metrics.json`` (the whole ``result``) and return what the caller reports."""
    paths["metrics"] = atomic_write_text(out / "metrics.json", json.dumps(jsonable(result), indent=2) + "\n")
    return {
        "task": result["task"],
        "metrics": result["metrics"],
        "paths": {k: str(v) for k, v in paths.items()},
        "n": n,
    }


def _write_csv(path: Path, records: list[dict[str, Any]]) -> Path:
    fields: list[str] = []
    for r in records:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(records)
    return atomic_write_text(path, buf.getvalue())
