"""Tests for tfqat.targets and the Keras model trained for a target: it rounds as that runtime does.

The Keras model's rounding (tfqat.quantization.pow2.requantize) must equal the integer executor's
(tfqat.integer.rounding.shift_round) for every rule, and a small model quantized for a target must give
that runtime's int8 outputs bit for bit (LiteRT's builtin and reference kernels, XNNPACK, TFLite Micro).
"""

from tfqat._keras import keras

import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.integer.compare import RuntimeTensors
from tfqat.integer.rounding import shift_round
from tfqat.quantization import pow2
from tfqat.quantization.options import QuantizeOptions
from tfqat.quantization.quantizers import Pow2ActivationQuantizer
from tfqat.quantization.tensors import quantized_tensors
from tfqat.targets import RULES, TARGETS, LaneSplit, single_rule, target_named
from tfqat.tflite import export, litert

layers = keras.layers
SIZE = 8  # 8x8 feature maps: MEAN over 4x4 = 16 values after the stride-2 conv, a shift


@pytest.mark.parametrize("rule", [*RULES, LaneSplit("double_half_up", 8, "tflite_double")], ids=str)
def test_keras_rounding_equals_the_integer_executors_for_every_rule(rule):
    rng = np.random.default_rng(0)
    channels = 12  # 8 vector channels and 4 left over for the LaneSplit
    n = rng.integers(0, 9, channels)  # one shift per channel, some 0 (exact)
    ties = (rng.integers(-40, 40, (64, channels)) * 2 + 1) * (1 << np.maximum(n, 1)) // 2  # exact halves
    accumulators = np.concatenate([rng.integers(-5000, 5000, (256, channels)), ties]).astype(np.int64)
    accumulator_exponent = -10.0 - n
    got = pow2.requantize(
        tf.constant(accumulators * 2.0 ** accumulator_exponent, tf.float32),
        tf.constant(accumulator_exponent, tf.float32), tf.constant(-10.0), rule,
    ).numpy()
    np.testing.assert_array_equal(got / 2.0**-10, shift_round(accumulators, n, rule))


@pytest.mark.parametrize("rule", ["half_away_from_zero", "half_up", "half_even"])
def test_single_roundings_of_real_values(rule):
    values = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -2.4, 2.6, 3.0], np.float32)
    expected = {
        "half_away_from_zero": [-3, -2, -1, 1, 2, 3, -2, 3, 3],
        "half_up": [-2, -1, 0, 1, 2, 3, -2, 3, 3],
        "half_even": [-2, -2, 0, 0, 2, 2, -2, 3, 3],
    }[rule]
    np.testing.assert_array_equal(pow2.round_ties(tf.constant(values), rule).numpy(), expected)


