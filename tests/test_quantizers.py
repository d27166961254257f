"""Tests for tfqat.quantization.quantizers: power-of-two weight and activation quantizers."""

import math

from tfqat._keras import keras

import numpy as np
import pytest
import tensorflow as tf

from tfqat.quantization import pow2
from tfqat.quantization.modes import COLLECTING_RANGES, EXPORTING, collecting_ranges, is_in, tracing_for_export
from tfqat.quantization.quantizers import Pow2ActivationQuantizer, Pow2BiasQuantizer, Pow2WeightQuantizer

from references import fake_quant_reference, reference_weight_exponent

# Kernel shapes of each layer kind: Conv2D (h, w, in, out), DepthwiseConv2D (h, w, in, dm), Dense (in, out).
KERNEL_SHAPES = {
    "conv": (3, 3, 4, 6),
    "depthwise": (3, 3, 5, 2),
    "dense": (7, 5),
}


def round_half_away(x):
    """std::round, exact in float64 for float32 inputs."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def litert_fake_quant_reference(x, scale):
    """LiteRT's int8 activations: round half away from zero onto 2**k, then saturate to [-128, 127]."""
    scale = np.float64(scale)
    steps = np.clip(round_half_away(np.asarray(x, np.float32).astype(np.float64) / scale), -128, 127)
    return (steps * scale).astype(np.float32)


def litert_requantize_reference(acc, n: int):
    """LiteRT's requantization of integer accumulators by 2**-n: acc/2 rounded half up, then a rounding shift."""
    acc = np.asarray(acc, np.float64)
    if n <= 0:
        return acc * 2.0**-n
    return np.floor(np.floor(acc / 2 + 0.5) / 2.0 ** (n - 1) + 0.5)


def channel_scales(kernel: np.ndarray, kind: str) -> np.ndarray:
    """Numpy reference: 2**k per output channel, shaped to broadcast against the kernel.

    Conv2D/Dense channels are the last axis; DepthwiseConv2D output channel
    in * depth_multiplier + m is kernel[:, :, in, m] (TFLite's layout).
    """
    if kind == "depthwise":
        h, w, channels_in, multiplier = kernel.shape
        scales = np.empty((channels_in, multiplier))
        for i in range(channels_in):
            for m in range(multiplier):
                scales[i, m] = 2.0 ** reference_weight_exponent(float(np.abs(kernel[:, :, i, m]).max()))
        return scales.reshape(1, 1, channels_in, multiplier)
    flat = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)
    return np.array([2.0 ** reference_weight_exponent(float(m)) for m in flat])


def spread_kernel(shape, seed) -> np.ndarray:
    """Random kernel whose output channels have very different magnitudes (so a wrong axis shows)."""
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=shape)
    channels = int(np.prod(shape[2:])) if len(shape) == 4 else shape[-1]
    magnitudes = 2.0 ** (rng.permutation(channels) - channels / 2) * rng.uniform(0.6, 1.4, channels)
    return (kernel * magnitudes.reshape(shape[2:] if len(shape) == 4 else shape[-1:])).astype(np.float32)


def _is_pow2_frexp(values) -> bool:
    return all(v > 0 and math.frexp(float(v))[0] == 0.5 for v in np.ravel(values))


class _Owner(keras.layers.Layer):
    """A bare layer to own quantizer variables, as QuantizeWrapper/QuantizeLayer do."""


def built_activation_quantizer(ema_decay=0.9, target="builtin"):
    """A quantizer for LiteRT's builtin kernels: an activation not linked to an accumulator rounds once, ties
    away from zero (the rounding these tests pin down; tests/test_targets.py covers the other targets)."""
    quantizer = Pow2ActivationQuantizer(ema_decay, target=target)
    weights = quantizer.build(tf.TensorShape([None, 4]), "act", _Owner())
    return quantizer, weights


