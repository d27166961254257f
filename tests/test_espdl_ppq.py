"""tfqat's .espdl files checked with Espressif's own tools (esp-ppq, its CPU executor and the flatbuffer readers
it generated from Espressif's schema): (a) the file tfqat writes equals, in every node, attribute, initializer,
exponent, byte and variable, the file esp-ppq writes for the same float graph with tfqat's exponents imposed;
(b) esp-ppq's executor in the chip's mode computes tfqat's integer reference's int8 outputs; (c) the file parses
with Espressif's readers and its embedded test values are the reference's. Skipped without esp-ppq (the
`espdl` extra; CI installs it)."""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="esp-ppq needs torch (CPU build): pip install torch==2.13.0")
pytest.importorskip("onnx", reason="esp-ppq needs onnx: pip install -e '.[espdl]'")
pytest.importorskip("esp_ppq", reason="Espressif's esp-ppq is not installed: pip install -e '.[espdl]'")

import tfqat  # noqa: E402
from tfqat.espdl.convert import to_espdl  # noqa: E402
from tfqat.espdl.export import export_espdl  # noqa: E402
from tfqat.integer.executor import IntegerModel  # noqa: E402
from tfqat.integer.model import read_graph  # noqa: E402
from tfqat.tflite import litert  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import applications  # noqa: E402
import espdl_ppq  # noqa: E402
import sweeps  # noqa: E402
from test_espdl import images, small_model  # noqa: E402

CASES = {  # name -> (chip, per_channel, network or None for the small model, image size)
    "small-s3": ("esp32s3", False, None, 6),
    "small-p4": ("esp32p4", False, None, 6),
    "small-p4-per-channel": ("esp32p4", True, None, 6),
    "mobilenetv2-s3": ("esp32s3", False, "MobileNetV2", 64),
    "mobilenetv2-p4-per-channel": ("esp32p4", True, "MobileNetV2", 64),
    "mobilenet-p4": ("esp32p4", False, "MobileNet", 64),  # a reshape after the classifier conv
    "resnet50-s3": ("esp32s3", False, "ResNet50", 64),  # zero padding folded, max pool, Add then ReLU
    "densenet121-p4": ("esp32p4", False, "DenseNet121", 32),  # concatenations, average pools
    "mobilenetv3small-s3": ("esp32s3", False, "MobileNetV3Small", 64),  # hard-swish: Add 3, Clip, Mul; SE gates
    "efficientnetb0-s3": ("esp32s3", False, "EfficientNetB0", 32),  # swish: Sigmoid at 2^-7 and Mul; SE gates
}


def _model(network, size, whole):
    if network is None:
        return small_model(size), (-1.0, 1.0)
    from tfqat._keras import keras

    build, _, value_range = sweeps.network(network, whole)
    keras.utils.set_random_seed(0)
    model = build(size, classifier_activation=None)
    applications.randomize_batch_norms(model)
    applications.sharpen_head(model)
    return model, value_range


# MobileNetV2's ops on ESP32-S3 are the small model's and ResNet50's there; that case runs with --all-applications,
# and so do ResNet50 and DenseNet121 whole (the default run cuts them after their first stages: tests/sweeps.py;
# benchmarks/espdl_check.py --applications checks every network whole on both chips).
@pytest.fixture(scope="module", params=sweeps.cases(CASES, left_out={"mobilenetv2-s3"}))
def case(request, tmp_path_factory):
    chip, per_channel, network, size = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    model, (low, high) = _model(network, size, request.config.getoption("--all-applications"))
    qat = tfqat.quantize_model(model, target=chip, per_channel=per_channel)
    rng = np.random.default_rng(1)
    tfqat.calibrate(qat, rng.uniform(low, high, (32, size, size, 3)).astype(np.float32))
    tflite = tfqat.export_tflite(qat, folder / "model.tflite")
    ours = export_espdl(tflite, folder / "tfqat.espdl")
    run = espdl_ppq.PPQRun(to_espdl(read_graph(tflite), chip, name="tfqat"), chip, folder)
    float_inputs = rng.uniform(low, high, (4, size, size, 3)).astype(np.float32)
    io = litert.describe(tflite)
    keras_steps = np.round(qat(float_inputs, training=False).numpy() / io.outputs[0].scale) + io.outputs[0].zero_point
    return chip, tflite, ours, run, litert.quantize(float_inputs, io.inputs[0]), keras_steps


