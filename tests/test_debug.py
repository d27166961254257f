"""The per-layer debugger: its math on hand-made arrays, then a tiny exported MobileNetV2 end to end."""

import csv
import math

import numpy as np
import pytest

import tfqat
from tfqat._keras import keras
from tfqat.tflite import litert
from tfqat.tflite.debug import debug_models, keras_layer_name
from tfqat.tflite.debug_report import COLUMNS, DebugReport
from tfqat.tflite.quant_error import WEIGHT_RANGE, clipped_fraction, scale_exponents, sqnr_db, zeroed_fraction

import tflite_models as tm

SIZE = 32


# Math.


def test_sqnr_of_identical_arrays_is_infinite():
    f = np.array([1.0, -2.0, 3.0], np.float32)
    assert sqnr_db(f, f) == math.inf
    assert sqnr_db(np.zeros(3), np.zeros(3)) == math.inf  # nothing to lose, nothing lost
    assert sqnr_db(np.zeros(3), [0.0, 0.1, 0.0]) == -math.inf


def test_sqnr_equals_the_hand_computed_value():
    f = np.array([1.0, 2.0, 3.0, 4.0])
    assert sqnr_db(f, f + 0.1) == pytest.approx(10 * math.log10(30 / 0.04), rel=1e-12)
    assert sqnr_db(f, f * [1.1, 0.9, 1.1, 0.9]) == pytest.approx(10 * math.log10(30 / 0.30), rel=1e-12)


def test_clipped_fraction_counts_values_that_round_outside_the_grid():
    # Signed, scale 1: [-128, 127]; within half a step of the end a value only rounds (ties away from zero).
    values = [-129.0, -128.5, -128.4, 0.0, 127.4, 127.5, 200.0]
    assert clipped_fraction(values, 1.0) == 4 / 7
    # Unsigned (zero point -128), scale 0.5: the grid spans [0, 127.5].
    assert clipped_fraction([-0.3, -0.2, 127.7, 127.75], 0.5, zero_point=-128) == 2 / 4
    # Per-channel weights: one scale per row broadcasts; the weight grid is [-127, 127].
    weights = np.array([[127.4, 127.5, 0.0], [254.0, 256.0, -255.0]])
    assert clipped_fraction(weights, np.array([[1.0], [2.0]]), qrange=WEIGHT_RANGE) == 3 / 6


def test_zeroed_fraction_counts_nonzero_values_held_as_the_zero_point():
    reference = [0.0, 0.1, 0.3, -0.2, 1.0]
    assert zeroed_fraction(reference, [0, 0, 1, 0, 4]) == 2 / 4  # the float zero does not count
    assert zeroed_fraction(reference, [-128, -128, -127, -128, -124], zero_point=-128) == 2 / 4
    assert zeroed_fraction([0.0, 0.0], [0, 0]) == 0.0


def test_scale_exponents_are_exact_ints_for_powers_of_two():
    assert scale_exponents([2.0**-7]) == (-7, -7, True)
    assert scale_exponents([2.0**-9, 2.0**-6, 2.0**-8]) == (-9, -6, True)
    low, high, exact = scale_exponents([0.01])
    assert not exact and low == high == pytest.approx(math.log2(0.01))


def test_keras_layer_name_reads_converter_tensor_names():
    layers = {"block_1_expand", "block_1_expand_relu", "block_1_pad", "block_1_depthwise_relu", "dense", "conv"}
    name = keras_layer_name
    # The first ';'-joined part names the op whose result the tensor holds: a fused ReLU6 here.
    assert name("m/quant_block_1_expand_relu/Relu6;m/quant_block_1_expand/Conv2D", layers) == "block_1_expand_relu"
    assert name("m/quant_block_1_expand/Conv2D;m/quant_block_1_expand/FakeQuant", layers) == "block_1_expand"
    fused_pad = "m/quant_block_1_depthwise_relu/Relu6;m/quant_block_1_depthwise/depthwise;m/quant_block_1_pad/Pad"
    assert name(fused_pad, layers) == "block_1_depthwise_relu"
    assert name("tiny_float/conv/Relu6;tiny_float/conv/BiasAdd", layers) == "conv"  # the converter's own PTQ
    assert name("m/quant_dense/MatMul1", layers) == "dense"
    assert name("model/quantize_layer/FakeQuantWithMinMaxVars", layers) is None
    assert name("StatefulPartitionedCall:0", layers) is None


