"""Model selection keeps the best validation epoch; ties go to the lower validation loss."""

from __future__ import annotations

import torch
from torch import nn

from ultrassl.finetune.selection import EarlyStopping


def _model(value: float) -> nn.Module:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def test_keeps_the_best_epoch_and_stops_after_patience_bad_epochs():
    stopper = EarlyStopping(patience=2)
    assert not stopper.update(0.5, 0, _model(0))
    assert not stopper.update(0.8, 1, _model(1))
    assert not stopper.update(0.7, 2, _model(2))
    assert stopper.update(0.6, 3, _model(3))  # second bad epoch in a row
    model = _model(9)
    assert stopper.restore(model) and model.weight.item() == 1.0 and stopper.best_epoch == 1


def test_a_saturated_score_is_broken_by_the_tie_break():
    stopper = EarlyStopping(patience=5)
    stopper.update(1.0, 0, _model(0), tie_break=-0.9)
    stopper.update(1.0, 1, _model(1), tie_break=-0.2)  # same accuracy, lower loss: better
    stopper.update(1.0, 2, _model(2), tie_break=-0.4)
    stopper.update(0.9, 3, _model(3), tie_break=-0.01)  # lower accuracy never wins on loss
    assert stopper.best_epoch == 1 and stopper.bad_epochs == 2


def test_restore_without_any_epoch_says_so():
    assert not EarlyStopping(3).restore(_model(0))
