"""Tests for tfqat.pow2: best-precision exponents, fake quantization and its straight-through gradient."""

import math

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import numpy as np
import pytest
import tensorflow as tf

from tfqat import pow2

F32_MAX = float(np.finfo(np.float32).max)


def reference_weight_exponent(max_abs: float) -> int:
    """Smallest integer k >= MIN_EXPONENT with max_abs / 2**k <= 127, in exact float64 arithmetic."""
    k = int(pow2.MIN_EXPONENT)
    while max_abs / 2.0**k > 127:
        k += 1
    return k


def reference_activation_exponent(low: float, high: float) -> int:
    """Smallest integer k >= MIN_EXPONENT with high / 2**k <= 127 and low / 2**k >= -128."""
    k = int(pow2.MIN_EXPONENT)
    while high / 2.0**k > 127 or low / 2.0**k < -128:
        k += 1
    return k


def _up(x):
    return np.nextafter(np.float32(x), np.float32(np.inf))


def _down(x):
    return np.nextafter(np.float32(x), np.float32(-np.inf))


def _boundaries(qmax: int, exponents) -> np.ndarray:
    """qmax * 2**k exactly, one float32 ulp above and one ulp below, for every k."""
    values = []
    for k in exponents:
        edge = np.float32(qmax * 2.0**k)
        values += [edge, _up(edge), _down(edge)]
    return np.array(values, np.float32)


def _naive_exponent(ratio: np.ndarray) -> np.ndarray:
    """ceil(log2(ratio)) computed the obvious way in float32 (what pow2 must not rely on)."""
    ratio = tf.maximum(tf.constant(ratio, tf.float32), 2.0**pow2.MIN_EXPONENT)
    return tf.math.ceil(tf.math.log(ratio) / tf.math.log(2.0)).numpy()


def _is_pow2_frexp(value: float) -> bool:
    """Independent of pow2.is_power_of_two: a float is 2**k iff its frexp mantissa is exactly 0.5."""
    mantissa, _ = math.frexp(float(value))
    return value > 0 and mantissa == 0.5


# ---------------------------------------------------------------- exponents


WEIGHT_BOUNDARIES = _boundaries(127, range(-30, 121))


def test_weight_exponent_is_smallest_fitting_k_at_every_boundary():
    got = pow2.weight_exponent(WEIGHT_BOUNDARIES).numpy()
    expected = np.array([reference_weight_exponent(float(m)) for m in WEIGHT_BOUNDARIES])
    np.testing.assert_array_equal(got, expected)
    # Direct statement of "smallest k that fits", with k clamped at MIN_EXPONENT.
    m = WEIGHT_BOUNDARIES.astype(np.float64)
    assert np.all(m / 2.0**got <= 127)
    above_floor = got > pow2.MIN_EXPONENT
    assert np.all(m[above_floor] / 2.0 ** (got[above_floor] - 1) > 127)


def test_weight_exponent_boundary_cases_exactly():
    for k in (-20, -7, 0, 3, 40):
        edge = np.float32(127 * 2.0**k)
        assert pow2.weight_exponent(edge).numpy() == k  # 127 * 2**k fits exactly at 2**k
        assert pow2.weight_exponent(_up(edge)).numpy() == k + 1  # one ulp more does not
        assert pow2.weight_exponent(_down(edge)).numpy() == k


def test_boundaries_include_values_where_float_log2_rounds_wrongly():
    """The boundary set would catch a plain ceil(log(x)/log(2)): it gets many of them wrong."""
    naive = _naive_exponent(WEIGHT_BOUNDARIES / np.float32(127))
    expected = np.array([reference_weight_exponent(float(m)) for m in WEIGHT_BOUNDARIES])
    assert np.sum(naive != expected) > 10
    # Exact powers of two whose float32 log2 is not an exact integer.
    exponents = np.arange(-24, 121)
    powers = np.array([2.0**k for k in exponents], np.float32)
    wrong = _naive_exponent(powers) != exponents
    assert wrong.any()
    np.testing.assert_array_equal(pow2.weight_exponent(powers[wrong] * 127).numpy(), exponents[wrong])
    np.testing.assert_array_equal(pow2.activation_exponent(0.0, powers[wrong] * 127).numpy(), exponents[wrong])
    np.testing.assert_array_equal(pow2.activation_exponent(powers[wrong] * -128, 0.0).numpy(), exponents[wrong])


