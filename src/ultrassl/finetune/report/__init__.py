"""The reports of the downstream evaluations: classification (``classification``), segmentation
(``segmentation``) and the formatting both share (``formatting``). Every file is written atomically."""

from ultrassl.finetune.report.classification import (
    LEVELS,
    FoldResult,
    build_summary,
    fraction_key,
    headline_setting,
    write_classification_report,
)
from ultrassl.finetune.report.formatting import format_mean_std
from ultrassl.finetune.report.segmentation import (
    build_seg_summary,
    save_overlay,
    write_segmentation_report,
)

__all__ = [
    "LEVELS",
    "FoldResult",
    "build_seg_summary",
    "build_summary",
    "format_mean_std",
    "fraction_key",
    "headline_setting",
    "save_overlay",
    "write_classification_report",
    "write_segmentation_report",
]