def range_of(weights):
    return float(weights["min_var"].numpy()), float(weights["max_var"].numpy())


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("kind", sorted(KERNEL_SHAPES))
def test_weight_quantizer_per_tensor(kind):
    kernel = spread_kernel(KERNEL_SHAPES[kind], seed=1)
    quantizer = Pow2WeightQuantizer(per_channel=False, kind=kind)
    k = reference_weight_exponent(float(np.abs(kernel).max()))
    assert quantizer.exponent(kernel).numpy() == k
    out = quantizer(tf.constant(kernel), training=True, weights={}).numpy()
    np.testing.assert_array_equal(out, fake_quant_reference(kernel, 2.0**k, -127, 127))
    steps = out / 2.0**k
    np.testing.assert_array_equal(steps, np.round(steps))
    assert np.abs(steps).max() <= 127
    assert np.abs(steps).max() > 63  # best precision: the largest weight uses the top bit


@pytest.mark.parametrize(
    "kind, shape",
    [
        ("conv", (3, 3, 4, 6)),
        ("conv", (1, 1, 8, 3)),
        ("depthwise", (3, 3, 5, 1)),
        ("depthwise", (3, 3, 5, 2)),
        ("depthwise", (3, 3, 3, 3)),
        ("dense", (7, 5)),
    ],
)
def test_weight_quantizer_per_channel_axis(kind, shape):
    kernel = spread_kernel(shape, seed=sum(shape))
    scales = channel_scales(kernel, kind)
    quantizer = Pow2WeightQuantizer(per_channel=True, kind=kind)
    exponents = quantizer.exponent(tf.constant(kernel)).numpy()
    # One exponent per output channel, in TFLite's channel order.
    np.testing.assert_array_equal(2.0**exponents, scales.ravel())
    assert len(set(exponents.tolist())) > 1
    out = quantizer(tf.constant(kernel), training=True, weights={}).numpy()
    np.testing.assert_array_equal(out, fake_quant_reference(kernel, scales, -127, 127))
    steps = out / scales
    np.testing.assert_array_equal(steps, np.round(steps))
    assert np.abs(steps).max() <= 127
    assert _is_pow2_frexp(scales) and pow2.is_power_of_two(2.0**exponents)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", sorted(KERNEL_SHAPES))
def test_weight_quantizer_gradient_is_identity(kind, per_channel):
    """The scale follows the weights, so nothing clips: the straight-through gradient is 1 everywhere."""
    kernel = tf.Variable(spread_kernel(KERNEL_SHAPES[kind], seed=3))
    quantizer = Pow2WeightQuantizer(per_channel=per_channel, kind=kind)
    upstream = np.random.default_rng(0).normal(size=KERNEL_SHAPES[kind]).astype(np.float32)
    with tf.GradientTape() as tape:
        out = quantizer(kernel, training=True, weights={})
        loss = tf.reduce_sum(out * upstream)
    np.testing.assert_array_equal(tape.gradient(loss, kernel).numpy(), upstream)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", sorted(KERNEL_SHAPES))
def test_weight_quantizer_all_zero_kernel(kind, per_channel):
    kernel = tf.Variable(tf.zeros(KERNEL_SHAPES[kind]))
    quantizer = Pow2WeightQuantizer(per_channel=per_channel, kind=kind)
    exponents = quantizer.exponent(kernel).numpy()
    np.testing.assert_array_equal(exponents, pow2.MIN_EXPONENT)
    assert _is_pow2_frexp(2.0**exponents)
    with tf.GradientTape() as tape:
        out = quantizer(kernel, training=True, weights={})
    np.testing.assert_array_equal(out.numpy(), 0.0)
    np.testing.assert_array_equal(tape.gradient(out, kernel).numpy(), 1.0)


def test_weight_quantizer_rejects_unknown_kind():
    with pytest.raises(ValueError, match=r"kind='conv1d'.*'dense', 'conv', 'depthwise'"):
        Pow2WeightQuantizer(kind="conv1d")


