"""Tests for tfqat.report: report.md content, atomic results.json, PNG plots, weight ranges of a model."""

import copy
import json

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import numpy as np
import pytest
from matplotlib import image as mpimg

from tfqat import report
from tfqat.report import (
    layer_range_stats,
    plot_accuracy,
    plot_confusion,
    plot_weight_ranges,
    weight_ranges,
    write_json_atomic,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def _confusion(seed, correct):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 6, size=(5, 5))
    np.fill_diagonal(counts, correct)
    return counts.tolist()


def _verify(passed, failures=(), exceptions=()):
    verdict = "PASSED" if passed else f"FAILED: {len(failures)} check(s) failed"
    return {
        "passed": passed,
        "summary": f"model.tflite: {verdict}\n  ops: 66",
        "failures": list(failures),
        "named_exceptions": list(exceptions),
    }


def _model(title, accuracy, per_class, engine, file, size, seed, **extra):
    return {
        "title": title, "accuracy": accuracy, "per_class": dict(zip(CLASSES, per_class)), "engine": engine,
        "file": file, "size_bytes": size, "confusion": _confusion(seed, 100), **extra,
    }


def _results():
    mean_exception = "MEAN block_16: multiplier 1/49 (average pool over 7x7), not a shift"
    return {
        "command": "tfqat run --data ../shared/data/flower_photos --weights w.h5 --out runs/flowers",
        "versions": {"tfqat": "0.1.0", "tensorflow": "2.21.0", "tf_keras": "2.21.0", "tfmot": "0.8.1",
                     "ai_edge_litert": "2.3.0", "python": "3.11.7", "platform": "Linux-x86_64"},
        "started": "2026-11-28T02:10:00Z", "seed": 0, "quick": False,
        "data": {
            "source": "/work/shared/data/flower_photos", "classes": CLASSES,
            "split_sizes": {"train": 2021, "validation": 316, "test": 593},
            "skipped": [{"source": "roses/broken.jpg", "reason": "not a decodable image"},
                        {"source": "tulips/dup.jpg", "reason": "duplicate of tulips/a.jpg"}],
            "image_contract": "RGB, resized to 224x224 (bilinear), float32 in [-1, 1]",
        },
        "reference": {"float": 0.8965, "ptq": 0.2943, "qat": 0.8910},
        "models": {
            "float": _model("original float network", 0.93125, [0.9, 0.95, 0.88, 0.97, 0.91], "Keras",
                            "flowers_mobilenet_v2_float.tflite", 8_900_000, 0, tflite_accuracy=0.92917),
            "ptq": _model("int8 via post-training quantization (power-of-two, per-tensor)", 0.28667,
                          [0.1, 0.5, 0.2, 0.3, 0.4], "LiteRT int8", "flowers_ptq_int8.tflite", 2_600_000, 1,
                          verify=_verify(True, exceptions=[mean_exception])),
            "qat": _model("int8 via quantization-aware training (power-of-two, per-tensor)", 0.90893,
                          [0.89, 0.93, 0.87, 0.95, 0.9], "LiteRT int8", "flowers_qat_int8.tflite", 2_610_000, 2,
                          verify=_verify(True, exceptions=[mean_exception]),
                          agreement={"top1_agreement": 0.99831, "images": 593, "max_steps": 2.0, "mean_steps": 0.1234,
                                     "histogram": {"0": 2500, "1": 400, "2": 65, ">2": 0}}),
            "tflite_ptq": _model("int8 via TFLite converter PTQ (per-channel, float scales)", 0.90219,
                                 [0.88, 0.94, 0.86, 0.96, 0.89], "LiteRT int8", "flowers_tflite_ptq.tflite", 2_700_000, 3,
                                 verify=_verify(False, failures=[f"tensor {i} has scale 0.0123 = 2^-6.35, not a power of two"
                                                                 for i in range(25)])),
            "tfmot_qat": _model("int8 via TFMOT default 8-bit QAT", 0.89882, [0.87, 0.92, 0.85, 0.96, 0.9],
                                "LiteRT int8", "flowers_tfmot_qat.tflite", 2_650_000, 4,
                                verify=_verify(False, failures=["CONV_2D Conv1: requantization not a power of two"])),
        },
        "stage_seconds": {"data": 5.1, "float": 600.0, "ptq": 120.0, "qat": 500.0, "tflite_ptq": 90.0,
                          "tfmot_qat": 400.0, "evaluate": 60.0},
        "weight_ranges": {"layers": [
            {"name": "Conv1", "kind": "conv", "channel_max_abs": [0.5, 1.0, 2.0, 0.25]},
            {"name": "expanded_conv_depthwise", "kind": "depthwise", "channel_max_abs": [40.0, 0.01, 3.0, 0.0]},
            {"name": "block_1_depthwise", "kind": "depthwise", "channel_max_abs": [5.0, 0.5, 0.001]},
            {"name": "Logits", "kind": "dense", "channel_max_abs": [0.3, 0.4, 0.35, 0.2, 0.25]},
        ]},
    }


