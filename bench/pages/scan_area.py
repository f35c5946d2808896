"""The SCAN_AREA and SCAN_AREA_SHORTCUT sections of docs/benchmarks.md, from ``bench/scan_area.py``'s and
``bench/scan_area_shortcut.py``'s JSON (the overlay picture the first links is drawn by its bench: it
needs the data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import SCAN_AREA_TARGETS as TARGETS
from benchlib import read_results

from .provenance import bench_command, machine


def detector_section(results: Path) -> str | None:
    doc = read_results(results / "scan_area.json")
    return detector_table(doc) if doc else None


def shortcut_section(results: Path) -> str | None:
    doc = read_results(results / "scan_area_shortcut.json")
    return shortcut_table(doc) if doc else None


def detector_table(res: dict[str, Any]) -> str:
    lines = [
        "## Scan area: the detector against hand annotations",
        "",
        f"{bench_command(res, 'python bench/scan_area.py')} on "
        f"{machine(res['machine'])}, git {res['machine'].get('git', 'unknown')}: the annotations of `bench/scan_area/` ({len(res['rows'])} dev files; how they were made "
        "is in its README), frames read as pre-training reads them. IoU of the detected and the annotated "
        "area; *lost*: share of the annotated area outside the detected one (tissue no model sees); "
        "*extra*: share of the detected area outside the annotation (background, overlays). Targets "
        f"(each for stills and clips): median IoU ≥ {TARGETS['median_iou']}, no file below "
        f"{TARGETS['min_iou']}, median lost < {TARGETS['median_lost']:.0%}.",
        "",
        "The detector before the fan fit (a convex hull of a brightness threshold, eroded at the frame's "
        "border; commit 8938e01): median IoU 0.864 / 0.864, lowest 0.413 / 0.377, median lost 13% / 13% "
        "(stills / clips).",
        "",
        "| files | median IoU | lowest IoU | files below 0.85 | median lost | targets met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind in ("stills", "clips"):
        s = res[kind]
        lines.append(
            f"| {s['files']} {kind} | {s['median_iou']:.3f} | {s['min_iou']:.3f} | {s['below_0.85']} | "
            f"{s['median_lost']:.1%} | {'yes' if s['meets_targets'] else 'no'} |"
        )
    lines += [
        "",
        "| file | annotated | detected | IoU | lost | extra |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(res["rows"], key=lambda r: r["iou"]):
        lines.append(
            f"| `{r['file']}` | {r['annotated']} | {r['detected']} | {r['iou']:.3f} | {r['lost']:.1%} | "
            f"{r['extra']:.1%} |"
        )
    lines += [
        "",
        "The eight lowest, detected outline in yellow, annotated in red:",
        "",
        "![scan-area overlays](scan_area_overlays.png)",
    ]
    return "\n".join(lines)


def shortcut_table(res: dict[str, Any]) -> str:
    lines = [
        "### Shortcut check: the labels outside the scan area",
        "",
        f"{bench_command(res, 'python bench/scan_area_shortcut.py')} on {machine(res['machine'])}, "
        f"git {res['machine'].get('git', 'unknown')}: {res['files']} labelled POCUS "
        f"files ({res['frames']} frames), a logistic regression on 32x32 views, trained on four of the "
        "data's patient-grouped folds and tested on the fifth. *outside*: only the pixels the detected "
        f"area leaves out (a median {res['median_outside_share']:.0%} of the frame); *area*: only the "
        f"pixels kept; *shape*: the area's mask alone (what any crop still shows). Chance (the majority "
        f"class): {res['chance_file_accuracy']:.1%} of files.",
        "",
        "| view | frame accuracy | file accuracy |",
        "| --- | --- | --- |",
    ]
    for v, s in res["views"].items():
        lines.append(f"| {v} | {s['frame_accuracy']:.1%} | {s['file_accuracy']:.1%} |")
    return "\n".join(lines)