@pytest.mark.parametrize(
    "max_abs, expected",
    [
        (F32_MAX, reference_weight_exponent(F32_MAX)),
        (1e30, reference_weight_exponent(1e30)),
        (1e-30, int(pow2.MIN_EXPONENT)),
        (1e-45, int(pow2.MIN_EXPONENT)),  # subnormal
        (127 * 2.0**-24, -24),
        (float(_up(127 * 2.0**-24)), -23),
        (0.0, int(pow2.MIN_EXPONENT)),
    ],
)
def test_weight_exponent_extreme_magnitudes(max_abs, expected):
    k = pow2.weight_exponent(max_abs).numpy()
    assert k == expected
    assert np.isfinite(pow2.scale_from_exponent(k).numpy())


def _activation_cases():
    cases = []
    for k in (-24, -9, -1, 0, 5, 60):
        high, low = np.float32(127 * 2.0**k), np.float32(-128 * 2.0**k)
        cases += [
            (0.0, high, k),
            (0.0, _up(high), k + 1),
            (0.0, _down(high), k),
            (low, 0.0, k),
            (_down(low), 0.0, k + 1),  # one ulp more negative than -128 * 2**k
            (_up(low), 0.0, k),
            (low, high, k),
            (_down(low), high, k + 1),
            (low, _up(high), k + 1),
        ]
    return cases


@pytest.mark.parametrize("low, high, k", _activation_cases())
def test_activation_exponent_boundaries(low, high, k):
    got = pow2.activation_exponent(low, high).numpy()
    assert got == k == reference_activation_exponent(float(low), float(high))


def test_activation_exponent_is_smallest_fitting_k_on_random_ranges():
    rng = np.random.default_rng(0)
    lows = -(10.0 ** rng.uniform(-9, 9, 500)).astype(np.float32)
    highs = (10.0 ** rng.uniform(-9, 9, 500)).astype(np.float32)
    lows[:100] = 0.0  # ReLU outputs
    got = pow2.activation_exponent(lows, highs).numpy()
    expected = [reference_activation_exponent(float(a), float(b)) for a, b in zip(lows, highs)]
    np.testing.assert_array_equal(got, expected)


def test_activation_exponent_of_empty_range_is_the_floor():
    assert pow2.activation_exponent(0.0, 0.0).numpy() == pow2.MIN_EXPONENT


@pytest.mark.parametrize("k", [int(pow2.MIN_EXPONENT), -7, 0, 1, 30, 126])
def test_scale_from_exponent_is_exactly_two_to_the_k(k):
    scale = pow2.scale_from_exponent(tf.constant(float(k))).numpy()
    assert scale == math.ldexp(1.0, k)
    assert pow2.is_power_of_two(scale) and _is_pow2_frexp(scale)


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1.0, 0.5, 2.0**-24, 2.0**100], True),
        ([1.0, 3.0], False),
        ([0.0], False),
        ([-2.0], False),
        ([float(_up(1.0))], False),
        ([np.inf], False),
    ],
)
def test_is_power_of_two(values, expected):
    assert pow2.is_power_of_two(values) is expected
    assert pow2.is_power_of_two(tf.constant(values, tf.float32)) is expected


# ---------------------------------------------------------------- fake quantization


def fake_quant_reference(x, scale, qmin, qmax):
    """TensorFlow's FakeQuant arithmetic in numpy float32: clamp, shift by the minimum, round half up."""
    x = np.asarray(x, np.float32)
    scale = np.asarray(scale, np.float32)
    low, high = np.float32(qmin) * scale, np.float32(qmax) * scale
    shifted = np.clip(x, low, high) - low
    return (np.floor(shifted * (np.float32(1) / scale) + np.float32(0.5)) * scale + low).astype(np.float32)


def _grid_check(quantized, scale, qmin, qmax):
    """Every value is an integer times `scale` (broadcast) inside [qmin, qmax]."""
    steps = np.asarray(quantized, np.float64) / np.asarray(scale, np.float64)
    np.testing.assert_array_equal(steps, np.round(steps))
    assert steps.min() >= qmin and steps.max() <= qmax


@pytest.mark.parametrize("k", [-24, -6, 0, 4])
def test_fake_quant_weights_per_tensor_on_the_grid(k):
    scale = 2.0**k
    rng = np.random.default_rng(k + 100)
    w = (rng.normal(size=(3, 3, 4, 8)) * 80 * scale).astype(np.float32)  # some clip beyond 127
    q = pow2.fake_quant_weights(w, float(k)).numpy()
    np.testing.assert_array_equal(q, fake_quant_reference(w, scale, -127, 127))
    _grid_check(q, scale, -127, 127)
    inside = np.abs(w) <= 127 * scale
    assert np.all(np.abs(q - w)[inside] <= scale / 2)
    np.testing.assert_array_equal(q[~inside], np.sign(w[~inside]) * 127 * scale)
    assert (~inside).any() and inside.any()


