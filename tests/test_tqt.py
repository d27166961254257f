"""Tests for tfqat.quantization.tqt: trained-threshold fake quantization and its gradients, on hand-made inputs."""

import math

from tfqat._keras import keras  # noqa: F401

import numpy as np
import pytest
import tensorflow as tf

from tfqat.quantization import pow2, tqt

LN2 = math.log(2.0)


def _gradients(x, log2_t, qmin=-128, qmax=127, upstream=None):
    x = tf.constant(x, tf.float32)
    log2_t = tf.Variable(log2_t, dtype=tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = tqt.tqt_fake_quant(x, log2_t, qmin, qmax)
        loss = tf.reduce_sum(y * (1.0 if upstream is None else tf.constant(upstream, tf.float32)))
    return y.numpy(), tape.gradient(loss, x).numpy(), tape.gradient(loss, log2_t).numpy()


@pytest.mark.parametrize("log2_t", [-3.7, 0.5, 1.0, 2.01])
def test_forward_is_plain_power_of_two_fake_quant_at_the_threshold(log2_t):
    x = np.random.default_rng(0).normal(0, 3, 1000).astype(np.float32)
    exponent = math.ceil(log2_t) - 7
    y = tqt.tqt_fake_quant(x, log2_t, pow2.ACTIVATION_QMIN, pow2.ACTIVATION_QMAX).numpy()
    np.testing.assert_array_equal(y, pow2.fake_quant_activations(x, float(exponent)).numpy())
    w = tqt.tqt_fake_quant(x, log2_t, pow2.WEIGHT_QMIN, pow2.WEIGHT_QMAX).numpy()
    np.testing.assert_array_equal(w, pow2.fake_quant_weights(x, float(exponent)).numpy())
    assert np.all(np.abs(w) <= 127 * 2.0**exponent)


def test_per_channel_forward_uses_each_channels_threshold():
    x = np.random.default_rng(1).normal(0, 2, (50, 3)).astype(np.float32)
    log2_t = np.array([-1.2, 0.3, 2.5], np.float32)
    y = tqt.tqt_fake_quant(x, log2_t, pow2.WEIGHT_QMIN, pow2.WEIGHT_QMAX).numpy()
    for c, t in enumerate(log2_t):
        expected = pow2.fake_quant_weights(x[:, c], float(math.ceil(t) - 7)).numpy()
        np.testing.assert_array_equal(y[:, c], expected)


def test_threshold_gradient_of_a_clipped_value_is_s_ln2_qmax_and_pushes_the_threshold_up():
    # t = 0.5: scale 2**(1 - 7) = 1/64, so the int8 range tops out at 127/64 < 3.
    s = 1 / 64
    _, dx, dt = _gradients([3.0], 0.5)
    assert dt == pytest.approx(s * LN2 * 127, rel=1e-6)
    assert dx == [0.0]  # clipped values pass no gradient to the input
    _, dx, dt = _gradients([-5.0], 0.5)
    assert dt == pytest.approx(s * LN2 * -128, rel=1e-6)
    # With L = (q(x) - x)**2 / 2, clipping makes dL/dt = (q - x) dq/dt < 0: gradient descent raises t.
    q = 127 * s
    _, _, dt = _gradients([3.0], 0.5, upstream=[q - 3.0])
    assert dt == pytest.approx((q - 3.0) * s * LN2 * 127, rel=1e-6) and dt < 0


def test_threshold_gradient_of_an_in_range_value_is_its_rounding_error_and_pushes_the_threshold_down():
    s = 1 / 64
    x = 0.3  # 19.2 steps: rounds to 19
    y, dx, dt = _gradients([x], 0.5)
    assert y[0] == 19 * s
    assert dx == [1.0]
    assert dt == pytest.approx(s * LN2 * (19 - 19.2), rel=1e-5)
    # Under L = (q(x) - x)**2 / 2 every in-range value gives dL/dt = s**2 ln2 (round(x/s) - x/s)**2 >= 0.
    xs = np.random.default_rng(2).uniform(-1.9, 1.9, 200).astype(np.float32)
    q, _, _ = _gradients(xs, 0.5)
    _, _, dt = _gradients(xs, 0.5, upstream=q - xs)
    steps = xs.astype(np.float64) / s
    expected = np.sum(s**2 * LN2 * (np.round(steps) - steps) ** 2)
    assert dt > 0 and dt == pytest.approx(expected, rel=1e-4)


def test_per_channel_threshold_gradients_are_summed_per_channel():
    s = 1 / 64
    x = np.array([[3.0, 0.3], [0.3, 0.3]], np.float32)  # channel 0: one clipped, one in range
    _, _, dt = _gradients(x, np.array([0.5, 0.5], np.float32), qmin=-127, qmax=127)
    assert dt.shape == (2,)
    assert dt[0] == pytest.approx(s * LN2 * (127 + (19 - 19.2)), rel=1e-5)
    assert dt[1] == pytest.approx(2 * s * LN2 * (19 - 19.2), rel=1e-5)


def test_initial_thresholds_give_the_plain_power_of_two_scales():
    for max_abs in (0.01, 0.5, 1.0, 127 / 64, 3.3):
        t = tqt.weight_log2_threshold(max_abs)
        assert tqt.exponent_from_log2_threshold(t).numpy() == pow2.weight_exponent(max_abs).numpy()
    for low, high in ((-6.0, 6.0), (0.0, 6.0), (-0.37, 0.1), (0.0, 127 / 32)):
        t = tqt.activation_log2_threshold(low, high)
        assert tqt.exponent_from_log2_threshold(t).numpy() == pow2.activation_exponent(low, high).numpy()
        # Half a bin inside: the first training steps cannot flip the scale.
        assert t.numpy() - math.floor(t.numpy()) == 0.5
