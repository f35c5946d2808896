"""DICOM patient-identifying values never reach a file ultrassl writes: index -> pre-train -> fine-tune ->
evaluate -> export on DICOM cines that carry them, then every output byte is searched."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from media_helpers import write_dicom

from ultrassl import api
from ultrassl.cli import main
from ultrassl.data.pseudonyms import pseudonym, read_or_create_salt, salt_path_for

N_PATIENTS = 8


def _phi(i: int) -> dict[str, str]:
    return {
        "PatientID": f"MRN-86753{i:02d}",
        "PatientName": f"Doelastname{i}^Janefirstname",
        "PatientBirthDate": f"1970010{i % 9 + 1}",
        "InstitutionName": "St Example Hospital",
        "AccessionNumber": f"ACC-4242{i}",
        "StudyDate": "20240229",
        "ReferringPhysicianName": "Housedoctor^Gregory",
    }


def _cines(root: Path) -> Path:
    """Two classes of DICOM cines, one per patient, each carrying that patient's identifying values."""
    rng = np.random.default_rng(0)
    for i in range(N_PATIENTS):
        label = ("normal", "covid")[i % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        frames = rng.integers(0, 256, (6, 64, 64), dtype=np.uint8)
        frames[:, :, : 8 + 4 * (i % 2)] = 255 * (i % 2)  # a little class signal
        write_dicom(root / label / f"cine{i}.dcm", frames, frame_time_ms=50, patient_id=None, extra=_phi(i))
    return root


def _identifying_strings() -> set[str]:
    out = set()
    for i in range(N_PATIENTS):
        for value in _phi(i).values():
            out.add(value)
            # each name part too; 8+ characters, so random weight bytes never match by chance
            out.update(part for part in value.split("^") if len(part) >= 8)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _cines(tmp_path_factory.mktemp("phi") / "data")


@pytest.mark.slow
def test_no_patient_value_reaches_any_output(data, tmp_path, capsys):
    work = tmp_path / "work"
    manifest = work / "manifest.csv"
    assert main(["index", str(data), "-o", str(manifest)]) == 0
    assert "salted-hash group ids" in capsys.readouterr().out
    run, export, evaluation = work / "run", work / "export", work / "eval"
    pre = ["pretrain", "--method", "mae", "--preset", "tiny", "--data", str(manifest), "--out", str(run)]
    assert main([*pre, "--max-steps", "2", "--batch-size", "4", "--set", "train.tensorboard=false"]) == 0
    assert main(["export", str(run), "-o", str(export)]) == 0
    ft = ["finetune", "classify", "--weights", str(run), "--data", str(manifest), "--out", str(evaluation)]
    assert main([*ft, "--folds", "2", "--max-frames", "2", "--epochs", "1"]) == 0
    assert main(["evaluate", "--model", str(evaluation), "--data", str(manifest), "--device", "cpu"]) == 0
    written = [p for p in work.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"manifest.csv", "folds.json", "last.pt", "model.safetensors"} <= names, names
    assert any(n.startswith("predictions") for n in names), names
    found = []
    for path in written:
        if path.name.endswith(".salt"):
            continue  # the key itself, kept private beside the manifest
        blob = path.read_bytes()
        found += [f"{path.relative_to(work)}: {s!r}" for s in _identifying_strings() if s.encode() in blob]
    assert not found, found
    # the groups are still one per patient: the splits keep what they need
    with manifest.open() as f:
        groups = {r["group_id"] for r in csv.DictReader(f)}
    salt = read_or_create_salt(salt_path_for(manifest))
    assert groups == {pseudonym(_phi(i)["PatientID"], salt) for i in range(N_PATIENTS)}


def test_pseudonyms_are_stable_per_salt_and_clear_ids_are_opt_in(data, tmp_path):
    def groups(summary) -> list[str]:
        return sorted(r.group_id for r in summary.rows)

    a = api.index(data, tmp_path / "a.csv")
    assert a.salt_file == tmp_path / "a.csv.salt" and a.salt_file.stat().st_mode & 0o077 == 0
    assert all(g.startswith("pt-") and len(g) == 19 for g in groups(a)) and len(set(groups(a))) == N_PATIENTS
    assert groups(api.index(data, tmp_path / "a.csv")) == groups(a)  # re-indexing keeps ids and folds
    assert set(groups(api.index(data, tmp_path / "b.csv"))).isdisjoint(groups(a))  # another salt
    shared = api.index(data, tmp_path / "c.csv", salt_file=a.salt_file)  # one salt for several indexes
    assert groups(shared) == groups(a) and not (tmp_path / "c.csv.salt").exists()
    clear = api.index(data, tmp_path / "d.csv", clear_patient_ids=True)
    assert (
        groups(clear) == sorted(_phi(i)["PatientID"] for i in range(N_PATIENTS)) and clear.salt_file is None
    )
    (tmp_path / "bad.salt").write_text("not hex\n")
    with pytest.raises(Exception, match="bad.salt: not a salt file"):
        api.index(data, tmp_path / "e.csv", salt_file=tmp_path / "bad.salt")
    with pytest.raises(Exception, match="typo.salt: no such salt file"):  # a typo never starts a new salt
        api.index(data, tmp_path / "f.csv", salt_file=tmp_path / "typo.salt")
    assert not (tmp_path / "typo.salt").exists()


def test_a_folder_without_dicom_patient_ids_gets_no_salt_file(tmp_path):
    from media_helpers import write_png

    (tmp_path / "data").mkdir()
    write_png(tmp_path / "data" / "a.png", np.zeros((32, 32), np.uint8) + 90)
    summary = api.index(tmp_path / "data", tmp_path / "m.csv")
    assert summary.n_indexed == 1 and summary.salt_file is None and not (tmp_path / "m.csv.salt").exists()
