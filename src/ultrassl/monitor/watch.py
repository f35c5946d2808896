"""The watchers of one pre-training run, made from its config, and what is written when it ends."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ultrassl.config import PretrainConfig
from ultrassl.monitor.curves import write_curves, write_summary
from ultrassl.monitor.previews import PreviewPictures, preview_batch
from ultrassl.monitor.probe import OnlineProbe, load_probe_set

log = logging.getLogger(__name__)


@dataclass
class RunWatchers:
    """What the loop is given: the watchers, the metric whose highest value picks best.pt (None: the
    method's validation picks it, if any) and what that metric measures."""

    watchers: list[Any]
    select_key: str | None = None
    select_id: str = ""


def build_watchers(
    cfg: PretrainConfig,
    model: nn.Module,
    train_data: Any,
    run_dir: str | Path,
    *,
    is_main: bool,
    progress: bool,
) -> RunWatchers:
    """The online probe (with ``probe.data``) and the pictures (methods that draw some). Only rank 0
    decodes the probe set and draws the picture batch; the others get watchers that agree on when."""
    out = RunWatchers([])
    if cfg.probe.data:
        probe_set = None
        if is_main:
            t0 = time.monotonic()
            probe_set = load_probe_set(
                cfg.probe,
                size=tuple(cfg.encoder.img_size),
                in_chans=cfg.encoder.in_chans,
                mean=tuple(cfg.data.mean),
                std=tuple(cfg.data.std),
                scan_area=cfg.data.scan_area,
                progress=progress,
            )
            log.info(
                f"probe: {len(probe_set.frames)} frames of {len(set(probe_set.groups))} groups in "
                f"{len(probe_set.splits)} folds by group (scores averaged over them); "
                f"{len(probe_set.class_names)} classes; decoded in {time.monotonic() - t0:.1f} s"
            )
        probe = OnlineProbe(cfg.probe, probe_set)
        out.watchers.append(probe)
        out.select_key = probe.key
        out.select_id = probe_set.fingerprint if probe_set is not None else ""
    columns = tuple(getattr(model, "preview_columns", ()))
    if columns and cfg.previews.every != 0 and hasattr(train_data, "preview_indices"):
        batch = preview_batch(train_data, cfg.previews.n) if is_main else None
        out.watchers.append(
            PreviewPictures(
                cfg.previews,
                batch,
                run_dir,
                columns,
                dict(getattr(model, "preview_titles", {})),
                tuple(cfg.data.mean),
                tuple(cfg.data.std),
                seed=cfg.train.seed,
            )
        )
    return out


def finish_run(
    run_dir: str | Path,
    config: dict[str, Any],
    *,
    steps: int | None,
    total_steps: int | None,
    seconds: float | None,
    stopped_by: str,
    best: dict[str, Any] | None,
) -> None:
    """``curves.png`` and ``summary.md``; a failure here is one line, never the run's end."""
    try:
        write_curves(run_dir, best)
        write_summary(
            run_dir,
            config,
            steps=steps,
            total_steps=total_steps,
            seconds=seconds,
            stopped_by=stopped_by,
            best=best,
        )
    except Exception as exc:  # the run's own outcome matters more than its report
        log.warning(f"could not write curves.png / summary.md in {run_dir}: {exc}")
