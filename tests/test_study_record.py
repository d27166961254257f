"""Tests for tfqat.flowers.study_record: a study resumes on another machine from its per-seed record."""

import json
import shutil

import h5py
import numpy as np
import pytest

from tfqat import cli
from tfqat.flowers import study_record
from tfqat.flowers.methods import FLOAT_WEIGHTS

from test_pipeline import DATA, WEIGHTS, needs_shared

# The method a later study adds to the record: the cheapest one on the quick run (seconds; ptq_equalized took a minute).
UNRECORDED = "tflite_ptq"


def _weights_file(path, values, extra_attribute=None):
    with h5py.File(path, "w") as weights:
        layer = weights.create_group("layers/dense/vars")
        layer.create_dataset("0", data=np.asarray(values, np.float32))
        layer.create_dataset("1", data=np.zeros(3, np.float32))
        if extra_attribute is not None:  # metadata, not weights
            weights.attrs["saved"] = extra_attribute
    return path


def test_the_fingerprint_is_of_the_weights_not_of_the_files_metadata(tmp_path):
    first = study_record.weights_fingerprint(_weights_file(tmp_path / "a.h5", [[1, 2, 3]], "monday"))
    assert study_record.weights_fingerprint(_weights_file(tmp_path / "b.h5", [[1, 2, 3]], "tuesday")) == first
    nudged = np.nextafter(np.float32(3), np.float32(4))  # one value one ulp off
    assert study_record.weights_fingerprint(_weights_file(tmp_path / "c.h5", [[1, 2, nudged]])) != first


def _recorded(run_folder, settings):
    weights = _weights_file(run_folder / FLOAT_WEIGHTS, [[1, 2, 3]])
    return {
        "settings": settings,
        "float": {"accuracy": 0.9},
        "qat_tqt": {"accuracy": 0.91},
        "stage_seconds": {"float": 10.0, "qat_tqt": 20.0},
        study_record.FINGERPRINT: study_record.weights_fingerprint(weights),
    }


def test_recorded_methods_pair_only_with_the_recorded_float_weights(tmp_path):
    recorded = _recorded(tmp_path, {"seed": 0})
    assert study_record.finished_stages(recorded) == ["float", "qat_tqt"]
    same, why = study_record.same_float(recorded, tmp_path)
    assert same and "bit for bit" in why
    _weights_file(tmp_path / FLOAT_WEIGHTS, [[1, 2, 4]])  # this machine trained another float model
    same, why = study_record.same_float(recorded, tmp_path)
    assert not same and "differs from the recorded one" in why
    del recorded[study_record.FINGERPRINT]
    assert not study_record.same_float(recorded, tmp_path)[0]


def test_a_record_of_other_settings_is_refused_by_name(tmp_path):
    recorded = _recorded(tmp_path, {"seed": 0, "image_size": 224})
    study_record.check_settings(recorded, {"seed": 0, "image_size": 224}, tmp_path / "seed0.json")
    with pytest.raises(ValueError, match=r"seed0.json was recorded with other settings \(image_size: 224 -> 96\)"):
        study_record.check_settings(recorded, {"seed": 0, "image_size": 96}, tmp_path / "seed0.json")


def test_a_damaged_record_is_a_clear_error(tmp_path):
    record = tmp_path / "seed0.json"
    record.write_text("{not json")
    with pytest.raises(ValueError, match="seed0.json is not a study record"):
        study_record.read_record(record)
    record.write_text("[]")
    with pytest.raises(ValueError, match="seed0.json is not a study record"):
        study_record.read_record(record)
    assert study_record.read_record(tmp_path / "seed1.json") is None