# ---------------------------------------------------------------- activations


def test_activation_quantizer_first_training_batch_sets_range():
    quantizer, weights = built_activation_quantizer()
    assert range_of(weights) == (-6.0, 6.0) and weights["seen"].numpy() == 0.0
    batch = tf.constant([[-3.0, 0.5, 40.0, 2.0]])
    out = quantizer(batch, training=True, weights=weights).numpy()
    assert range_of(weights) == (-3.0, 40.0) and weights["seen"].numpy() == 1.0
    k = reference_weight_exponent(40.0)  # 40/127 dominates 3/128
    assert pow2.activation_exponent(-3.0, 40.0).numpy() == k
    # The output already uses the new range: 40 is not clipped to the initial ReLU6 range.
    np.testing.assert_array_equal(out, _plain_fake_quant(batch, 2.0**k).numpy())
    assert out.max() == 40.0


def test_activation_quantizer_range_always_contains_zero():
    quantizer, weights = built_activation_quantizer()
    quantizer(tf.constant([[1.0, 2.0, 3.0, 4.0]]), training=True, weights=weights)
    assert range_of(weights) == (0.0, 4.0)
    quantizer, weights = built_activation_quantizer()
    quantizer(tf.constant([[-1.0, -2.0, -3.0, -4.0]]), training=True, weights=weights)
    assert range_of(weights) == (-4.0, 0.0)


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.99])
def test_activation_quantizer_later_batches_move_range_by_ema(decay):
    quantizer, weights = built_activation_quantizer(decay)
    batches = [[-2.0, 8.0], [-10.0, 1.0], [0.0, 3.0], [-0.5, 20.0]]
    quantizer(tf.constant([batches[0]]), training=True, weights=weights)
    low, high = np.float32(-2.0), np.float32(8.0)
    d = np.float32(decay)
    for batch in batches[1:]:
        out = quantizer(tf.constant([batch]), training=True, weights=weights).numpy()
        low = d * low + (np.float32(1) - d) * np.float32(min(min(batch), 0.0))
        high = d * high + (np.float32(1) - d) * np.float32(max(max(batch), 0.0))
        got_low, got_high = range_of(weights)
        assert (got_low, got_high) == (float(low), float(high))  # same float32 arithmetic
        k = pow2.activation_exponent(got_low, got_high).numpy()
        np.testing.assert_array_equal(out, _plain_fake_quant(tf.constant([batch]), 2.0**k).numpy())


def test_activation_quantizer_inference_freezes_range():
    quantizer, weights = built_activation_quantizer()
    quantizer(tf.constant([[-1.0, 0.0, 0.25, 0.5]]), training=True, weights=weights)
    before = range_of(weights)
    batch = tf.constant([[-50.0, 0.3, 7.0, 100.0]])
    out = quantizer(batch, training=False, weights=weights).numpy()
    assert range_of(weights) == before and weights["seen"].numpy() == 1.0
    k = pow2.activation_exponent(*before).numpy()
    assert k == -7  # [-1, 0.5] -> 1/128 per step
    np.testing.assert_array_equal(out, [[-1.0, 0.296875, 127 / 128, 127 / 128]])


def test_activation_quantizer_inference_is_stable_under_tf_function():
    quantizer, weights = built_activation_quantizer()
    quantizer(tf.constant([[-1.0, 2.0]]), training=True, weights=weights)
    infer = tf.function(lambda x: quantizer(x, training=False, weights=weights))
    for _ in range(3):
        infer(tf.constant([[-9.0, 9.0]]))
    assert range_of(weights) == (-1.0, 2.0)


