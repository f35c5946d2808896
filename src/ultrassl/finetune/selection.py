"""Model selection on validation: keep the best epoch's weights, stop after ``patience`` worse epochs."""

from __future__ import annotations

import math

import torch
from torch import nn


class EarlyStopping:
    """Tracks the best validation score and a copy of the weights that reached it.

    Scores compare as ``(score, tie_break)``: small validation sets often saturate (balanced accuracy 1.0
    from an early epoch on), and a tie-break such as minus the validation loss then still prefers the
    better-calibrated, better-trained later epoch over the first one that hit the ceiling.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best_score = -math.inf
        self.best_tie_break = -math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def update(self, score: float, epoch: int, model: nn.Module, tie_break: float = 0.0) -> bool:
        """Record one epoch's validation score; True when training should stop."""
        if (score, tie_break) > (self.best_score, self.best_tie_break):
            self.best_score, self.best_tie_break, self.best_epoch = score, tie_break, epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights into ``model``; False when no epoch was ever recorded as best."""
        if self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True
