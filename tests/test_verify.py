import json
import time

import numpy as np
import pytest

import tflite_models as tm
from tfqat.tflite.litert import TFLiteModelError
from tfqat.quantization.pow2 import is_power_of_two
from tfqat.tflite.verify import report_from_details, verify_tflite


@pytest.fixture(scope="module")
def pow2_report():
    return verify_tflite(tm.pow2_int8_tflite())


def _by_role(report, role):
    return [t for t in report.tensors if t.role == role]


def test_pow2_fake_quant_model_passes(pow2_report):
    assert pow2_report.passed, pow2_report.summary()
    assert pow2_report.failures == ()
    assert "PASSED" in pow2_report.summary()


def test_converter_keeps_the_fake_quant_graph_as_is(pow2_report):
    # What the exporter relies on: the converter adds no QUANTIZE/DEQUANTIZE
    # ops, fuses relu6 into the convs and keeps one int8 tensor per fake quant.
    assert [op.op for op in pow2_report.ops] == ["CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"]
    roles = {role: len(_by_role(pow2_report, role)) for role in ("input", "output", "activation", "weight", "bias", "other")}
    assert roles == {"input": 1, "output": 1, "activation": 4, "weight": 3, "bias": 3, "other": 1}


def test_converter_keeps_every_scale_an_exact_power_of_two(pow2_report):
    expected_activation_log2 = {tm.INPUT_LOG2, tm.CONV_LOG2, tm.ADD_LOG2, tm.POOL_LOG2, tm.OUTPUT_LOG2}
    for t in pow2_report.tensors:
        if t.role == "other":
            continue
        assert t.scales and all(is_power_of_two(s) for s in t.scales), t
        assert set(t.zero_points) == {0}, t
        if t.role in ("input", "output", "activation"):
            assert int(np.log2(t.scales[0])) in expected_activation_log2
    conv_weights = next(t for t in _by_role(pow2_report, "weight") if len(t.scales) > 1)
    # Per-channel conv weights keep their own scales (the test model spreads them over 4 octaves).
    assert len(conv_weights.scales) == 8 and len(set(conv_weights.scales)) == 4
    assert conv_weights.quantized_dimension == 0


