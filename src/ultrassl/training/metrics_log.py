"""metrics.csv (rank 0) plus TensorBoard when installed."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ultrassl.atomic import atomic_write_text


class MetricsLog:
    """metrics.csv (rank 0) plus TensorBoard when installed; a resumed run drops rows past its step."""

    FIELDS = (
        "step",
        "epoch",
        "loss",
        "lr",
        "grad_norm",
        "samples_per_s",
        "elapsed_s",
        "val_loss",
        "probe_knn",
        "probe_linear",
        "probe_s",
    )

    def __init__(self, run_dir: Path, resume_step: int, tensorboard: bool):
        self.path = run_dir / "metrics.csv"
        rows = []
        if resume_step > 0 and self.path.exists():
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        # the kept rows are rewritten atomically (a kill here loses no row), then appended to
        head = io.StringIO()
        writer = csv.DictWriter(head, fieldnames=self.FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, head.getvalue())
        self.file = self.path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, row: dict[str, float]) -> None:
        self.writer.writerow({k: row.get(k, "") for k in self.FIELDS})
        self.file.flush()
        if self.tb is not None:
            for key in ("loss", "lr", "grad_norm", "samples_per_s"):
                if key in row and row[key] is not None:
                    self.tb.add_scalar(f"train/{key}", row[key], int(row["step"]))
            if row.get("val_loss") is not None:
                self.tb.add_scalar("val/loss", row["val_loss"], int(row["step"]))
            for key in ("probe_knn", "probe_linear"):
                if row.get(key) is not None:
                    self.tb.add_scalar(f"probe/{key.removeprefix('probe_')}", row[key], int(row["step"]))

    def image(self, tag: str, image: Any, step: int) -> None:
        """An ``[H, W, 3]`` uint8 picture to TensorBoard (nothing without it)."""
        if self.tb is not None:
            self.tb.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