def test_collecting_ranges_widens_to_min_max_over_batches():
    quantizer, weights = built_activation_quantizer(ema_decay=0.5)
    batches = [[-1.0, 3.0], [-0.5, 7.0], [-4.0, 2.0], [0.0, 0.1]]
    with collecting_ranges(quantizer):
        for batch in batches:
            out = quantizer(tf.constant([batch]), training=False, weights=weights).numpy()
            k = pow2.activation_exponent(*range_of(weights)).numpy()
            np.testing.assert_array_equal(out, litert_fake_quant_reference([batch], 2.0**k))
    assert range_of(weights) == (-4.0, 7.0)  # min/max over batches, no moving average
    # Outside the block inference is frozen again.
    quantizer(tf.constant([[-100.0, 100.0]]), training=False, weights=weights)
    assert range_of(weights) == (-4.0, 7.0)


def test_collecting_ranges_first_batch_replaces_the_initial_range():
    quantizer, weights = built_activation_quantizer()
    with collecting_ranges(quantizer):
        quantizer(tf.constant([[0.0, 0.75]]), training=False, weights=weights)
    assert range_of(weights) == (0.0, 0.75)  # not widened from the initial [-6, 6]


@pytest.mark.parametrize(
    "block, mode", [(collecting_ranges, COLLECTING_RANGES), (tracing_for_export, EXPORTING)]
)
def test_mode_is_reset_after_an_error(block, mode):
    quantizer, _ = built_activation_quantizer()
    with pytest.raises(RuntimeError):
        with block(quantizer):
            assert is_in(quantizer, mode)
            raise RuntimeError("boom")
    assert not is_in(quantizer, mode)


@pytest.mark.parametrize("block, mode", [(collecting_ranges, COLLECTING_RANGES), (tracing_for_export, EXPORTING)])
def test_modes_nest_and_belong_to_their_objects(block, mode):
    quantizer, _ = built_activation_quantizer()
    other, _ = built_activation_quantizer()
    with block(quantizer):
        with block(quantizer):
            assert is_in(quantizer, mode)
        assert is_in(quantizer, mode)  # the outer block still holds it
        assert not is_in(other, mode)  # another quantizer is untouched
    assert not is_in(quantizer, mode)
    with pytest.raises(ValueError, match="needs the model"):
        with block():
            pass


@pytest.mark.parametrize("training", [False, True])
def test_activation_quantizer_ste_gradient(training):
    """Gradient 1 inside [-128, 127] * 2**k of the range in use, 0 where values clip."""
    quantizer, weights = built_activation_quantizer(ema_decay=0.9)
    weights["min_var"].assign(-1.0)
    weights["max_var"].assign(0.5)
    weights["seen"].assign(1.0)
    steps = np.array([-200.0, -128.6, -128.0, -3.3, 0.0, 0.4, 127.0, 127.6, 500.0])
    x = tf.constant((steps * 2.0**-7)[None, :], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = quantizer(x, training=training, weights=weights)
    scale = 2.0 ** pow2.activation_exponent(*range_of(weights)).numpy()
    if not training:
        assert scale == 2.0**-7  # frozen [-1, 0.5]
    else:
        assert range_of(weights) != (-1.0, 0.5)  # moved by the EMA first
    values = x.numpy()[0]
    expected = ((values >= -128 * scale) & (values <= 127 * scale)).astype(np.float32)
    assert 0 < expected.sum() < len(expected)
    np.testing.assert_array_equal(tape.gradient(out, x).numpy()[0], expected)


@pytest.mark.parametrize("training", [True, False])
def test_activation_quantizer_all_zero_batch(training):
    quantizer, weights = built_activation_quantizer()
    with collecting_ranges(quantizer):
        x = tf.zeros((2, 4))
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = quantizer(x, training=training, weights=weights)
    assert range_of(weights) == (0.0, 0.0)
    scale = 2.0 ** pow2.activation_exponent(0.0, 0.0).numpy()
    assert np.isfinite(scale) and _is_pow2_frexp(scale) and pow2.is_power_of_two(scale)
    np.testing.assert_array_equal(out.numpy(), 0.0)
    grad = tape.gradient(out, x).numpy()
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad, 1.0)


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_activation_quantizer_rejects_bad_decay(decay):
    with pytest.raises(ValueError, match=r"ema_decay=.*\[0, 1\)"):
        Pow2ActivationQuantizer(decay)


