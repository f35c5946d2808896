"""Watching a pre-training run: an online probe that picks the best checkpoint, pictures of what the
method predicts, and the curves and one-page summary written when the run ends.

Beside the fine-tuning engines, not above them: the probe shares their frame sampling, features, group
folds and scores through floors below both (``data.frameset``, ``models.pooling``, ``data.group_folds``,
``feature_scores``) and never imports ``finetune``. Below the facade; the training loop knows these only
as :class:`~ultrassl.training.Watcher` objects.
"""

from ultrassl.monitor.curves import write_curves, write_summary
from ultrassl.monitor.previews import PreviewPictures, preview_batch, preview_images
from ultrassl.monitor.probe import OnlineProbe, ProbeSet, load_probe_set
from ultrassl.monitor.watch import RunWatchers, build_watchers, finish_run

__all__ = [
    "OnlineProbe",
    "PreviewPictures",
    "ProbeSet",
    "RunWatchers",
    "build_watchers",
    "finish_run",
    "load_probe_set",
    "preview_batch",
    "preview_images",
    "write_curves",
    "write_summary",
]
