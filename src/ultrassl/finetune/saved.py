"""The models a downstream evaluation keeps, so new data can be predicted later (``ultrassl evaluate``).

Every fold's selected model (first seed, largest label fraction) is written as
``EVAL/models/fold{k}.safetensors`` next to one ``EVAL/models/model.json`` that says how to rebuild and
feed them (task, encoder spec, classes, normalisation, frame sampling, head). Predicting with all of a
cross-validation's fold models and averaging their probabilities is the usual way to deploy one
(nnU-Net does the same); it needs no extra training run and uses every labelled case.

A classification model is a plain timm classifier (encoder + ``head``), a linear probe included: the
probe's standardisation is folded into the head's weights, so its logits are exactly scikit-learn's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ultrassl.atomic import atomic_write_text
from ultrassl.checkpoint import atomic_save_safetensors, safe_load
from ultrassl.errors import CheckpointError
from ultrassl.finetune.backbones import classifier_architecture as _build_classifier
from ultrassl.jsonable import jsonable
from ultrassl.models.vit import EncoderSpec

MODELS_DIR = "models"
CARD = "model.json"
FORMAT = "ultrassl-downstream-v1"


def models_dir(path: str | Path) -> Path:
    """``EVAL/models`` for an evaluation folder, or the folder itself when it holds ``model.json``."""
    path = Path(path)
    if (path / CARD).exists():
        return path
    if (path / MODELS_DIR / CARD).exists():
        return path / MODELS_DIR
    raise CheckpointError(
        path,
        f"no saved downstream model here (expected {CARD} or {MODELS_DIR}/{CARD}, written by "
        "`ultrassl finetune classify|segment`)",
    )


def fold_model_path(out_dir: str | Path, fold: int) -> Path:
    return Path(out_dir) / MODELS_DIR / f"fold{fold}.safetensors"


def save_fold_model(out_dir: str | Path, fold: int, model: nn.Module) -> Path:
    """Write one fold's weights (atomically, safetensors: loading them never runs code)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_save_safetensors(state, fold_model_path(out_dir, fold))


def write_card(out_dir: str | Path, task: str, spec: EncoderSpec, folds: list[int], **info: Any) -> Path:
    card = {"format": FORMAT, "task": task, "encoder": asdict(spec), "folds": sorted(folds), **info}
    return atomic_write_text(Path(out_dir) / MODELS_DIR / CARD, json.dumps(jsonable(card), indent=2) + "\n")


def read_card(path: str | Path) -> tuple[Path, dict[str, Any]]:
    folder = models_dir(path)
    try:
        card = json.loads((folder / CARD).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(folder / CARD, f"unreadable ({exc})") from exc
    if card.get("format") != FORMAT:
        raise CheckpointError(folder / CARD, f"unknown format {card.get('format')!r} (expected {FORMAT})")
    return folder, card


def spec_of(card: Mapping[str, Any]) -> EncoderSpec:
    enc = dict(card["encoder"])
    enc["img_size"] = tuple(enc["img_size"])
    return EncoderSpec(**enc)


def load_fold_models(path: str | Path, build: Any) -> tuple[dict[str, Any], list[nn.Module]]:
    """(card, [model per fold]) with ``build(card) -> nn.Module`` making the empty architecture."""
    folder, card = read_card(path)
    models = []
    for k in card["folds"]:
        file = folder / f"fold{k}.safetensors"
        model = build(card)
        try:
            model.load_state_dict(safe_load(file), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(file, f"weights do not match {CARD} ({exc})") from exc
        models.append(model.eval())
    return card, models


def classifier_architecture(card: Mapping[str, Any]) -> nn.Module:
    """An empty timm classifier of the card's encoder with ``len(class_names)`` outputs."""
    return _build_classifier(spec_of(card), len(card["class_names"]))


def linear_probe_head(
    head: nn.Linear, coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray, mean, scale
) -> None:
    """Fold a StandardScaler + LogisticRegression into ``head`` so softmax(head(x)) = predict_proba.

    Binary problems (one coefficient row) become the logits ``[0, z]``; classes the probe never saw
    get a logit of -1e4 (probability 0), as in the probe's own predictions.
    """
    coef = np.asarray(coef, dtype=np.float64) / np.asarray(scale)[None, :]
    intercept = np.asarray(intercept, dtype=np.float64) - coef @ np.asarray(mean)
    if coef.shape[0] == 1 and len(classes) == 2:
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    weight = torch.zeros_like(head.weight, dtype=torch.float64)
    bias = torch.full_like(head.bias, -1e4, dtype=torch.float64)
    for row, c in enumerate(classes):
        weight[int(c)] = torch.from_numpy(coef[row])
        bias[int(c)] = float(intercept[row])
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.dtype))
        head.bias.copy_(bias.to(head.bias.dtype))
