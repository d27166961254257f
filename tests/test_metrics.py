"""Tests for tfqat.evaluation.metrics: exact metrics, and clear errors for unusable models and folders."""

from tfqat._keras import keras  # noqa: F401

import numpy as np
import pytest
from PIL import Image

from tfqat import cli
from tfqat.evaluation import metrics, stats
from tfqat.tflite import export

import tflite_models


def test_metrics_are_exact():
    labels = np.array([0, 0, 1, 1, 2])
    outputs = np.eye(3)[[0, 1, 1, 1, 0]]
    result = metrics.classification_metrics(labels, outputs, ["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["per_class"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert result["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert result["accuracy_interval"] == list(stats.wilson_interval(3, 5))
    first = metrics.format_metrics(result).splitlines()[0]
    low, high = result["accuracy_interval"]
    assert first == f"accuracy 0.6000 on 5 images (95 % interval {low:.4f} to {high:.4f}, Wilson)"


def test_metrics_with_no_images():
    with pytest.raises(ValueError, match="no images"):
        metrics.classification_metrics(np.array([]), np.zeros((0, 2)), ["a", "b"])


def _folder(root, classes, per_class=2):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def labelled_model(tmp_path):
    classes = ["a", "b", "c", "d", "e"]
    path = export.save_tflite(tflite_models.pow2_int8_tflite(), tmp_path / "m.tflite", labels=classes, preprocessing="raw")
    return path, classes


def test_evaluate_folder_uses_the_model_labels(labelled_model, tmp_path):
    path, classes = labelled_model
    folder = _folder(tmp_path / "photos", ["b", "d"])
    result = metrics.evaluate_folder(path, folder, out_json=tmp_path / "r.json")
    assert result["count"] == 4
    assert set(result["per_class"]) == set(classes)
    assert result["per_class"]["a"] is None  # no image of that class
    assert (tmp_path / "r.json").is_file() and result["preprocessing"] == "raw"  # the file's own


def test_a_file_without_a_recorded_preprocessing_needs_one(tmp_path):
    path = export.save_tflite(tflite_models.pow2_int8_tflite(), tmp_path / "m.tflite", labels=list("abcde"))
    folder = _folder(tmp_path / "photos", ["b", "d"])
    with pytest.raises(ValueError, match=r"does not record how its inputs are preprocessed.*preprocessing="):
        metrics.evaluate_folder(path, folder)
    assert metrics.evaluate_folder(path, folder, preprocessing="torch")["preprocessing"] == "torch"


def test_unknown_folder_class_is_a_clear_error(labelled_model, tmp_path):
    path, _ = labelled_model
    folder = _folder(tmp_path / "photos", ["a", "zebra"])
    with pytest.raises(ValueError, match="zebra"):
        metrics.evaluate_folder(path, folder)


@pytest.mark.parametrize("content", [b"", b"not a flatbuffer at all", b"TFL3" + bytes(64)])
def test_evaluate_cli_on_a_corrupt_model(tmp_path, capsys, content):
    model = tmp_path / "broken.tflite"
    model.write_bytes(content)
    folder = _folder(tmp_path / "photos", ["a", "b"])
    code = cli.main(["evaluate", str(model), "--data", str(folder), "--labels", str(_labels(tmp_path))])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.tflite" in err[0]


def _labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a\nb\n")
    return path
