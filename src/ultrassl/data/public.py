"""Adapters for public ultrasound data sets whose labels and patient ids live in their own metadata.

They write a labels CSV (``path,label,group_id``) for ``ultrassl index --labels``, so the data stay as
they were downloaded.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from ultrassl.errors import UltrasslError

POCUS_CLASSES = ("covid", "pneumonia", "regular")


def write_pocus_labels(
    pocus_dir: str | Path,
    out_csv: str | Path,
    *,
    probe: str | None = "convex",
    classes: Sequence[str] = POCUS_CLASSES,
    drop_uncertain: bool = True,
) -> int:
    """Labels for the POCUS lung data (Born et al.) from its ``manifest.csv``: the usual benchmark subset.

    Rows of the subset (``probe``, ``classes``) get their class; the others get an empty label, so
    they stay usable as unlabelled pre-training data. ``group_id`` is the patient (``source_id``):
    POCUS must be split by patient, never by frame. Returns the number of labelled files.
    """
    pocus_dir = Path(pocus_dir)
    manifest = pocus_dir / "manifest.csv"
    if not manifest.exists():
        raise UltrasslError(f"{manifest}: not found (expected the POCUS folder with its manifest.csv)")
    labelled = 0
    out_rows = []
    with manifest.open(newline="") as f:
        for row in csv.DictReader(f):
            rel = row["path"].removeprefix("pocus/")
            keep = (
                row["class"] in classes
                and (probe is None or row["probe"] == probe)
                and not (drop_uncertain and row.get("label_uncertain") == "1")
            )
            labelled += keep
            out_rows.append(
                {"path": rel, "label": row["class"] if keep else "", "group_id": row["source_id"]}
            )
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "group_id"])
        writer.writeheader()
        writer.writerows(out_rows)
    return labelled