def _quick_results():
    """A quick run: no peers, no PTQ, no weight ranges, no agreement."""
    results = _results()
    for key in ("ptq", "tflite_ptq", "tfmot_qat"):
        del results["models"][key]
    del results["models"]["qat"]["agreement"]
    del results["weight_ranges"]
    results["quick"] = True
    results["stage_seconds"] = {"data": 1.0, "float": 20.0, "qat": 15.0}
    return results


def _assert_png(path, min_width=300, min_height=300):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    height, width = pixels.shape[:2]
    assert width >= min_width and height >= min_height
    assert pixels.std() > 0.01  # not a blank canvas


def test_report_contains_every_number(tmp_path):
    results = _results()
    paths = write_report(results, tmp_path)
    text = paths["report"].read_text()

    assert "| Network | Accuracy | Reference | Model file | Evaluated with |" in text
    for row in ("| float | 0.9313 | 0.8965 | 8.90 MB | Keras |",
                "| PTQ int8 | 0.2867 | 0.2943 | 2.60 MB | LiteRT int8 |",
                "| QAT int8 | 0.9089 | 0.8910 | 2.61 MB | LiteRT int8 |",
                "| TFLite PTQ int8 (peer) | 0.9022 | – | 2.70 MB | LiteRT int8 |",
                "| TFMOT QAT int8 (peer) | 0.8988 | – | 2.65 MB | LiteRT int8 |"):
        assert row in text
    assert "scores 0.9292" in text  # the float model's own TFLite accuracy
    assert results["command"] in text
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
    assert "| qat | 500.0 | 8.3 |" in text and "| **total** | 1775.1 |" in text
    for name in ("accuracy_plot", "confusion_qat", "weight_ranges_plot"):
        assert f"[{name.removesuffix('_plot').replace('_', ' ')}]({paths[name].name})" in text


def test_report_skips_missing_models_and_sections(tmp_path):
    paths = write_report(_quick_results(), tmp_path)
    text = paths["report"].read_text()
    assert "| float | 0.9313 | 0.8965 |" in text and "| QAT int8 | 0.9089 | 0.8910 |" in text
    assert "PTQ int8 |" not in text and "peer" not in text
    assert "agreement" not in text.lower() and "weight ranges" not in text.lower()
    assert "quick run" in text
    assert set(paths) == {"results", "report", "accuracy_plot", "confusion_float", "confusion_qat"}


def test_report_with_almost_nothing(tmp_path):
    paths = write_report({"command": "tfqat run", "models": {}}, tmp_path)
    assert set(paths) == {"results", "report"}
    assert "tfqat run" in paths["report"].read_text()


def test_results_json_round_trips(tmp_path):
    results = _results()
    paths = write_report(results, tmp_path)
    text = paths["results"].read_text()
    assert json.loads(text) == results
    assert text.startswith('{\n  "command"')  # indent 2


def test_results_json_converts_numpy(tmp_path):
    path = write_json_atomic({"accuracy": np.float32(0.5), "confusion": np.eye(2, dtype=np.int64)}, tmp_path / "r.json")
    assert json.loads(path.read_text()) == {"accuracy": 0.5, "confusion": [[1, 0], [0, 1]]}