def test_report_of_an_exact_tensor_says_inf():
    row = dict(zip(COLUMNS, ("activation", 0, "ADD", "add", "t", -4, -4, 1, True, 0, 0.0, 0.0, math.inf)))
    worse = {**row, "op_index": 1, "layer": "worse", "sqnr_db": 20.0}
    report = DebugReport(rows=[row, worse], images=1)
    assert report.worst(2) == [worse, row]
    assert "| 0 | add | ADD | 2^-4 | 0.00 % | 0.00 % | inf |" in report.to_markdown()


def test_largest_drops_name_where_the_error_enters():
    base = dict(zip(COLUMNS, ("activation", 0, "CONV_2D", "a", "t", -4, -4, 1, True, 0, 0.0, 0.0, 40.0)))
    rows = [base, {**base, "layer": "dw", "op": "DEPTHWISE_CONV_2D", "sqnr_db": 12.0},
            {**base, "layer": "project", "sqnr_db": 9.0}, {**base, "layer": "exact", "sqnr_db": math.inf}]
    drops = DebugReport(rows=rows, images=1).worst_drops(5)
    assert [(row["layer"], row["drop_db"]) for row in drops] == [("dw", 28.0), ("project", 3.0)]  # inf is no drop


# A tiny tfqat model, exported.


@pytest.fixture(scope="module")
def debugged(tmp_path_factory):
    """A calibrated (untrained) tfqat MobileNetV2 at 32 px, exported, debugged on 16 images."""
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).uniform(-1, 1, (32, SIZE, SIZE, 3)).astype(np.float32)
    base = keras.applications.MobileNetV2(
        alpha=0.35, input_shape=(SIZE, SIZE, 3), weights=None, include_top=False, pooling="avg"
    )
    float_model = keras.Model(base.input, keras.layers.Dense(5, name="dense")(base.output))
    # With its initial BN statistics a random MobileNetV2's activations shrink below 2**-24 in the
    # deep blocks and the int8 tensors are all zero there; batch statistics keep every layer near
    # unit scale, as a trained network's are.
    for layer in float_model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    float_model(images, training=True)
    qat = tfqat.quantize_model(float_model)
    tfqat.calibrate(qat, images)
    path = tfqat.export_tflite(qat, tmp_path_factory.mktemp("debug") / "model.tflite")
    sample = np.random.default_rng(1).uniform(-1, 1, (20, SIZE, SIZE, 3)).astype(np.float32)
    report = debug_models(float_model, path, sample, max_images=16)
    return float_model, path, sample[:16], report


def _convs(model):
    folded = tfqat.fold_batch_norms(model)
    return [layer for layer in folded.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]


