"""`ultrassl index`: a folder of ultrasound media -> manifest.csv, with bad files skipped and explained.

Every file is probed once here, so training never meets an unreadable file; the manifest records what
a dataset needs without opening files again (kind, frame count, fps, size, label, group, mask, and for
DICOM the 2-D tissue regions as ``scan_area`` and the mm per pixel; see ``data.dicom_regions``).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shlex
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ultrassl.atomic import atomic_write_text
from ultrassl.data.frame_prep import format_rects, parse_rects
from ultrassl.data.pseudonyms import Pseudonymiser, salt_path_for
from ultrassl.data.readers import DEFAULT_LIMITS, ReadLimits, probe
from ultrassl.errors import UltrasslError, UnreadableFileError
from ultrassl.progress import Progress

log = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "IndexSummary",
    "ManifestRow",
    "build_manifest",
    "index_folder",
    "read_manifest",
    "write_manifest",
]

COLUMNS = (
    "path",
    "kind",
    "label",
    "group_id",
    "n_frames",
    "fps",
    "width",
    "height",
    "mask_path",
    "scan_area",
    "spacing_x_mm",
    "spacing_y_mm",
)
REQUIRED_COLUMNS = ("path", "kind", "n_frames", "width", "height")
KINDS = ("image", "video", "dicom")
MASK_SUFFIX = "_mask"
MASK_DIR = "masks"
_MASK_EXTS = (".png", ".bmp", ".tif", ".tiff")


@dataclass
class ManifestRow:
    """One indexed media file. Paths are absolute in memory; relative to the CSV on disk."""

    path: str
    kind: str
    label: str | None
    group_id: str
    n_frames: int
    fps: float | None
    width: int
    height: int
    mask_path: str | None = None
    #: the scan area as rectangles (x0, y0, x1, y1), end-exclusive: a DICOM's 2-D tissue regions or an
    #: area given by hand; None: detected from the pixels
    scan_area: tuple[tuple[int, int, int, int], ...] | None = None
    #: (x, y) millimetres per pixel, when known
    spacing_mm: tuple[float, float] | None = None


@dataclass
class IndexSummary:
    """What `index_folder` did, for the CLI to print."""

    n_indexed: int
    n_skipped: int
    skipped: list[tuple[str, str]]
    by_kind: dict[str, int]
    manifest_path: Path
    skipped_path: Path | None = None
    rows: list[ManifestRow] = field(default_factory=list, repr=False)
    #: the salt behind the DICOM group-id pseudonyms (None: no PatientID met, or ids kept in clear)
    salt_file: Path | None = None
    #: the files (relative paths) that ``group_pattern`` did not match and that had no group id from a
    #: PatientID or the labels CSV: each became a group of its own
    unmatched_group_pattern: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ building


def _is_mask(path: Path) -> bool:
    return path.stem.lower().endswith(MASK_SUFFIX)


def _find_mask(path: Path) -> Path | None:
    """`<stem>_mask.png` next to the image, or in a `masks/` folder beside it."""
    for folder in (path.parent, path.parent / MASK_DIR):
        for ext in _MASK_EXTS:
            candidate = folder / f"{path.stem}{MASK_SUFFIX}{ext}"
            if candidate.is_file():
                return candidate
    return None


_Meta = tuple[str | None, str | None]  # (label, group_id) from a labels CSV


def _read_labels(labels_csv: str | Path) -> tuple[dict[str, _Meta], dict[str, _Meta]]:
    """Labels CSV (`path,label[,group_id]`) -> ({relative posix path: meta}, {file name: meta}).

    The optional `group_id` column carries patient ids kept in a data set's own metadata (as POCUS'
    source ids); it overrides PatientID and `--group-pattern`.
    """
    labels_csv = Path(labels_csv)
    by_rel: dict[str, _Meta] = {}
    by_name: dict[str, _Meta] = {}
    try:
        with open(labels_csv, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in ("path", "label") if c not in fields]
            if missing:
                raise UltrasslError(
                    f"{labels_csv}: line 1: missing column(s) {', '.join(missing)} (expected columns path,label)"
                )
            for row in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                key = row["path"].replace("\\", "/")
                while key.startswith("./"):
                    key = key[2:]
                if not key:
                    raise UltrasslError(f"{labels_csv}: line {reader.line_num}: empty path")
                meta = (row["label"] or None, row.get("group_id") or None)
                (by_name if "/" not in key else by_rel)[key] = meta
    except OSError as e:
        raise UltrasslError(f"{labels_csv}: cannot read labels file ({e.strerror or e})") from e
    return by_rel, by_name


def _group_id(
    rel: Path,
    patient_id: str | None,
    pattern: re.Pattern[str] | None,
    pseudonym: Callable[[str], str] | None = None,
) -> str | None:
    """PatientID (as its pseudonym when one is given), else the pattern's first group (or whole match)
    on the file name; None when neither gives one (the caller falls back to the path)."""
    if patient_id:
        return pseudonym(patient_id) if pseudonym is not None else patient_id
    if pattern is not None:
        m = pattern.search(rel.name)
        if m:
            value = m.group(1) if m.groups() and m.group(1) is not None else m.group(0)
            if value:
                return value
    return None


#: how many file names a warning or an error about ``--group-pattern`` shows
_SHOWN_IN_WARNING = 3
_SHOWN_IN_ERROR = 20


def _check_unmatched(unmatched: list[str], group_pattern: str, strict: bool) -> None:
    """Warn (or with ``strict``, refuse) about files that ``group_pattern`` did not match: each became a
    group of its own, so several clips of one patient named against the pattern would land in different
    folds."""
    if not unmatched:
        return
    n = len(unmatched)
    files = "file" if n == 1 else "files"
    if strict:
        shown = ", ".join(unmatched[:_SHOWN_IN_ERROR])
        more = f" and {n - _SHOWN_IN_ERROR} more" if n > _SHOWN_IN_ERROR else ""
        raise UltrasslError(
            f"{n} {files} did not match --group-pattern {group_pattern!r} (--strict-groups): {shown}{more}; "
            "rename them, give their group_id in a --labels CSV, or fix the pattern"
        )
    shown = ", ".join(unmatched[:_SHOWN_IN_WARNING])
    more = ", ..." if n > _SHOWN_IN_WARNING else ""
    log.warning(
        f"{n} {files} did not match --group-pattern {group_pattern!r}; each became a group of its own: "
        f"{shown}{more} (--strict-groups makes this an error)"
    )


def walk_files(data_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The regular files under ``data_dir`` (sorted; hidden files and folders left out), and a reason
    for everything else met on the way: folders that cannot be read, links to nothing, links to folders
    (not followed: a link cycle cannot hang the walk; index the target itself), FIFOs and devices
    (opening one would block)."""
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []

    def unreadable(err: OSError) -> None:
        skipped.append((str(err.filename), f"folder cannot be read ({err.strerror or err})"))

    for root, dirs, names in os.walk(data_dir, onerror=unreadable):
        here = Path(root)
        kept = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            if (here / d).is_symlink():
                skipped.append((str(here / d), f"link to a folder, not followed ({os.readlink(here / d)})"))
                continue
            kept.append(d)
        dirs[:] = kept
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = here / name
            if path.is_symlink() and not path.exists():
                skipped.append(
                    (str(path), f"broken link (points to {os.readlink(path)}, which does not exist)")
                )
            elif path.is_file():
                files.append(path)
            elif path.is_dir():  # a link to a folder, listed by os.walk among the files
                skipped.append((str(path), f"link to a folder, not followed ({os.readlink(path)})"))
            else:
                skipped.append((str(path), "not a regular file (a FIFO, socket or device)"))
    return sorted(files), skipped


