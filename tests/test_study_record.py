"""Tests for tfqat.flowers.study_record: a study resumes on another machine from its per-seed record."""

import json
import shutil

import h5py
import numpy as np
import pytest

from tfqat import cli
from tfqat.flowers import study_record

from test_pipeline import DATA, WEIGHTS, needs_shared


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


def _recorded(run_folder, settings, **float_weights):
    weights = _weights_file(run_folder / study_record.FLOAT_WEIGHTS, float_weights.get("values", [[1, 2, 3]]))
    return {
        "settings": settings,
        "float": {"accuracy": 0.9},
        "qat_tqt": {"accuracy": 0.91},
        "stage_seconds": {"float": 10.0, "qat_tqt": 20.0},
        study_record.FINGERPRINT: study_record.weights_fingerprint(weights),
    }


def test_recorded_stages_are_kept_only_for_the_same_float_weights_and_settings(tmp_path):
    recorded = _recorded(tmp_path, {"seed": 0})
    stages, why = study_record.stages_to_restore(recorded, tmp_path, {"seed": 0})
    assert stages == ["float", "qat_tqt"] and "bit for bit" in why
    assert study_record.stages_to_restore(recorded, tmp_path, {"seed": 1}) == ([], "the record was made with other settings")
    _weights_file(tmp_path / study_record.FLOAT_WEIGHTS, [[1, 2, 4]])  # this machine trained another float model
    stages, why = study_record.stages_to_restore(recorded, tmp_path, {"seed": 0})
    assert stages == [] and "differs from the recorded one" in why
    del recorded[study_record.FINGERPRINT]
    assert study_record.stages_to_restore(recorded, tmp_path, {"seed": 0})[0] == []


def test_a_damaged_record_is_a_clear_error(tmp_path):
    record = tmp_path / "seed0.json"
    record.write_text("{not json")
    with pytest.raises(ValueError, match="seed0.json is not a study record"):
        study_record.read_record(record)
    assert study_record.read_record(tmp_path / "seed1.json") is None


@needs_shared
def test_a_study_resumes_from_its_record_on_a_machine_without_its_folders(tmp_path, capsys):
    """The second study has only the first one's record: it trains the float model again, finds it the
    recorded one (same machine, same kernels) and keeps the recorded method instead of running it again."""
    record_dir = tmp_path / "record"
    common = ["study", "--data", str(DATA), "--weights", str(WEIGHTS), "--quick", "--seeds", "0", "--methods", "ptq",
              "--record-dir", str(record_dir)]
    assert cli.main([*common, "--out", str(tmp_path / "first")]) == 0
    first = json.loads((record_dir / "seed0.json").read_text())
    assert {"float", "ptq", study_record.FINGERPRINT} <= set(first)
    shutil.rmtree(tmp_path / "first")
    capsys.readouterr()

    assert cli.main([*common, "--out", str(tmp_path / "second")]) == 0
    out = capsys.readouterr().out
    assert "is the recorded one bit for bit" in out and "kept ptq" in out and "ptq: done in an earlier run" in out
    state = json.loads((tmp_path / "second" / "seed0" / "state.json").read_text())
    assert state["ptq"] == first["ptq"] and state["stage_seconds"]["ptq"] == first["stage_seconds"]["ptq"]
    assert state["float"]["predictions"] == first["float"]["predictions"]

    # The tables alone need neither folder: the record is enough.
    shutil.rmtree(tmp_path / "second")
    assert cli.main([*common, "--out", str(tmp_path / "third"), "--report-only"]) == 0
    study = json.loads((tmp_path / "third" / "accuracy.json").read_text())
    assert study["methods"]["ptq"]["seeds"]["0"]["accuracy"] == first["ptq"]["accuracy"]