@pytest.mark.parametrize("k", [-24, -3, 2])
def test_fake_quant_activations_on_the_grid(k):
    scale = 2.0**k
    rng = np.random.default_rng(k + 200)
    x = (rng.normal(size=(2, 5, 5, 3)) * 100 * scale).astype(np.float32)
    q = pow2.fake_quant_activations(x, float(k)).numpy()
    np.testing.assert_array_equal(q, fake_quant_reference(x, scale, -128, 127))
    _grid_check(q, scale, -128, 127)
    assert q.min() == -128 * scale and q.max() == 127 * scale  # both ends are reached (and clipped)
    inside = (x >= -128 * scale) & (x <= 127 * scale)
    assert np.all(np.abs(q - x)[inside] <= scale / 2)


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1])
def test_fake_quant_weights_per_channel_uses_the_given_axis(axis):
    rng = np.random.default_rng(axis + 10)
    shape = (3, 4, 5, 6)
    w = (rng.normal(size=shape) * 20).astype(np.float32)  # the small scales clip, the large do not
    channels = shape[axis]
    exponents = np.arange(channels, dtype=np.float32) - 3.0
    q = pow2.fake_quant_weights(w, exponents, per_channel_axis=axis).numpy()
    bshape = [1] * 4
    bshape[axis] = channels
    scale = (2.0**exponents).reshape(bshape)
    _grid_check(q, scale, -127, 127)
    inside = np.abs(w) <= 127 * scale
    assert np.all((np.abs(q - w) <= scale / 2)[inside])
    # Channel c, and only it, uses 2**exponents[c]: exactly numpy's answer with the scales on `axis`.
    np.testing.assert_array_equal(q, fake_quant_reference(w, scale, -127, 127))


def test_all_zero_tensor_gives_finite_outputs_and_gradients():
    zeros = tf.zeros((2, 3, 3, 4))
    k_w = pow2.weight_exponent(tf.reduce_max(tf.abs(zeros)))
    k_a = pow2.activation_exponent(tf.reduce_min(zeros), tf.reduce_max(zeros))
    for k in (k_w, k_a):
        scale = pow2.scale_from_exponent(k).numpy()
        assert np.isfinite(scale) and pow2.is_power_of_two(scale) and _is_pow2_frexp(scale)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(zeros)
        qw = pow2.fake_quant_weights(zeros, k_w)
        qa = pow2.fake_quant_activations(zeros, k_a)
        qc = pow2.fake_quant_weights(zeros, tf.fill([4], k_w), per_channel_axis=-1)
    for out in (qw, qa, qc):
        np.testing.assert_array_equal(out.numpy(), 0.0)
        grad = tape.gradient(out, zeros).numpy()
        np.testing.assert_array_equal(grad, 1.0)


# ---------------------------------------------------------------- straight-through gradients


def _ste_case(qmin, qmax, scale):
    """Inputs at known positions relative to the clip range, and their expected gradient."""
    steps = np.array([0.0, 0.3, -0.7, 5.5, qmin, qmax, qmin - 0.6, qmax + 0.6, qmin - 40, qmax + 40, 1e4, -1e4])
    expected = ((steps >= qmin) & (steps <= qmax)).astype(np.float32)
    return (steps * scale).astype(np.float32), expected


@pytest.mark.parametrize("k", [-5, 0, 3])
def test_ste_gradient_weights_per_tensor(k):
    x, expected = _ste_case(-127, 127, 2.0**k)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = pow2.fake_quant_weights(x, float(k))
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), expected)


@pytest.mark.parametrize("k", [-5, 0, 3])
def test_ste_gradient_activations(k):
    x, expected = _ste_case(-128, 127, 2.0**k)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = pow2.fake_quant_activations(x, float(k))
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), expected)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_ste_gradient_weights_per_channel(axis):
    exponents = np.array([-2.0, 0.0, 3.0], np.float32)
    columns, expected_columns = [], []
    for k in exponents:
        x, expected = _ste_case(-127, 127, 2.0**k)
        columns.append(x)
        expected_columns.append(expected)
    x = np.stack(columns, axis=-1)  # (12, 3): channel on the last axis
    expected = np.stack(expected_columns, axis=-1)
    x = np.moveaxis(np.broadcast_to(x, (2,) + x.shape), -1, axis).copy()
    expected = np.moveaxis(np.broadcast_to(expected, (2,) + expected.shape), -1, axis)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = pow2.fake_quant_weights(x, exponents, per_channel_axis=axis)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), expected)


def test_exponent_gets_no_gradient():
    x = tf.constant(np.linspace(-300, 300, 50), tf.float32)
    k = tf.Variable(0.0)
    with tf.GradientTape(persistent=True) as tape:
        yw = pow2.fake_quant_weights(x, k)
        ya = pow2.fake_quant_activations(x, k)
    assert tape.gradient(yw, k) is None
    assert tape.gradient(ya, k) is None