def build_manifest(
    data_dir: str | Path,
    labels_csv: str | Path | None = None,
    group_pattern: str | None = None,
    progress: bool = True,
    pseudonym: Callable[[str], str] | None = None,
    limits: ReadLimits = DEFAULT_LIMITS,
    *,
    strict_groups: bool = False,
    unmatched: list[str] | None = None,
) -> tuple[list[ManifestRow], list[tuple[str, str]]]:
    """Probe every file under `data_dir` (sorted, recursive, hidden skipped) -> (rows, skipped).

    `pseudonym` maps a DICOM PatientID to the group id written (``index_folder`` passes a salted hash;
    None keeps the id in clear).

    `skipped` holds (path, one-line reason); a bad file never stops the run. Mask files (stem ending
    in `_mask`) are attached to their image, not indexed; a mask without an image is reported skipped.

    A file whose group id comes from neither its PatientID, the labels CSV nor `group_pattern` (given but
    not matching its name) is a group of its own (its relative path): logged as one warning with
    examples, appended to `unmatched` (when given), or with `strict_groups` an error naming them.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UltrasslError(f"{data_dir}: data folder does not exist or is not a folder")
    pattern = None
    if group_pattern:
        try:
            pattern = re.compile(group_pattern)
        except re.error as e:
            raise UltrasslError(f"bad --group-pattern {group_pattern!r}: {e}") from e
    by_rel, by_name = _read_labels(labels_csv) if labels_csv is not None else ({}, {})

    files, skipped = walk_files(data_dir)
    used_masks: set[Path] = set()
    no_match: list[str] = []
    rows: list[ManifestRow] = []
    with Progress(log, "indexing", len(files), enabled=progress) as bar:
        for path in files:
            try:
                if _is_mask(path):
                    continue
                rel = path.relative_to(data_dir)
                try:
                    info = probe(path, limits)
                except UnreadableFileError as e:
                    skipped.append((str(path), e.reason))
                    continue
                except Exception as e:  # an unexpected decoder failure must not stop indexing
                    reason = " ".join(f"{type(e).__name__}: {e}".split())
                    skipped.append((str(path), reason))
                    continue
                key = rel.as_posix()
                label: str | None = rel.parts[0] if len(rel.parts) > 1 else None
                group = _group_id(rel, info.patient_id, pattern, pseudonym)
                meta = by_rel.get(key, by_name.get(rel.name))
                if meta is not None:
                    label = meta[0]
                    group = meta[1] or group
                if group is None:
                    group = key
                    if pattern is not None:
                        no_match.append(key)
                for note in info.notes:
                    log.warning(f"{path}: {note}")
                mask = _find_mask(path) if info.kind == "image" else None
                if mask is not None:
                    used_masks.add(mask)
                rows.append(
                    ManifestRow(
                        path=str(path.absolute()),
                        kind=info.kind,
                        label=label,
                        group_id=group,
                        n_frames=info.n_frames,
                        fps=info.fps,
                        width=info.width,
                        height=info.height,
                        mask_path=str(mask.absolute()) if mask is not None else None,
                        scan_area=info.scan_area,
                        spacing_mm=info.spacing_mm,
                    )
                )
            finally:
                bar.update(1, skipped=len(skipped))
    for path in files:
        if _is_mask(path) and path not in used_masks:
            skipped.append((str(path), "mask without a matching image"))
    if group_pattern:
        _check_unmatched(no_match, group_pattern, strict_groups)
    if unmatched is not None:
        unmatched.extend(no_match)
    return rows, skipped


# ------------------------------------------------------------------------------------------ CSV I/O


def _relative(path: str, base: Path) -> str:
    """`path` relative to `base` when they share a folder below the root, else absolute."""
    absolute = Path(path).absolute()
    try:
        return absolute.relative_to(base).as_posix()
    except ValueError:
        pass
    try:
        common = Path(os.path.commonpath([absolute, base]))
    except ValueError:  # different drives
        return str(absolute)
    if common == Path(common.anchor):
        return str(absolute)
    return Path(os.path.relpath(absolute, base)).as_posix()


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def write_manifest(rows: list[ManifestRow], csv_path: str | Path) -> Path:
    """Write rows with paths relative to the manifest's folder (portable when moved together)."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    base = csv_path.absolute().parent
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(
            [
                _relative(r.path, base),
                r.kind,
                _fmt(r.label),
                r.group_id,
                r.n_frames,
                _fmt(r.fps),
                r.width,
                r.height,
                _relative(r.mask_path, base) if r.mask_path else "",
                format_rects(r.scan_area) if r.scan_area else "",
                *((_fmt(v) for v in r.spacing_mm) if r.spacing_mm else ("", "")),
            ]
        )
    return atomic_write_text(csv_path, buf.getvalue())


