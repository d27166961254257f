"""Tests for tfqat.flowers.report: report.md content, atomic results.json."""

import copy
import json

import numpy as np
import pytest

from tfqat.flowers import report
from tfqat.flowers.report import write_json_atomic, write_report

from example_results import example_results


def _quickexample_results():
    """A quick run: no peers, no PTQ, no weight ranges, no agreement."""
    results = example_results()
    for key in ("ptq", "tflite_ptq", "tfmot_qat"):
        del results["models"][key]
    del results["models"]["qat"]["agreement"]
    del results["weight_ranges"]
    results["quick"] = True
    results["stage_seconds"] = {"data": 1.0, "float": 20.0, "qat": 15.0}
    return results


def test_report_contains_every_number(tmp_path):
    results = example_results()
    paths = write_report(results, tmp_path)
    text = paths["report"].read_text()

    header = "| Network | Accuracy | 95 % interval | Reference | Validation (Keras) | Model file | Evaluated with |"
    assert header in text
    for row in ("| float | 0.9313 | 0.9078 to 0.9495 | 0.8965 | 0.9209 | 8.90 MB | Keras |",
                "| PTQ int8 | 0.2867 | – | 0.2943 | – | 2.60 MB | LiteRT int8 |",
                "| QAT int8 | 0.9089 | 0.8830 to 0.9299 | 0.8910 | 0.9146 | 2.61 MB | LiteRT int8 |",
                "| TFLite PTQ int8 (peer) | 0.9022 | – | – | – | 2.70 MB | LiteRT int8 |",
                "| TFMOT QAT int8 (peer) | 0.8988 | – | – | – | 2.65 MB | LiteRT int8 |"):
        assert row in text
    # Paired differences to float, in the order of the networks, points with a sign.
    paired = text.split("## Against the float model (test split, paired)")[1].split("\n## ")[0]
    assert paired.index("| PTQ int8 | -64.42 | -68.39 to -60.14 | 384 | 2 | 1.2e-110 |") < paired.index(
        "| QAT int8 | -2.23 | -4.51 to +0.12 | 30 | 17 | 0.0789 |"
    )
    assert "TFMOT" not in paired
    assert "scores 0.9292" in text  # the float model's own TFLite accuracy
    assert results["command"] in text
    assert "started: 2026-11-28T02:10:00Z · report written: 2026-11-28T02:45:00Z · seed: 0" in text
    assert "| tfmot | 0.8.1 |" in text
    assert "train 2021, validation 316, test 593" in text
    assert "Skipped files: 2" in text and "roses/broken.jpg" in text
    assert results["data"]["image_contract"] in text
    # Per-class table: one row per class, images from the confusion row sums.
    row_sums = np.asarray(results["models"]["float"]["confusion"]).sum(axis=1)
    assert f"| daisy | {row_sums[0]} | 0.9000 | 0.1000 | 0.8900 | 0.8800 | 0.8700 |" in text
    # Agreement of the QAT model.
    assert "Top-1 agreement: 0.9983 of 593 test images" in text
    assert "Largest output difference: 2.00 quantization steps" in text
    assert "| 0 | 2500 | 84.32% |" in text and "| >2 | 0 | 0.00% |" in text
    # Verifier: verdicts, failures (capped, with the rest counted), named exceptions.
    assert "### QAT int8: PASSED" in text and "### TFLite PTQ int8 (peer): FAILED" in text
    assert "Failed checks: 25" in text and "... and 5 more" in text
    assert "MEAN block_16" in text
    assert "requantization not a power of two" in text
    # Weight ranges: worst layer first, ratio from the dict; stage times with total.
    assert "| expanded_conv_depthwise | depthwise | 4 | 1 | 0.01 | 3 | 40 | 4,000 | 6.0 | 1 |" in text
    assert "- depthwise (2 layers): median spread 4,500, median channel uses 7.0 of 127 levels" in text
    assert "2 of 6 live channels round to zero" in text
    # Training: each fit's kept epoch and its values, in network order.
    training = text.split("## Training")[1].split("\n## ")[0]
    assert "| float, head | 3 | 3 | 0.5000 | 0.8400 | 0.3500 | 0.9100 |" in training
    assert "| float, fine-tuning | 3 | 2 | 0.5500 | 0.8200 | 0.2500 | 0.9050 |" in training
    assert "| QAT int8 | 5 | 4 | 0.4500 | 0.8600 | 0.3000 | 0.9150 |" in training
    assert training.index("float, fine-tuning") < training.index("QAT int8")
    assert "distillation" not in training
    results["options"] = {"qat_distillation": True}
    assert "learned the float model's class probabilities" in report.render_markdown(results)
    assert "| qat | 500.0 | 8.3 |" in text and "| **total** | 1775.1 |" in text
    for name in ("accuracy_plot", "confusion_qat", "training_plot", "weight_ranges_plot"):
        assert f"[{name.removesuffix('_plot').replace('_', ' ')}]({paths[name].name})" in text


def test_report_skips_missing_models_and_sections(tmp_path):
    paths = write_report(_quickexample_results(), tmp_path)
    text = paths["report"].read_text()
    assert "| float | 0.9313 | 0.9078 to 0.9495 | 0.8965 |" in text
    assert "| QAT int8 | 0.9089 | 0.8830 to 0.9299 | 0.8910 |" in text
    assert "PTQ int8 |" not in text and "peer" not in text
    assert "agreement" not in text.lower() and "weight ranges" not in text.lower()
    assert "quick run" in text
    assert set(paths) == {"results", "report", "accuracy_plot", "confusion_float", "confusion_qat", "training_plot"}


def test_report_with_almost_nothing(tmp_path):
    paths = write_report({"command": "tfqat run", "models": {}}, tmp_path)
    assert set(paths) == {"results", "report"}
    assert "tfqat run" in paths["report"].read_text()


def test_results_json_round_trips(tmp_path):
    results = example_results()
    paths = write_report(results, tmp_path)
    text = paths["results"].read_text()
    assert json.loads(text) == results
    assert text.startswith('{\n  "command"')  # indent 2


def test_results_json_converts_numpy(tmp_path):
    path = write_json_atomic({"accuracy": np.float32(0.5), "confusion": np.eye(2, dtype=np.int64)}, tmp_path / "r.json")
    assert json.loads(path.read_text()) == {"accuracy": 0.5, "confusion": [[1, 0], [0, 1]]}


def test_failed_serialization_keeps_old_results(tmp_path):
    write_report(example_results(), tmp_path)
    old = (tmp_path / "results.json").read_bytes()
    bad = copy.deepcopy(example_results())
    bad["stage_seconds"]["evaluate"] = object()  # late in the dict: serialization fails midway
    with pytest.raises(TypeError, match="results.json cannot hold object"):
        write_report(bad, tmp_path)
    assert (tmp_path / "results.json").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    # A crash while writing the temp file (disk full, kill) must not touch the target either.
    path = write_json_atomic({"a": 1}, tmp_path / "results.json")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic({"a": 2}, path)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