def test_report_covers_every_conv_and_depthwise_layer(debugged):
    float_model, _, _, report = debugged
    convs = _convs(float_model)
    assert report.unmatched == () and report.images == 16
    assert {row["layer"] for row in report.weights} == {layer.name for layer in convs} | {"dense"}
    linear_outputs = [row for row in report.activations if row["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(linear_outputs) == len(convs)
    depthwise = {layer.name for layer in convs if isinstance(layer, keras.layers.DepthwiseConv2D)}
    # A conv with its ReLU6 fused holds the ReLU's output.
    assert {row["layer"] for row in linear_outputs if row["op"] == "DEPTHWISE_CONV_2D"} == {
        f"{name}_relu" for name in depthwise
    }


def test_every_scale_is_a_power_of_two(debugged):
    _, path, _, report = debugged
    for row in report.rows:
        assert row["power_of_two"] and isinstance(row["scale_exp"], int), row
        assert row["zero_point"] == 0
    io = litert.describe(path)
    assert 2.0 ** report.rows[0]["scale_exp"] == io.inputs[0].scale
    assert 2.0 ** report.activations[-1]["scale_exp"] == io.outputs[0].scale


def test_sqnrs_are_finite_and_positive(debugged):
    *_, report = debugged
    assert all(math.isfinite(row["sqnr_db"]) and row["sqnr_db"] > 0 for row in report.rows)
    # An untrained model's kernels are tfqat's own rounding of the folded float kernels: fine.
    assert min(row["sqnr_db"] for row in report.weights) > 30


def test_rows_are_in_execution_order(debugged):
    *_, report = debugged
    order = [row["op_index"] for row in report.rows]
    assert order == sorted(order)
    activation_order = [row["op_index"] for row in report.activations]
    assert activation_order == sorted(set(activation_order))
    ops = [row["op"] for row in report.activations]
    assert ops[:3] == ["INPUT", "CONV_2D", "DEPTHWISE_CONV_2D"] and ops[-2:] == ["MEAN", "FULLY_CONNECTED"]
    names = [row["layer"] for row in report.activations]
    assert names.index("block_1_expand_relu") < names.index("block_2_add") < names.index("block_16_project")


def test_first_and_last_rows_match_independent_computations(debugged):
    float_model, path, images, report = debugged
    spec = litert.describe(path).inputs[0]
    assert report.rows[0]["sqnr_db"] == pytest.approx(
        sqnr_db(images, litert.dequantize(litert.quantize(images, spec), spec)), rel=1e-9
    )
    # The logits through both models end to end (the debugger runs the BN-folded model: 1e-6 apart), on the
    # kernels the debugger reads: LiteRT's builtin ones, since XNNPACK (this file's target) hides every tensor.
    logits_sqnr = sqnr_db(float_model.predict(images, verbose=0), litert.predict(path, images, kernels="builtin"))
    assert report.activations[-1]["sqnr_db"] == pytest.approx(logits_sqnr, rel=1e-4)


def test_weight_row_matches_rounding_the_folded_kernel(debugged):
    float_model, _, _, report = debugged
    row = next(row for row in report.weights if row["layer"] == "Conv1")
    kernel = tfqat.fold_batch_norms(float_model).get_layer("Conv1").kernel.numpy()
    scale = 2.0 ** row["scale_exp"]
    rounded = np.clip(np.round(kernel / scale), *WEIGHT_RANGE) * scale
    assert row["sqnr_db"] == pytest.approx(sqnr_db(kernel, rounded), rel=1e-6)


def test_worst_markdown_csv_and_plot(debugged, tmp_path):
    *_, report = debugged
    worst = report.worst(3)
    assert len(worst) == 3 and all(row["kind"] == "activation" for row in worst)
    assert [row["sqnr_db"] for row in worst] == sorted(row["sqnr_db"] for row in report.activations)[:3]
    text = report.to_markdown()
    assert "## Activations" in text and "## Weights" in text and "0 tensors unmatched" in text
    assert "| block_1_depthwise_relu | DEPTHWISE_CONV_2D | 2^" in text
    with report.to_csv(tmp_path / "debug.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(report.rows) and tuple(rows[0]) == COLUMNS
    assert float(rows[5]["sqnr_db"]) == pytest.approx(report.rows[5]["sqnr_db"])
    png = report.plot(tmp_path / "debug.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


# Bad input.


def test_float_tflite_is_refused(debugged):
    float_model, _, images, _ = debugged
    with pytest.raises(ValueError, match="float32 input, so it is not a fully int8 model"):
        debug_models(float_model, tm.float_tflite(), images)


def test_images_of_the_wrong_shape_are_refused(debugged):
    float_model, path, images, _ = debugged
    with pytest.raises(ValueError, match=r"images of shape \(16, 16, 16, 3\) do not fit the model input"):
        debug_models(float_model, path, images[:, :16, :16])
    with pytest.raises(ValueError, match="images must be float"):
        debug_models(float_model, path, (images * 100).astype(np.int32))
    with pytest.raises(ValueError, match="images is empty"):
        debug_models(float_model, path, images[:0])


def test_wrong_models_are_refused(debugged, tmp_path):
    float_model, path, images, _ = debugged
    with pytest.raises(ValueError, match="takes inputs of shape"):
        debug_models(tm.tiny_float_keras_model(), path, images)
    with pytest.raises(ValueError, match="is a quantized model"):
        debug_models(tfqat.quantize_model(float_model), path, images)
    with pytest.raises(ValueError, match="not found"):
        debug_models(float_model, tmp_path / "missing.tflite", images)
    with pytest.raises(ValueError, match="max_images=0"):
        debug_models(float_model, path, images, max_images=0)