def _number(csv_path: Path, line: int, column: str, text: str, kind: type) -> int | float | None:
    text = (text or "").strip()
    if not text:
        if kind is float:
            return None
        raise UltrasslError(f"{csv_path}: line {line}: empty value in column '{column}'")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if kind is int:
        if not value.is_integer():
            raise UltrasslError(
                f"{csv_path}: line {line}: bad value {text!r} in column '{column}' (expected an integer)"
            )
        return int(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise UltrasslError(
            f"{csv_path}: line {line}: bad value {text!r} in column '{column}' (expected a number)"
        )
    return value


def _resolve(base: Path, text: str) -> str:
    p = Path(text)
    return os.path.normpath(p if p.is_absolute() else base / p)


def read_manifest(csv_path: str | Path) -> list[ManifestRow]:
    """Rows with absolute paths; a missing required column or a bad number raises UltrasslError (file, line)."""
    csv_path = Path(csv_path)
    base = csv_path.absolute().parent
    rows: list[ManifestRow] = []
    if csv_path.is_dir():  # a data folder given where its manifest goes: say how to make one
        raise UnreadableFileError(
            csv_path,
            f"a folder, not a manifest CSV: index it first with `ultrassl index {shlex.quote(str(csv_path))} "
            "-o manifest.csv`, then pass the manifest",
        )
    try:
        f = open(csv_path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise UltrasslError(f"{csv_path}: cannot read manifest ({e.strerror or e})") from e
    with f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in fields]
        if missing:
            raise UltrasslError(f"{csv_path}: line 1: missing required column(s): {', '.join(missing)}")
        for raw in reader:
            line = reader.line_num
            rec = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not rec.get("path"):
                raise UltrasslError(f"{csv_path}: line {line}: empty path")
            kind = rec["kind"]
            if kind not in KINDS:
                raise UltrasslError(
                    f"{csv_path}: line {line}: bad kind {kind!r} (expected one of {', '.join(KINDS)})"
                )
            path = _resolve(base, rec["path"])
            rel_default = rec["path"]
            width = _number(csv_path, line, "width", rec["width"], int)
            height = _number(csv_path, line, "height", rec["height"], int)
            rows.append(
                ManifestRow(
                    path=path,
                    kind=kind,
                    label=rec.get("label") or None,
                    group_id=rec.get("group_id") or rel_default,
                    n_frames=_number(csv_path, line, "n_frames", rec["n_frames"], int),
                    fps=_number(csv_path, line, "fps", rec.get("fps", ""), float),
                    width=width,
                    height=height,
                    mask_path=_resolve(base, rec["mask_path"]) if rec.get("mask_path") else None,
                    scan_area=_scan_area(csv_path, line, rec, width, height),
                    spacing_mm=_spacing(csv_path, line, rec),
                )
            )
    return rows


def _scan_area(
    csv_path: Path, line: int, rec: dict[str, str], width: int, height: int
) -> tuple[tuple[int, int, int, int], ...] | None:
    text = rec.get("scan_area", "")
    if not text:
        return None
    try:
        return parse_rects(text, width, height)
    except ValueError as e:
        raise UltrasslError(f"{csv_path}: line {line}: bad scan_area {text!r}: {e}") from None


def _spacing(csv_path: Path, line: int, rec: dict[str, str]) -> tuple[float, float] | None:
    """(x, y) mm per pixel from spacing_x_mm and spacing_y_mm: both positive, or both empty."""
    values = [_number(csv_path, line, c, rec.get(c, ""), float) for c in ("spacing_x_mm", "spacing_y_mm")]
    if values == [None, None]:
        return None
    if None in values or any(v <= 0 for v in values):
        raise UltrasslError(
            f"{csv_path}: line {line}: spacing_x_mm and spacing_y_mm must both be numbers > 0, or both empty"
        )
    return (float(values[0]), float(values[1]))


# ---------------------------------------------------------------------------------------- one call


def index_folder(
    data_dir: str | Path,
    out_csv: str | Path,
    labels_csv: str | Path | None = None,
    group_pattern: str | None = None,
    progress: bool = True,
    *,
    strict_groups: bool = False,
    clear_patient_ids: bool = False,
    salt_file: str | Path | None = None,
    limits: ReadLimits = DEFAULT_LIMITS,
) -> IndexSummary:
    """Build and write the manifest, plus `<stem>_skipped.csv` (path, reason) when files were skipped.

    DICOM PatientIDs become salted-hash pseudonyms (``data.pseudonyms``; the salt in ``salt_file``,
    default ``<manifest>.salt``, created when missing) unless ``clear_patient_ids``. Files that
    ``group_pattern`` does not match are warned about (with ``strict_groups``: an error, and nothing is
    written) and listed in the summary's ``unmatched_group_pattern``.
    """
    out_csv = Path(out_csv)
    pseudonym = None
    if not clear_patient_ids:
        pseudonym = Pseudonymiser(salt_file or salt_path_for(out_csv), create=salt_file is None)
    unmatched: list[str] = []
    rows, skipped = build_manifest(
        data_dir,
        labels_csv=labels_csv,
        group_pattern=group_pattern,
        progress=progress,
        pseudonym=pseudonym,
        limits=limits,
        strict_groups=strict_groups,
        unmatched=unmatched,
    )
    write_manifest(rows, out_csv)
    skipped_path = out_csv.with_name(f"{out_csv.stem}_skipped.csv")
    if skipped:
        base = out_csv.absolute().parent
        with open(skipped_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(("path", "reason"))
            for path, reason in skipped:
                writer.writerow((_relative(path, base), reason))
    elif skipped_path.exists():
        skipped_path.unlink()  # a stale list from an earlier run would be misleading
    return IndexSummary(
        n_indexed=len(rows),
        n_skipped=len(skipped),
        skipped=skipped,
        by_kind=dict(Counter(r.kind for r in rows)),
        manifest_path=out_csv,
        skipped_path=skipped_path if skipped else None,
        rows=rows,
        salt_file=pseudonym.salt_file if pseudonym is not None and pseudonym.used else None,
        unmatched_group_pattern=unmatched,
    )