def test_targets_name_their_rules_and_refuse_unknown_names():
    for target in TARGETS.values():
        for op in ("*", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MEAN"):
            assert single_rule(target.rule(op)) in ("half_away_from_zero", "half_up", "half_even")
    with pytest.raises(ValueError, match=r"target='cmsis' is not one of \['builtin'"):
        target_named("cmsis")
    with pytest.raises(ValueError, match="target='tpu'"):
        QuantizeOptions(target="tpu")
    with pytest.raises(ValueError, match="target='tpu'"):
        tfqat.quantize_model(_model(), target="tpu")


def test_configs_record_their_target_and_old_ones_read_as_the_builtin_kernels():
    """The default target is XNNPACK; a config saved before configs recorded their target was made for the
    builtin kernels (the only target then) and must keep rounding so."""
    from tfqat.quantization.configs import KernelQuantizeConfig, OutputQuantizeConfig
    from tfqat.quantization.thresholds import TQTActivationQuantizer
    from tfqat.targets import DEFAULT_TARGET, SAVED_WITHOUT_TARGET

    assert (DEFAULT_TARGET, SAVED_WITHOUT_TARGET) == ("xnnpack", "builtin")
    for made in (Pow2ActivationQuantizer(), TQTActivationQuantizer(), OutputQuantizeConfig(), KernelQuantizeConfig()):
        config = made.get_config()
        assert config["target"] == "xnnpack" and type(made).from_config(config) == made
        old = type(made).from_config({k: v for k, v in config.items() if k != "target"})
        assert old.get_config()["target"] == "builtin" and old != made


def _model(size=SIZE):
    """Conv + ReLU6, depthwise, residual Add, a product (MUL), MEAN over (size / 2)**2 and a Dense: the ops
    whose rounding targets differ on."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, 3))
    # 20 channels: DEPTHWISE_CONV_2D's and MEAN's vector loops (8 and 16 lanes) and their leftover channels.
    x = layers.ReLU(6.0)(layers.Conv2D(20, 3, strides=2, padding="same")(inputs))
    y = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.Add()([x, y])
    gate = layers.Conv2D(20, 1, activation="sigmoid")(x)
    x = layers.Multiply()([x, gate])
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(5)(x))


def _images(n, seed, size=SIZE):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _mismatches(target, runtime, tmp_path, size=SIZE, unsigned=False) -> int:
    """Output elements where a small model quantized for `target` and run on `runtime` differs from Keras."""
    qat = tfqat.quantize_model(_model(size), target=target, unsigned_activations=unsigned)
    tfqat.calibrate(qat, _images(64, 1, size))
    assert {t.quantizer.target for t in quantized_tensors(qat) if isinstance(t.quantizer, Pow2ActivationQuantizer)} == {target}
    got, keras_steps = _runtime_and_keras_steps(qat, tmp_path / f"{target}.tflite", runtime, _images(48, 2, size))
    return int(np.count_nonzero(got != keras_steps))


def _runtime_and_keras_steps(qat, path, runtime, images):
    """The int8 outputs of the QAT model's export run by `runtime`, and the Keras model's, in output steps."""
    path = tfqat.export_tflite(qat, path)
    io = litert.describe(path)
    keras_steps = np.round(qat.predict(images, verbose=0) / io.outputs[0].scale) + io.outputs[0].zero_point
    runner, output = RuntimeTensors(path, runtime), _output_index(path)
    got = np.concatenate([runner.run([litert.quantize(i[None], io.inputs[0])], [output])[output] for i in images])
    return got.reshape(keras_steps.shape), keras_steps


@pytest.mark.parametrize("target", ["builtin", "reference", "xnnpack", "micro"])
def test_a_model_quantized_for_a_target_is_bit_exact_with_its_runtime(target, tmp_path):
    assert _mismatches(target, TARGETS[target].runtime, tmp_path) == 0
    assert export.read_target_metadata((tmp_path / f"{target}.tflite").read_bytes()) == target


def test_a_model_quantized_for_another_runtime_is_not(tmp_path):
    """The targets matter: the builtin kernels' model run by XNNPACK or the reference kernels differs."""
    assert _mismatches("builtin", "xnnpack", tmp_path) > 0
    assert _mismatches("builtin", "reference", tmp_path) > 0


def _output_index(path) -> int:
    interpreter = litert.load_interpreter(path)
    return interpreter.get_output_details()[0]["index"]


@pytest.mark.parametrize("unsigned", [False, True], ids=["signed", "unsigned"])
@pytest.mark.parametrize("target", ["builtin", "reference", "xnnpack", "micro"])
def test_a_mean_over_a_count_that_is_not_a_power_of_two_is_bit_exact(target, unsigned, tmp_path):
    """Global average pooling over 3x3 = 9 values (49 at 224 px): a Q31 multiplier on LiteRT's kernels and
    TFLite Micro, a float32 scale on XNNPACK; not a shift."""
    assert _mismatches(target, TARGETS[target].runtime, tmp_path, size=6, unsigned=unsigned) == 0


@pytest.mark.parametrize("unsigned", [False, True], ids=["signed", "unsigned"])
def test_the_two_mean_arithmetics_differ_on_this_model(unsigned, tmp_path):
    """Non-vacuity of the test above: the model quantized for the Q31 MEAN (builtin) run by XNNPACK differs."""
    assert _mismatches("builtin", "xnnpack", tmp_path, size=6, unsigned=unsigned) > 0


def test_mean_requantize_is_tflites_multiplier_arithmetic():
    from tfqat import fixedpoint as fp

    rng = np.random.default_rng(5)
    for count, input_exponent, exponent in [(9, -7, -6), (49, -5, -5), (49, -6, -3), (25, -4, -7)]:
        totals = rng.integers(-128 * count, 128 * count, 500)
        totals[:4] = [count // 2, -(count // 2), 3 * count // 2, 0]
        multiplier, shift = fp.quantize_multiplier(2.0 ** (input_exponent - exponent))
        extra = min(count.bit_length() - 1, 32, 31 + shift)
        expected = fp.multiply_by_quantized_multiplier(totals, (multiplier << extra) // count, shift - extra)
        means = tf.constant(totals * 2.0**input_exponent / count, tf.float32)
        got = pow2.mean_requantize(means, tf.constant(float(input_exponent)), tf.constant(float(exponent)), count)
        np.testing.assert_array_equal(got.numpy() / 2.0**exponent, expected)


def test_float32_mean_requantize_is_the_executors_xnnpack_mean():
    from tfqat.integer import named
    from tfqat.integer.model import Operator, Tensor

    rng, differ = np.random.default_rng(6), 0
    for count, input_exponent, exponent, in_zero, out_zero in [(9, -7, -6, 0, 0), (49, -5, -5, -128, -128),
                                                               (49, -6, -3, -128, 0), (25, -4, -7, 0, -128)]:
        raw = rng.integers(-128, 128, (300, count, 1, 1))
        raw[:3] = in_zero  # all-zero inputs
        x_t = Tensor(0, "x", np.dtype(np.int8), (1, count, 1, 1), (2.0**input_exponent,), (in_zero,), 0)
        out = Tensor(2, "y", np.dtype(np.int8), (1, 1, 1, 1), (2.0**exponent,), (out_zero,), 0)
        op = Operator(0, "MEAN", (0, 1), (2,), {"keepDims": True})
        expected = named.mean(op, [x_t, None, out], [raw, np.array([1, 2])], "xnnpack").ravel()
        means = tf.constant((raw - in_zero).sum(axis=(1, 2, 3)) * 2.0**input_exponent / count, tf.float32)
        got = pow2.mean_requantize(means, tf.constant(float(input_exponent)), tf.constant(float(exponent)), count,
                                   "float32", float(in_zero), float(out_zero))
        np.testing.assert_array_equal(np.clip(got.numpy() / 2.0**exponent + out_zero, -128, 127), expected)
        differ += np.count_nonzero(expected != named.mean(op, [x_t, None, out], [raw, np.array([1, 2])], "litert").ravel())
    assert differ > 0  # the two arithmetics round differently


@pytest.mark.parametrize("keepdims", [False, True], ids=["drops_dims", "keeps_dims"])
@pytest.mark.parametrize("target", ["builtin", "reference", "micro"])
def test_a_mean_of_signed_values_rounds_as_its_runtimes_mean_kernel(target, keepdims, tmp_path):
    """LiteRT's builtin kernels run their optimized MEAN (16-channel groups rounded half up) only for a MEAN
    that keeps its dimensions; global average pooling that drops them runs the reference kernel. Signed
    inputs over 40 channels tell the two apart (non-negative ones round alike)."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(40, 3, strides=2, padding="same")(inputs)
    x = layers.GlobalAveragePooling2D(keepdims=keepdims)(x)
    model = keras.Model(inputs, layers.Dense(5)(layers.Flatten()(x)))
    qat = tfqat.quantize_model(model, target=target)
    tfqat.calibrate(qat, _images(64, 1))
    got, keras_steps = _runtime_and_keras_steps(qat, tmp_path / "mean.tflite", TARGETS[target].runtime, _images(48, 2))
    np.testing.assert_array_equal(got, keras_steps)


def test_retarget_keeps_the_weights_and_rounds_as_the_new_runtime(tmp_path):
    """A model calibrated for the builtin kernels, retargeted to XNNPACK, is bit-exact with XNNPACK."""
    qat = tfqat.quantize_model(_model(6), target="builtin", unsigned_activations=True)
    tfqat.calibrate(qat, _images(64, 1, 6))
    moved = tfqat.retarget(qat, "xnnpack")
    assert {t.quantizer.target for t in quantized_tensors(moved) if isinstance(t.quantizer, Pow2ActivationQuantizer)} == {"xnnpack"}
    assert all(np.array_equal(a, b) for a, b in zip(qat.get_weights(), moved.get_weights()))
    got, keras_steps = _runtime_and_keras_steps(moved, tmp_path / "moved.tflite", "xnnpack", _images(48, 2, 6))
    np.testing.assert_array_equal(got, keras_steps)
    assert export.read_target_metadata((tmp_path / "moved.tflite").read_bytes()) == "xnnpack"
    assert export.convert_int8(qat) == export.convert_int8(moved)  # the same int8 file
    with pytest.raises(ValueError, match="target='esp'"):
        tfqat.retarget(qat, "esp")


@pytest.mark.parametrize("target", ["xnnpack", "half_even", "builtin"])
def test_the_model_input_rounds_as_the_image_contract_for_every_target(target):
    """The int8 input is quantized before the runtime sees it (litert.quantize: half away from zero), so the
    input quantizer rounds ties so under every target, half-to-even ones included."""
    qat = tfqat.quantize_model(_model(), target=target)
    tfqat.calibrate(qat, _images(64, 1))
    [spec_scale] = {2.0 ** float(t.quantizer.exponent(t.variables)) for t in quantized_tensors(qat) if t.role == "input"}
    ties = (np.arange(-40, 40) + 0.5).astype(np.float32) * np.float32(spec_scale)  # every value halfway
    images = np.resize(ties, (1, SIZE, SIZE, 3)).astype(np.float32)
    first = keras.Model(qat.inputs, qat.layers[1].output)
    got = first.predict(images, verbose=0) / spec_scale
    np.testing.assert_array_equal(got, np.trunc(images / spec_scale + np.copysign(0.5, images)))
