"""Tests for tfqat.flowers.plots: PNG plots of the accuracy, confusion matrices and weight ranges."""

import pytest
from matplotlib import image as mpimg

from tfqat.flowers.plots import plot_accuracy, plot_confusion, plot_training, plot_weight_ranges, training_fits

from example_results import CLASSES, example_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_width=300, min_height=300):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    height, width = pixels.shape[:2]
    assert width >= min_width and height >= min_height
    assert pixels.std() > 0.01  # not a blank canvas


def test_plots_are_valid_pngs(tmp_path):
    results = example_results()
    _assert_png(plot_accuracy(results, tmp_path / "accuracy.png"))
    _assert_png(plot_confusion(results["models"]["qat"]["confusion"], CLASSES, tmp_path / "confusion.png", "QAT"))
    _assert_png(plot_weight_ranges(results["weight_ranges"], tmp_path / "weights.png"))
    _assert_png(plot_training(results, tmp_path / "training.png"))


def test_training_fits_are_named_and_ordered():
    results = example_results()
    assert list(training_fits(results)) == ["float, head", "float, fine-tuning", "QAT int8"]
    del results["models"]["qat"]["training"]
    results["models"]["float"]["training"]["head"]["epochs"] = []
    assert list(training_fits(results)) == ["float, fine-tuning"]
    with pytest.raises(ValueError, match="no logged training"):
        plot_training({"models": {}}, "unused.png")


def test_plot_confusion_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        plot_confusion([[1, 2], [3, 4]], CLASSES, tmp_path / "c.png", "bad")