def test_failed_serialization_keeps_old_results(tmp_path):
    write_report(_results(), tmp_path)
    old = (tmp_path / "results.json").read_bytes()
    bad = copy.deepcopy(_results())
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


def test_plots_are_valid_pngs(tmp_path):
    results = _results()
    _assert_png(plot_accuracy(results, tmp_path / "accuracy.png"))
    _assert_png(plot_confusion(results["models"]["qat"]["confusion"], CLASSES, tmp_path / "confusion.png", "QAT"))
    _assert_png(plot_weight_ranges(results["weight_ranges"], tmp_path / "weights.png"))


def test_plot_confusion_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        plot_confusion([[1, 2], [3, 4]], CLASSES, tmp_path / "c.png", "bad")


def test_layer_range_stats():
    stats = {s["name"]: s for s in layer_range_stats(_results()["weight_ranges"])}
    s = stats["expanded_conv_depthwise"]
    # The all-zero channel is dead: out of min and ratio. For max 40 the per-tensor step is 2**-1 (40/127 <= 0.5).
    assert (s["dead"], s["min"], s["median"], s["max"], s["ratio"]) == (1, 0.01, 3.0, 40.0, 4000.0)
    assert (s["step"], s["half_step"], s["median_levels"], s["zeroed"]) == (0.5, 0.25, 6.0, 1)
    assert stats["Conv1"]["step"] == 2.0**-5  # 2/127 > 2**-6
    assert report._weight_exponent(127 * 2.0**-6) == -6  # an exact power of two stays
    assert report._weight_exponent(0.0) == report.DEAD_EXPONENT


def test_constants_match_pow2():
    from tfqat import pow2

    assert report._WEIGHT_QMAX == pow2.WEIGHT_QMAX and report.DEAD_EXPONENT == pow2.MIN_EXPONENT
    for max_abs in (1e-3, 0.3, 2.0, 40.0, 127 * 2.0**-6, 56.4):
        assert report._weight_exponent(max_abs) == int(pow2.weight_exponent(max_abs))


def test_weight_ranges_of_mobilenet_v2():
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, include_top=False)
    # Nest it as the pipeline's classifier does, to check sub-models are searched.
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(model(inputs))
    classifier = keras.Model(inputs, keras.layers.Dense(5, name="logits")(features))

    layers = weight_ranges(classifier)["layers"]
    convs = [l for l in model.layers if type(l) is keras.layers.Conv2D]
    depthwise = [l for l in model.layers if type(l) is keras.layers.DepthwiseConv2D]
    assert (len(convs), len(depthwise)) == (35, 17)
    assert [l["name"] for l in layers] == [l.name for l in model.layers if l in convs or l in depthwise] + ["logits"]

    by_name = {l["name"]: l for l in layers}
    for layer in convs + depthwise:
        entry = by_name[layer.name]
        kernel = layer.get_weights()[0]
        if layer in depthwise:
            assert entry["kind"] == "depthwise"
            channels = kernel.shape[2] * layer.depth_multiplier
            reference = np.abs(kernel).max(axis=(0, 1)).reshape(channels)  # (in, dm) -> in * dm + m
        else:
            assert entry["kind"] == "conv"
            channels = layer.filters
            reference = np.abs(kernel).max(axis=(0, 1, 2))
        assert len(entry["channel_max_abs"]) == channels
        np.testing.assert_array_equal(np.asarray(entry["channel_max_abs"], np.float32), reference)
    assert by_name["logits"]["kind"] == "dense" and len(by_name["logits"]["channel_max_abs"]) == 5


def test_weight_ranges_depthwise_channel_order():
    # depth_multiplier 2: output channel c = in * 2 + m, so put a distinct value in each (in, m).
    layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, name="dw")
    model = keras.Sequential([keras.Input((5, 5, 3)), layer])
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    for i in range(3):
        for m in range(2):
            kernel[1, 1, i, m] = -(10 * i + m + 1)
    layer.set_weights([kernel])
    assert weight_ranges(model)["layers"] == [
        {"name": "dw", "kind": "depthwise", "channel_max_abs": [1.0, 2.0, 11.0, 12.0, 21.0, 22.0]}
    ]