# ---------------------------------------------------------------- LiteRT rounding and export tracing

# Steps at the scale 2**-7 of the range [-1, 0.5]: ties, values just off ties, and values beyond the range.
TIE_STEPS = [-2.5, 2.5, -0.5, 0.5, -1.5, 1.5, -127.5, 126.5, -128.5, 127.5, -2.4999, 2.5001, -200.0, 300.0, 0.0]
LITERT_STEPS = [-3, 3, -1, 1, -2, 2, -128, 127, -128, 127, -2, 3, -128, 127, 0]
FAKE_QUANT_STEPS = [-2, 3, 0, 1, -1, 2, -127, 127, -128, 127, -2, 3, -128, 127, 0]  # TF rounds ties up


def frozen_quantizer():
    """A quantizer that has seen data: range [-1, 0.5], scale 2**-7."""
    quantizer, weights = built_activation_quantizer(ema_decay=0.9)
    weights["min_var"].assign(-1.0)
    weights["max_var"].assign(0.5)
    weights["seen"].assign(1.0)
    return quantizer, weights


def tie_batch():
    return tf.constant(np.array(TIE_STEPS, np.float32)[None, :] * np.float32(2.0**-7))


@pytest.mark.parametrize("mode", ["inference", "collecting"])
def test_activation_quantizer_rounds_ties_away_from_zero(mode):
    quantizer, weights = frozen_quantizer()
    steps, expected = np.array(TIE_STEPS), np.array(LITERT_STEPS)
    if mode == "inference":
        out = quantizer(tie_batch(), training=False, weights=weights).numpy()
    else:
        inside = (steps >= -128) & (steps <= 127)  # keeps the scale 2**-7 while widening [-1, 0.5]
        steps, expected = steps[inside], expected[inside]
        with collecting_ranges(quantizer):
            out = quantizer(tf.constant(steps[None, :] * 2.0**-7, tf.float32), training=False, weights=weights).numpy()
        assert range_of(weights) == (-1.0, 126.5 * 2.0**-7)
    assert pow2.activation_exponent(*range_of(weights)).numpy() == -7
    np.testing.assert_array_equal(out[0] / 2.0**-7, expected)
    np.testing.assert_array_equal(out, litert_fake_quant_reference(steps[None, :] * 2.0**-7, 2.0**-7))


def test_activation_quantizer_in_training_rounds_as_fake_quant():
    """Training steps skip the costly LiteRT emulation: ties go up, as TF's FakeQuant rounds them."""
    quantizer, weights = built_activation_quantizer(ema_decay=0.0)
    batch = tf.constant([[-1.0, 1.0] + [s * 2.0**-6 for s in (-2.5, 2.5, -0.5, 0.5, -1.5, 1.5)]])
    out = quantizer(batch, training=True, weights=weights).numpy()
    assert range_of(weights) == (-1.0, 1.0)  # scale 2**-6
    np.testing.assert_array_equal(out[0, 2:] / 2.0**-6, [-2, 3, 0, 1, -1, 2])
    # The same batch in inference, range now frozen, rounds away from zero as LiteRT does.
    inferred = quantizer(batch, training=False, weights=weights).numpy()
    np.testing.assert_array_equal(inferred[0, 2:] / 2.0**-6, [-3, 3, -1, 1, -2, 2])


def test_linked_activation_quantizer_in_training_is_plain_fake_quant():
    quantizer, weights = frozen_quantizer()
    quantizer.accumulator_exponent = lambda: tf.constant(-11.0)
    x = tf.constant((np.arange(-2048, 2040, 8) * 2.0**-11)[None, :], tf.float32)
    train_step = tf.function(lambda v: quantizer(v, training=True, weights=weights))
    graph = train_step.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
    operations = {op.type for op in graph.get_operations()}
    assert "FakeQuantWithMinMaxVars" in operations
    assert "Floor" not in operations  # no rounding emulation in the training graph
    k = pow2.activation_exponent(*range_of(weights)).numpy()
    np.testing.assert_array_equal(train_step(x).numpy(), _plain_fake_quant(x, 2.0**k).numpy())


