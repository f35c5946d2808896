"""Pre-training: the one loop (``loop``), what a run settles once before it (``setup``), the optimiser
and schedule shared with fine-tuning (``optim``), the sample order (``data_order``), checkpoints and
best.pt (``checkpoints``), and what follows a run from outside (``callbacks``, ``metrics_log``)."""

from ultrassl.training.callbacks import Callback, StepInfo, Watcher
from ultrassl.training.checkpoints import agreed_latest
from ultrassl.training.data_order import ResumableSampler, batch_size_of
from ultrassl.training.loop import Trainer, TrainingDivergedError, TrainResult
from ultrassl.training.metrics_log import MetricsLog
from ultrassl.training.optim import WarmupCosine, build_optimizer, fused_optimizer, param_groups
from ultrassl.training.setup import use_channels_last

__all__ = [
    "Callback",
    "MetricsLog",
    "ResumableSampler",
    "StepInfo",
    "Trainer",
    "TrainResult",
    "TrainingDivergedError",
    "Watcher",
    "WarmupCosine",
    "agreed_latest",
    "batch_size_of",
    "build_optimizer",
    "fused_optimizer",
    "param_groups",
    "use_channels_last",
]