def _study(record_dir) -> list:
    return ["study", "--data", str(DATA), "--weights", str(WEIGHTS), "--quick", "--seeds", "0",
            "--record-dir", str(record_dir)]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The record of a quick study of seed 0 with the control and PTQ, whose folders are gone (another machine's);
    each test takes a copy."""
    folder = tmp_path_factory.mktemp("recorded")
    assert cli.main([*_study(folder / "record"), "--methods", "float_continued,ptq", "--out", str(folder / "first")]) == 0
    shutil.rmtree(folder / "first")
    return folder / "record"


@needs_shared
def test_a_study_resumes_from_its_record_on_a_machine_without_its_folders(recorded, tmp_path, capsys):
    """Another folder stands for another machine: a finished seed is taken from the record without training;
    a seed that needs another method trains its float model again, finds it the recorded one (same kernels
    here) and adopts the recorded method instead of running it again."""
    record_dir = shutil.copytree(recorded, tmp_path / "record")
    common = _study(record_dir)
    first = json.loads((record_dir / "seed0.json").read_text())
    assert {"float", "float_continued", "ptq", study_record.FINGERPRINT} <= set(first)
    capsys.readouterr()

    assert cli.main([*common, "--methods", "ptq", "--out", str(tmp_path / "second")]) == 0
    out = capsys.readouterr().out
    assert "seed 0: its results are the record's" in out and "float: original float network" not in out
    study = json.loads((tmp_path / "second" / "accuracy.json").read_text())
    assert study["methods"]["ptq"]["seeds"]["0"]["accuracy"] == first["ptq"]["accuracy"]
    assert study["methods"]["ptq"]["seeds"]["0"]["seconds"] == first["stage_seconds"]["ptq"]

    assert cli.main([*common, "--methods", f"ptq,{UNRECORDED}", "--out", str(tmp_path / "third")]) == 0
    out = capsys.readouterr().out
    assert "is the recorded one bit for bit" in out and "adopted the record's float_continued, ptq" in out
    assert "ptq: done in an earlier run" in out and f"{UNRECORDED}: " in out
    state = json.loads((tmp_path / "third" / "seed0" / "state.json").read_text())
    assert state["ptq"] == first["ptq"] and state["float"]["predictions"] == first["float"]["predictions"]
    assert UNRECORDED in json.loads((record_dir / "seed0.json").read_text())  # the record follows


@needs_shared
def test_a_record_of_other_settings_stops_the_study_before_it_trains(tmp_path, capsys):
    record_dir = tmp_path / "record"
    record_dir.mkdir()
    (record_dir / "seed0.json").write_text(json.dumps({"settings": {"image_size": 224}, "float": {"accuracy": 0.9}}))
    code = cli.main([*_study(record_dir), "--methods", "ptq", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "seed0.json was recorded with other settings (" in err[0]
    assert "image_size: 224 -> 96" in err[0] and not (tmp_path / "s" / "seed0" / FLOAT_WEIGHTS).exists()


def test_a_record_of_a_float_model_not_reproduced_is_kept_under_its_fingerprint(tmp_path):
    recorded = _recorded(tmp_path, {"seed": 0})
    recorded["float_continued"] = {"accuracy": 0.92}
    record = study_record.record_path(tmp_path, 1)
    kept = study_record.keep_as_earlier(record, recorded)
    assert kept.name == f"seed1.{recorded[study_record.FINGERPRINT][:12]}.json"
    assert study_record.earlier_paths(tmp_path, 1) == [kept] and study_record.earlier_paths(tmp_path, 0) == []
    assert study_record.read_record(kept) == recorded
    with pytest.raises(ValueError, match="already exists: two records of one float model"):
        study_record.keep_as_earlier(record, recorded)
    # Its methods are kept only with that machine's control, which they are paired with; float and control run again.
    assert study_record.kept_methods([recorded], "float_continued") == {"qat_tqt"}
    assert study_record.kept_methods([recorded], None) == {"qat_tqt", "float_continued"}
    del recorded["float_continued"]
    assert study_record.kept_methods([recorded], "float_continued") == set()


@needs_shared
def test_a_seed_split_by_a_machine_change_keeps_the_earlier_machines_methods(recorded, tmp_path, capsys):
    """A record whose float model this machine does not reproduce (a fingerprint no training gives stands for
    another machine's kernels): float model and control run again here, the recorded method is kept with its
    own float model and control, the missing method runs here; then the seed is complete from its records."""
    record_dir = shutil.copytree(recorded, tmp_path / "record")
    common = _study(record_dir)
    first = json.loads((record_dir / "seed0.json").read_text())
    first[study_record.FINGERPRINT] = "f" * 64
    (record_dir / "seed0.json").write_text(json.dumps(first))
    capsys.readouterr()

    methods = ["--methods", f"float_continued,ptq,{UNRECORDED}"]
    assert cli.main([*common, *methods, "--out", str(tmp_path / "second")]) == 0
    out = capsys.readouterr().out
    assert "differs from the recorded one" in out and "seed 0: ptq kept from an earlier machine's" in out
    assert "[tfqat] float_continued: float network" in out and f"[tfqat] {UNRECORDED}: " in out
    assert "[tfqat] ptq: " not in out
    assert json.loads((record_dir / "seed0.ffffffffffff.json").read_text()) == first
    record = json.loads((record_dir / "seed0.json").read_text())
    assert "ptq" not in record and record[study_record.FINGERPRINT] != "f" * 64  # this machine's float model
    study = json.loads((tmp_path / "second" / "accuracy.json").read_text())
    ptq = study["methods"]["ptq"]["seeds"]["0"]
    assert ptq["earlier_machine"] and ptq["accuracy"] == first["ptq"]["accuracy"]
    assert ptq["float_accuracy"] == first["float"]["accuracy"]
    assert "earlier_machine" not in study["methods"][UNRECORDED]["seeds"]["0"]

    assert cli.main([*common, *methods, "--out", str(tmp_path / "third")]) == 0
    out = capsys.readouterr().out
    assert "seed 0: its results are the record's" in out and "float: original float network" not in out
    assert json.loads((tmp_path / "third" / "accuracy.json").read_text())["methods"] == study["methods"]