def _plain_fake_quant(x, scale):
    return tf.quantization.fake_quant_with_min_max_vars(x, -128 * scale, 127 * scale, num_bits=8, narrow_range=False)


@pytest.mark.parametrize("linked", [False, True], ids=["unlinked", "linked"])
def test_activation_quantizer_inside_tracing_for_export_is_tf_fake_quant(linked):
    quantizer, weights = frozen_quantizer()
    if linked:
        quantizer.accumulator_exponent = lambda: tf.constant(-10.0)
    # Ties (which LiteRT rounds away from zero) and, for a linked conv output, accumulators that LiteRT's
    # double rounding takes elsewhere: 0.375 -> 1 and -0.625 -> 0 at n = 3.
    x = tf.concat([tie_batch(), tf.constant([[0.375 * 2.0**-7, -0.625 * 2.0**-7]])], axis=1)
    plain = _plain_fake_quant(x, 2.0**-7).numpy()
    np.testing.assert_array_equal(plain[0] / 2.0**-7, FAKE_QUANT_STEPS + [0, -1])
    with tracing_for_export(quantizer):
        assert is_in(quantizer, EXPORTING)
        eager = quantizer(x, training=False, weights=weights).numpy()
        traced = tf.function(lambda v: quantizer(v, training=False, weights=weights))
        graph = traced.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
    assert not is_in(quantizer, EXPORTING)
    np.testing.assert_array_equal(eager, plain)
    np.testing.assert_array_equal(traced(x).numpy(), plain)  # the graph traced for export, called later
    # The converter reads ranges off FakeQuant; the traced graph has no rounding ops of its own.
    op_types = {op.type for op in graph.get_operations()}
    assert "FakeQuantWithMinMaxVars" in op_types
    assert not op_types & {"Floor", "Sign", "Round"}, op_types
    # Outside the block the same quantizer rounds as LiteRT does.
    outside = quantizer(x, training=False, weights=weights).numpy()
    if linked:
        np.testing.assert_array_equal(outside[0, -2:] / 2.0**-7, [1, 0])
    else:
        np.testing.assert_array_equal(outside[0, :-2] / 2.0**-7, LITERT_STEPS)
    outside_graph = tf.function(lambda v: quantizer(v, training=False, weights=weights)).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32)).graph
    assert "Floor" in {op.type for op in outside_graph.get_operations()}


def test_linked_activation_quantizer_requantizes_accumulators_as_litert():
    quantizer, weights = frozen_quantizer()  # [-1, 0.5]: scale 2**-7
    quantizer.accumulator_exponent = lambda: tf.constant(-11.0)  # n = 4
    acc = np.random.default_rng(3).integers(-16 * 128, 16 * 64, 400)
    # -1.5, -0.5, 0.5, 1.5, -2.5, 2.5, -128, 127.5, -128.5 and -129.5 steps.
    acc[:10] = [-24, -8, 8, 24, -40, 40, -2048, 2040, -2056, -2072]
    x = tf.constant((acc * 2.0**-11)[None, :], tf.float32)
    out = quantizer(x, training=False, weights=weights).numpy()[0]
    assert pow2.activation_exponent(*range_of(weights)).numpy() == -7
    expected = np.clip(litert_requantize_reference(acc, 4), -128, 127)
    np.testing.assert_array_equal(out / 2.0**-7, expected)
    # Ties round up, not away from zero; 127.5 saturates.
    np.testing.assert_array_equal(expected[:8], [-1, 0, 1, 2, -2, 3, -128, 127])
    np.testing.assert_array_equal(expected[8:10], [-128, -128])  # -128.5 rounds up into the range


