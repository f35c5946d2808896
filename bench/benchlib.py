"""What every benchmark shares: a description of the machine it ran on, and writing its table into its
own marked section of docs/benchmarks.md (the rest of the file is left as it is)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return rev + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU, cores, threads, versions, GPU and git revision (plus ``extra`` versions a bench cares about)."""
    import timm
    import torch

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": str(torch.__version__),
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git": git_revision(),
        **extra,
    }


def write_doc_section(name: str, section: str, doc: Path = DOC) -> Path:
    """Replace the block between ``<!-- NAME:START -->`` and ``<!-- NAME:END -->`` (appended if absent)."""
    start, end = f"<!-- {name}:START -->", f"<!-- {name}:END -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{start}\n{section}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
    return doc


#: how the benchmark tables name each pre-training method (the encoder where it is not a ViT-T)
METHOD_NAMES = {
    "mae": "MAE",
    "deblur-mae": "Deblurring MAE",
    "ultramae": "UltraMAE",
    "convmae": "ConvMAE (ConvViT-T)",
    "deblur-convmae": "Deblurring ConvMAE (ConvViT-T)",
    "uscl": "USCL (ResNet-18)",
}