def test_bias_scales_are_exactly_input_times_weight_scale(pow2_report):
    tensors = {t.index: t for t in pow2_report.tensors}
    linear = [op for op in pow2_report.ops if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    for op in linear:
        x, w, b = (tensors[i] for i in op.inputs)
        assert b.dtype == "int32"
        np.testing.assert_array_equal(np.array(b.scales), x.scales[0] * np.array(w.scales))


def test_every_requantization_is_a_shift_except_the_named_mean(pow2_report):
    statuses = {op.op: op.status for op in pow2_report.ops}
    assert statuses == {
        "CONV_2D": "shift",
        "DEPTHWISE_CONV_2D": "shift",
        "ADD": "shift",
        "MEAN": "exception",
        "FULLY_CONNECTED": "shift",
    }
    conv = pow2_report.ops[0]
    assert len(conv.multipliers) == 8 and all(is_power_of_two(m) for m in conv.multipliers)
    (exception,) = pow2_report.exceptions
    assert "MEAN" in exception and "144" in exception


def test_calibration_data_changes_no_fake_quant_scale(pow2_report):
    # pow2_int8_tflite needs a representative dataset (see tflite_models);
    # pow2_float_io_tflite is converted without one: the int8 scales are the same.
    def quantization(report):
        return sorted((t.dtype, t.scales, t.zero_points) for t in report.tensors if t.dtype in ("int8", "int32") and t.scales)

    assert quantization(pow2_report) == quantization(verify_tflite(tm.pow2_float_io_tflite()))


def test_ptq_model_fails_naming_the_scales_that_are_not_powers_of_two():
    report = verify_tflite(tm.ptq_int8_tflite())
    assert not report.passed
    assert any("'serving_default_images:0' (input) has scale" in f and "not a power of two" in f for f in report.failures)
    assert any("(weight) has 8 of 8 per-channel scales that are not powers of two" in f for f in report.failures)
    assert any(f.startswith("op 0 CONV_2D") and "multipliers not a power of two" in f for f in report.failures)
    assert any("SOFTMAX" in e and "lookup table" in e for e in report.exceptions)
    assert "FAILED" in report.summary()


def test_float_model_fails_as_not_int8():
    report = verify_tflite(tm.float_tflite())
    assert not report.passed
    assert "tensor 0 'serving_default_images:0' (input) is float32: the model is not fully int8" in report.failures
    assert all(op.status in ("not quantized", "exception") for op in report.ops)


def test_float_io_model_fails_only_at_its_float_edges():
    report = verify_tflite(tm.pow2_float_io_tflite())
    assert report.failures == (
        "tensor 0 'serving_default_images:0' (input) is float32: the model is not fully int8",
        f"tensor {report.ops[-1].outputs[0]} 'StatefulPartitionedCall:0' (output) is float32: the model is not fully int8",
    )
    assert [op.op for op in report.ops][:: len(report.ops) - 1] == ["QUANTIZE", "DEQUANTIZE"]


def test_missing_and_non_tflite_files_raise_one_line_errors(tmp_path):
    with pytest.raises(TFLiteModelError, match="not found"):
        verify_tflite(tmp_path / "missing.tflite")
    with pytest.raises(TFLiteModelError, match="not a TFLite flatbuffer"):
        verify_tflite(tm.write(tmp_path, "garbage.tflite", b"\x00" * 64))


def test_report_round_trips_through_json(pow2_report):
    data = json.loads(json.dumps(pow2_report.to_dict()))
    assert data["passed"] is True and data["failures"] == []
    assert len(data["tensors"]) == len(pow2_report.tensors)
    assert data["ops"][0]["op"] == "CONV_2D"


def test_verbose_summary_has_the_op_table(pow2_report):
    text = pow2_report.summary(verbose=True)
    assert "2^-12..2^-9 (8 channels)" in text and "FULLY_CONNECTED" in text


def test_verify_is_fast(pow2_report):
    start = time.perf_counter()
    verify_tflite(tm.pow2_int8_tflite())
    assert time.perf_counter() - start < 1.0


# Synthetic graphs in LiteRT's detail format, for cases a converter will not produce.


def _tensor(index, dtype, shape, scales=(), zero_points=None, name=None):
    scales = np.array(scales, np.float32)
    zero_points = np.zeros(len(scales), np.int32) if zero_points is None else np.array(zero_points, np.int32)
    return {
        "index": index,
        "name": name or f"t{index}",
        "dtype": np.dtype(dtype).type,
        "shape_signature": np.array(shape, np.int32),
        "quantization_parameters": {"scales": scales, "zero_points": zero_points, "quantized_dimension": 0},
    }


def _op(index, name, inputs, outputs):
    return {"index": index, "op_name": name, "inputs": np.array(inputs), "outputs": np.array(outputs)}


def _conv_graph(bias_scales=(2.0**-14, 2.0**-13), weight_zero_points=(0, 0), weight_scales=(2.0**-7, 2.0**-6)):
    tensors = [
        _tensor(0, np.int8, [1, 4, 4, 2], [2.0**-7]),
        _tensor(1, np.int8, [2, 1, 1, 2], weight_scales, weight_zero_points),
        _tensor(2, np.int32, [2], bias_scales),
        _tensor(3, np.int8, [1, 4, 4, 2], [2.0**-4]),
    ]
    return tensors, [_op(0, "CONV_2D", [0, 1, 2], [3])]


def test_synthetic_conv_graph_passes():
    tensors, ops = _conv_graph()
    report = report_from_details(tensors, ops, [0], [3])
    assert report.passed, report.failures
    assert report.ops[0].multipliers == (2.0**-10, 2.0**-9)


def test_bias_scale_mismatch_fails():
    tensors, ops = _conv_graph(bias_scales=(2.0**-14, 2.0**-14))
    (failure,) = report_from_details(tensors, ops, [0], [3]).failures
    assert "bias scale 6.10352e-05 != input scale x weight scale 0.00012207 (channel 1)" in failure


def test_nonzero_weight_zero_point_fails():
    tensors, ops = _conv_graph(weight_zero_points=(0, 3))
    (failure,) = report_from_details(tensors, ops, [0], [3]).failures
    assert failure == "tensor 1 't1' (weight) has zero point(s) [3]: weights must have zero point 0"


def test_one_bad_channel_is_named():
    tensors, ops = _conv_graph(weight_scales=(2.0**-7, 0.01), bias_scales=(2.0**-14, 0.01 * 2.0**-7))
    failures = report_from_details(tensors, ops, [0], [3]).failures
    assert failures[0].startswith("tensor 1 't1' (weight) has 1 of 2 per-channel scales that are not powers of two (channel 1: 0.01")
    assert failures[1].startswith("tensor 2 't2' (bias) has 1 of 2 per-channel scales")
    assert failures[2].startswith("op 0 CONV_2D ('t3'): requantization 1 of 2 multipliers not a power of two")
    assert len(failures) == 3


def test_unknown_op_fails_and_lookup_table_op_is_a_named_exception():
    tensors = [_tensor(0, np.int8, [1, 4], [2.0**-4]), _tensor(1, np.int8, [1, 4], [2.0**-8], [-128]), _tensor(2, np.int8, [1, 4], [2.0**-4])]
    ops = [_op(0, "LOGISTIC", [0], [1]), _op(1, "FANCY_NEW_OP", [1], [2])]
    report = report_from_details(tensors, ops, [0], [2])
    assert report.exceptions == ("op 0 LOGISTIC ('t1'): computed with a lookup table, not a shift",)
    assert report.failures == ("op 1 FANCY_NEW_OP ('t2'): tfqat does not know this op's arithmetic, so cannot confirm it is shift-only",)


def test_mean_over_a_power_of_two_count_is_a_shift():
    tensors = [_tensor(0, np.int8, [1, 4, 4, 8], [2.0**-3]), _tensor(1, np.int32, [2]), _tensor(2, np.int8, [1, 8], [2.0**-3])]
    report = report_from_details(tensors, [_op(0, "MEAN", [0, 1], [2])], [0], [2])
    assert report.passed and report.exceptions == ()
    assert report.ops[0].status == "shift" and "16" in report.ops[0].note


def test_int8_tensor_without_quantization_fails():
    tensors = [_tensor(0, np.int8, [1, 4], [2.0**-4]), _tensor(1, np.int8, [1, 4])]
    report = report_from_details(tensors, [_op(0, "RELU", [0], [1])], [0], [1])
    assert report.failures == ("tensor 1 't1' (output) is int8 but has no quantization parameters",)


@pytest.mark.parametrize("zero_point, passes", [(0, True), (-128, True), (5, False), (-127, False)])
def test_activation_zero_point_is_zero_or_minus_128(zero_point, passes):
    tensors, ops = _conv_graph()
    tensors[3] = _tensor(3, np.int8, [1, 4, 4, 2], [2.0**-4], [zero_point])
    report = report_from_details(tensors, ops, [0], [3])
    assert report.passed == passes
    if not passes:
        assert report.failures == (
            f"tensor 3 't3' (output) has zero point(s) [{zero_point}]: fixed-point activations have zero point 0 "
            "(signed, [-128, 127] * 2^k) or -128 (unsigned, [0, 255] * 2^k)",
        )