# ---------------------------------------------------------------- biases


def _bias():
    steps = np.array([-2.5, 2.5, -0.5, 0.5, 1.5, -1.5, 0.3, -7.7, 1000.2, 0.0])
    return tf.Variable((steps * 2.0**-12).astype(np.float32)), steps


@pytest.mark.parametrize("training", [False, True])
def test_bias_quantizer_is_identity_unlinked(training):
    quantizer = Pow2BiasQuantizer()
    assert quantizer.build(tf.TensorShape([10]), "bias", _Owner()) == {}
    assert quantizer.accumulator_exponent is None
    bias, _ = _bias()
    with tf.GradientTape() as tape:
        out = quantizer(bias, training=training, weights={})
    np.testing.assert_array_equal(out.numpy(), bias.numpy())
    np.testing.assert_array_equal(tape.gradient(out, bias).numpy(), 1.0)


@pytest.mark.parametrize("training", [False, True])
def test_bias_quantizer_linked_rounds_onto_the_accumulator_grid(training):
    quantizer = Pow2BiasQuantizer()
    quantizer.accumulator_exponent = lambda: tf.constant(-12.0)
    bias, steps = _bias()
    with tf.GradientTape() as tape:
        out = quantizer(bias, training=training, weights={})
    got = out.numpy() / 2.0**-12
    np.testing.assert_array_equal(got, [-3, 3, -1, 1, 2, -2, 0, -8, 1000, 0])  # ties away from zero
    np.testing.assert_array_equal(got, round_half_away(steps))
    np.testing.assert_array_equal(tape.gradient(out, bias).numpy(), 1.0)  # straight through


def test_bias_quantizer_per_channel_grid_and_live_exponent():
    """One exponent per channel; the grid follows the variables the link reads, at every call."""
    quantizer = Pow2BiasQuantizer()
    exponents = tf.Variable([-12.0, -9.0, -14.0, -3.0])
    quantizer.accumulator_exponent = lambda: exponents + 0.0
    bias = tf.constant(np.random.default_rng(2).normal(0, 0.5, 4).astype(np.float32))
    for values in ([-12.0, -9.0, -14.0, -3.0], [-4.0, -20.0, -2.0, -10.0]):
        exponents.assign(values)
        scales = 2.0 ** np.array(values)
        got = quantizer(bias, training=False, weights={}).numpy()
        np.testing.assert_array_equal(got / scales, round_half_away(bias.numpy().astype(np.float64) / scales))


def test_bias_quantizer_is_identity_inside_tracing_for_export():
    quantizer = Pow2BiasQuantizer()
    quantizer.accumulator_exponent = lambda: tf.constant(-12.0)
    bias, _ = _bias()
    with tracing_for_export(quantizer):
        eager = quantizer(bias, training=False, weights={})
        graph = tf.function(lambda b: quantizer(b, training=False, weights={})).get_concrete_function(
            tf.TensorSpec([10], tf.float32)).graph
    np.testing.assert_array_equal(eager.numpy(), bias.numpy())
    assert not {op.type for op in graph.get_operations()} & {"Floor", "Sign", "Pow"}
    assert np.any(quantizer(bias, training=False, weights={}).numpy() != bias.numpy())  # linked outside


def test_links_are_not_serialized():
    for quantizer in (Pow2BiasQuantizer(), Pow2ActivationQuantizer(0.9)):
        config = quantizer.get_config()
        quantizer.accumulator_exponent = lambda: tf.constant(-3.0)
        assert quantizer.get_config() == config
        clone = type(quantizer).from_config(config)
        assert clone == quantizer and clone.accumulator_exponent is None


# ---------------------------------------------------------------- serialization