def test_the_keras_model_for_the_chip_computes_the_integer_reference(case):
    chip, tflite, _, _, inputs, keras_steps = case
    reference = IntegerModel(tflite, ties=chip).run(inputs).outputs[0]
    assert np.array_equal(reference.reshape(keras_steps.shape), keras_steps)


def test_a_tfqat_file_means_what_esp_ppqs_file_means(case):
    chip, _, ours, run, _, _ = case
    theirs = run.export(ours.test_input[None])
    assert espdl_ppq.differences(espdl_ppq.decode(ours.path), espdl_ppq.decode(theirs)) == []


def test_esp_ppqs_executor_computes_the_integer_reference(case):
    chip, tflite, _, run, inputs, _ = case
    reference = IntegerModel(tflite, ties=chip).run(inputs).outputs[0]
    got = np.stack([outputs[0][0] for outputs in run.run(inputs)])
    assert np.array_equal(got, reference.reshape(got.shape))


def test_the_file_parses_with_espressifs_readers_and_checks_itself(case):
    chip, tflite, ours, _, _, _ = case
    decoded = espdl_ppq.decode(ours.path)
    assert decoded["metadata"]["target"] == chip and decoded["ir_version"] == 7
    [test_input] = decoded["test_inputs"].values()
    [test_output] = decoded["test_outputs"].values()
    assert test_input["dims"] == tuple(read_graph(tflite).tensors[read_graph(tflite).inputs[0]].shape)
    reference = IntegerModel(tflite, ties=chip).run(test_input["values"].reshape(test_input["dims"])).outputs[0]
    assert np.array_equal(test_output["values"], reference.reshape(-1))
    for tensor in decoded["initializers"].values():
        assert tensor["offset"] % 16 == 0  # read in place from flash


def test_the_comparison_sees_a_changed_byte_and_the_other_chips_rounding(tmp_path):
    """Non-vacuity: one weight changed is a difference; esp-ppq's executor in ESP32-P4's mode differs from the
    ESP32-S3 reference of the same file (ties round otherwise)."""
    qat = tfqat.quantize_model(small_model(), target="esp32s3")
    tfqat.calibrate(qat, images(64, 1))
    tflite = tfqat.export_tflite(qat, tmp_path / "s3.tflite")
    ours = export_espdl(tflite, tmp_path / "s3.espdl")
    model = to_espdl(read_graph(tflite), "esp32s3", name="tfqat")
    decoded = espdl_ppq.decode(ours.path)
    changed = {**decoded, "initializers": dict(decoded["initializers"])}
    name = next(n for n, t in decoded["initializers"].items() if "layout" in (t["doc"] or ""))
    values = decoded["initializers"][name]["values"].copy()
    values[0] = values[0] + 1 if values[0] < 127 else values[0] - 1
    changed["initializers"][name] = {**decoded["initializers"][name], "values": values}
    assert any("values differ" in line for line in espdl_ppq.differences(changed, decoded))
    inputs = litert.quantize(images(32, 5), litert.describe(tflite).inputs[0])
    p4 = espdl_ppq.PPQRun(model, "esp32p4", tmp_path)
    got = np.stack([outputs[0][0] for outputs in p4.run(inputs)])
    reference = IntegerModel(tflite, ties="esp32s3").run(inputs).outputs[0]
    assert np.count_nonzero(got != reference.reshape(got.shape)) > 0
