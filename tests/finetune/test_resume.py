"""A k-fold evaluation killed part-way continues on re-run: finished (fold, seed, label fraction) runs are
read back, the interrupted one is done again, and the report equals an uninterrupted run's."""

from __future__ import annotations

import pytest
from faults import evaluation_outputs
from tiny import tiny_vit_spec

from ultrassl.finetune.classify import Classifier, ClassifyConfig, finetune_classify
from ultrassl.finetune.segment import SegmentConfig, Segmenter, finetune_segment

SPEC = tiny_vit_spec((32, 32))


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not even ``except Exception`` handlers)."""


def _kill_at_call(monkeypatch, cls, method: str, n: int) -> list[int]:
    real, calls = getattr(cls, method), []

    def dying(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise Killed
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, dying)
    return calls


@pytest.mark.parametrize("mode", ["linear", "full"])
def test_a_killed_classification_continues_and_reports_as_if_never_killed(
    manifest, tmp_path, monkeypatch, mode, capsys, stderr_logging
):
    cfg = ClassifyConfig(mode=mode, folds=3, seeds=(0, 1), epochs=2, max_frames_per_video=2)
    finetune_classify("scratch", manifest, tmp_path / "ref", cfg, scratch_spec=SPEC, progress=False)
    # killed in the 4th of 6 runs (fold 1, seed 1)
    _kill_at_call(monkeypatch, Classifier, "fit", 4)
    with pytest.raises(Killed):
        finetune_classify("scratch", manifest, tmp_path / "run", cfg, scratch_spec=SPEC, progress=False)
    monkeypatch.undo()
    assert len(list((tmp_path / "run" / "runs").glob("fold*.json"))) == 3
    calls = _kill_at_call(monkeypatch, Classifier, "fit", 99)
    finetune_classify("scratch", manifest, tmp_path / "run", cfg, scratch_spec=SPEC, progress=False)
    assert len(calls) == 3  # only the interrupted run and the two after it were trained
    assert "read back 3 finished runs" in capsys.readouterr().err
    assert evaluation_outputs(tmp_path / "run") == evaluation_outputs(tmp_path / "ref")
    # a kept fold model that is not the one its record was made with (left by another evaluation)
    models = tmp_path / "run" / "models"
    (models / "fold0.safetensors").write_bytes((models / "fold1.safetensors").read_bytes())
    calls.clear()
    finetune_classify("scratch", manifest, tmp_path / "run", cfg, scratch_spec=SPEC, progress=False)
    assert len(calls) == 1  # fold 0's kept run is trained again, the other five are read back
    # another config reads nothing back
    calls.clear()
    other = ClassifyConfig(mode=mode, folds=3, seeds=(0, 1), epochs=2, max_frames_per_video=2, lr=5e-4)
    finetune_classify("scratch", manifest, tmp_path / "run", other, scratch_spec=SPEC, progress=False)
    assert len(calls) == 6


def test_a_killed_segmentation_continues_and_reports_as_if_never_killed(manifest, tmp_path, monkeypatch):
    cfg = SegmentConfig(folds=3, epochs=2, batch_size=4, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    finetune_segment("scratch", manifest, tmp_path / "ref", cfg, scratch_spec=SPEC, progress=False)
    _kill_at_call(monkeypatch, Segmenter, "_fit", 3)
    with pytest.raises(Killed):
        finetune_segment("scratch", manifest, tmp_path / "run", cfg, scratch_spec=SPEC, progress=False)
    monkeypatch.undo()
    calls = _kill_at_call(monkeypatch, Segmenter, "_fit", 99)
    finetune_segment("scratch", manifest, tmp_path / "run", cfg, scratch_spec=SPEC, progress=False)
    assert len(calls) == 1
    assert evaluation_outputs(tmp_path / "run") == evaluation_outputs(tmp_path / "ref")
    assert sorted(p.name for p in (tmp_path / "run" / "overlays").iterdir()) == sorted(
        p.name for p in (tmp_path / "ref" / "overlays").iterdir()
    )