QUANTIZERS = [
    Pow2WeightQuantizer(per_channel=False, kind="conv"),
    Pow2WeightQuantizer(per_channel=True, kind="conv"),
    Pow2WeightQuantizer(per_channel=True, kind="depthwise"),
    Pow2WeightQuantizer(per_channel=False, kind="dense"),
    Pow2ActivationQuantizer(0.99),
    Pow2ActivationQuantizer(0.0),
    Pow2BiasQuantizer(),
]


@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=lambda q: f"{type(q).__name__}-{q.get_config()}")
def test_quantizer_config_round_trip(quantizer):
    clone = type(quantizer).from_config(quantizer.get_config())
    assert clone == quantizer and not (clone != quantizer)
    assert clone.get_config() == quantizer.get_config()


@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=lambda q: f"{type(q).__name__}-{q.get_config()}")
def test_quantizer_keras_serialization_round_trip(quantizer):
    serialized = keras.utils.serialize_keras_object(quantizer)
    restored = keras.utils.deserialize_keras_object(serialized)  # registered: no custom_objects needed
    assert type(restored) is type(quantizer)
    assert restored == quantizer


def test_quantizer_equality_tells_options_apart():
    assert Pow2WeightQuantizer(True, "conv") != Pow2WeightQuantizer(False, "conv")
    assert Pow2WeightQuantizer(True, "conv") != Pow2WeightQuantizer(True, "depthwise")
    assert Pow2ActivationQuantizer(0.9) != Pow2ActivationQuantizer(0.99)
    assert Pow2ActivationQuantizer(0.9) != Pow2WeightQuantizer()
    assert Pow2BiasQuantizer() == Pow2BiasQuantizer() and not (Pow2BiasQuantizer() != Pow2BiasQuantizer())
    assert Pow2BiasQuantizer() != Pow2WeightQuantizer() and Pow2BiasQuantizer() != Pow2ActivationQuantizer()


# ---------------------------------------------------------------- the model input


def _pixel_model():
    """MobileNetV3's input: raw pixels, rescaled to [-1, 1] inside the model, then a conv."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(x))


@pytest.mark.parametrize("low, high, scale, zero_point", [(0, 255, 1.0, -128), (-1, 1, 2.0**-6, 0)],
                         ids=["raw_pixels_unsigned", "signed_images"])
def test_the_input_is_unsigned_when_calibrated_on_non_negative_values(low, high, scale, zero_point, tmp_path):
    """Pixels in [0, 255] take the unsigned grid at scale 1 (int8 = pixel - 128, nothing lost), as TFLite's own
    converter gives a uint8 image; [-1, 1] images stay signed (2**-6: their max is above 127 / 128). Keras rounds
    the input as LiteRT quantizes it."""
    import tfqat
    from tfqat.quantization.quantizers import Pow2InputQuantizer
    from tfqat.tflite import litert

    qat = tfqat.quantize_model(_pixel_model())
    quantizer = qat.layers[1].quantizer
    assert isinstance(quantizer, Pow2InputQuantizer)
    assert not bool(quantizer.grid_unsigned(qat.layers[1].quantizer_vars))  # before calibration: signed
    rng = np.random.default_rng(5)
    images = rng.integers(low, high + 1, (32, 8, 8, 3)).astype(np.float32) if high > 1 else \
        rng.uniform(low, high, (32, 8, 8, 3)).astype(np.float32)
    tfqat.calibrate(qat, images)
    path = tfqat.export_tflite(qat, tmp_path / "input.tflite")
    [model_input] = litert.describe(path).inputs
    assert (model_input.scale, model_input.zero_point) == (scale, zero_point)
    if high > 1:  # every pixel is exact: the int8 input is pixel - 128
        keras_input = keras.Model(qat.input, qat.layers[1].output)(images, training=False).numpy()
        np.testing.assert_array_equal(keras_input, images)
    [output] = litert.describe(path).outputs
    _, raw = litert.predict(path, images, return_raw=True)
    np.testing.assert_array_equal(qat(images, training=False).numpy() / output.scale, raw.astype(np.float64))
