"""bench/real_data.py end to end on a sliver of the real data (../shared/data); skipped when it is absent;
its HC18 table as bench/pages/real_data.py renders it."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from ultrassl.data.manifest import read_manifest
from ultrassl.finetune.classify import FINETUNE_REVISION

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _bench():
    if str(ROOT / "bench") not in sys.path:  # the bench scripts import their shared bench/benchlib.py
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_real_data", ROOT / "bench" / "real_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "pocus" / "manifest.csv").exists(), reason="../shared/data is not here")
def test_real_data_bench_two_folds_resumes(tmp_path):
    bench = _bench()
    # a POCUS subset (a few patients per fold) keeps decoding and training short
    pocus = tmp_path / "data" / "pocus"
    pocus.mkdir(parents=True)
    with (DATA / "pocus" / "manifest.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        fields, kept, count = reader.fieldnames, [], {}
        for row in reader:
            short = row["kind"] == "image" or int(row["n_frames"]) <= 80
            if row["probe"] != "convex" or row["fold"] not in ("0", "1") or not short:
                continue
            key = (row["fold"], row["class"])
            if row["class"] == "viral" or count.get(key, 0) >= 2:
                continue
            count[key] = count.get(key, 0) + 1
            kept.append(row)
            dst = tmp_path / "data" / row["path"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(DATA / row["path"], dst)
    with (pocus / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)

    opt = bench.Options(
        data=tmp_path / "data",
        out=tmp_path / "results.json",
        work=tmp_path / "work",
        tasks=("pocus",),
        methods=("scratch", "mae"),
        folds=(0, 1),
        pretrain_minutes=0.02,
        finetune_epochs=1,
        img_size=32,
        modes=("linear",),
        calib_steps=3,
        pretrain_batch=8,
        log=lambda s: None,
    )
    res = bench.run(opt)
    doc = json.loads(opt.out.read_text())
    assert set(doc["pocus"]) == {"scratch-vit", "scratch-r18", "mae"}
    assert set(doc["pocus"]["mae"]["linear"]) == {"0", "1"}
    assert doc["summary"]["pocus"]["mae"]["linear"]["frame"]["accuracy"]["n"] == 2
    assert "machine" in doc and doc["calibration"]["pocus/mae"]["steps"] >= 10
    assert doc["config"]["finetune_revision"] == FINETUNE_REVISION  # a fresh file: today's fine-tuning
    # per-fold pre-training never sees the test fold's patients
    folds = json.loads((opt.work / "pocus" / "folds.json").read_text())["folds"]
    seen = {r.group_id for r in read_manifest(opt.work / "pocus" / "manifests" / "fold0_mae.csv")}
    assert seen and not seen & set(folds[0]["test_groups"])
    # resumed: nothing is re-trained or re-evaluated
    before = {p: p.stat().st_mtime_ns for p in (opt.work / "pocus").rglob("report.json")}
    bench.run(opt)
    after = {p: p.stat().st_mtime_ns for p in (opt.work / "pocus").rglob("report.json")}
    assert before == after and res.doc["acceptance"] is not None


def test_hc18_table_orders_rows_and_pairs_dice_gains_by_fold(tmp_path):
    bench = _bench()
    res = bench.Results(tmp_path / "results.json")
    res.doc["hc18"] = {  # inserted out of order, as resumed runs add them
        "uscl/unet": {"0": {"dice": 0.90, "iou": 0.8}, "1": {"dice": 0.80, "iou": 0.7}},
        "mae/upernet": {"0": {"dice": 0.95, "iou": 0.9}, "1": {"dice": 0.85, "iou": 0.8}},
        "scratch-r18/unet": {"0": {"dice": 0.88, "iou": 0.8}},
        "scratch-vit/upernet": {"0": {"dice": 0.90, "iou": 0.8}, "1": {"dice": 0.70, "iou": 0.6}},
    }
    from pages.real_data import markdown

    text = markdown({**res.doc, "summary": bench.summarize_results(res)})
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| ") and line.split(" | ")[1] in ("upernet", "unet")
    ]
    assert [r.split(" | ")[0] for r in rows] == [
        "| scratch (ViT-T)",
        "| MAE",
        "| scratch (ResNet-18)",
        "| USCL (ResNet-18)",
    ]
    # MAE vs scratch ViT on folds 0 and 1: (+5 + 15) / 2; USCL vs scratch ResNet on fold 0 only: +2
    assert "| +10.0 (2 folds) |" in rows[1] and "| +2.0 (1 fold) |" in rows[3]
    assert "| - |" in rows[0] and "| 90.0 ± 7.1 |" in rows[1]


def test_full_rows_of_an_earlier_fine_tuning_revision_are_flagged():
    """A file whose config records no fine-tuning revision (or an older one) holds ``full`` rows of code
    that ignored the layer-wise lr decay: the page says so instead of passing them off as the guide's."""
    from pages.real_data import outdated_full_rows

    doc = {"pocus": {"mae": {"linear": {"0": {}}, "full": {"0": {}}}}, "fewlabel": {"best": "mae"}}
    assert "an earlier revision (1)" in "\n".join(outdated_full_rows(doc))
    assert outdated_full_rows({**doc, "config": {"finetune_revision": FINETUNE_REVISION}}) == []
    assert outdated_full_rows({"pocus": {"mae": {"linear": {"0": {}}}}}) == []  # no full rows


def test_pocus_modes_follow_each_architecture_unless_named():
    bench = _bench()
    default = bench.Options()
    # the ViTs: linear probe + full fine-tuning; ResNet-18: linear probe + last block (USCL's protocol)
    assert bench.pocus_modes("scratch-vit", default) == ("linear", "full")
    assert bench.pocus_modes("deblur-mae", default) == ("linear", "full")
    assert bench.pocus_modes("scratch-r18", default) == ("linear", "partial")
    assert bench.pocus_modes("uscl", default) == ("linear", "partial")
    named = bench.Options(modes=("linear",))
    from benchlib import ROW_ORDER

    assert {bench.pocus_modes(n, named) for n in ROW_ORDER} == {("linear",)}
