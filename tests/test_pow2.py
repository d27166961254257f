"""Tests for tfqat.quantization.pow2: best-precision exponents, fake quantization and its straight-through gradient."""

import math

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import numpy as np
import pytest
import tensorflow as tf

from tfqat.quantization import pow2
from references import reference_weight_exponent, reference_activation_exponent, fake_quant_reference

F32_MAX = float(np.finfo(np.float32).max)



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
        ql = pow2.fake_quant_activations(zeros, k_a, litert_rounding=True)
        qr = pow2.fake_quant_activations(zeros, k_a, litert_rounding=True, accumulator_exponent=k_a + k_w)
    for out in (qw, qa, qc, ql, qr):
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


# ---------------------------------------------------------------- LiteRT's rounding


def round_half_away_reference(x):
    """std::round in float64, where |x| + 0.5 is exact for every float32 x."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def litert_requantize_reference(acc, n: int):
    """LiteRT's requantization of integer accumulators by 2**-n (Q31 multiplier 0.5, then a rounding shift)."""
    acc = np.asarray(acc, np.float64)  # exact for |acc| < 2**53
    if n <= 0:
        return acc * 2.0**-n
    return np.floor(np.floor(acc / 2 + 0.5) / 2.0 ** (n - 1) + 0.5)


def saturate(steps):
    """Rounded steps clamped to [-128, 127], as LiteRT's int8 kernels saturate after rounding."""
    return np.clip(steps, -128, 127)


TIES = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5]


def test_round_half_away_from_zero_on_ties():
    x = tf.constant(TIES, tf.float32)
    np.testing.assert_array_equal(pow2.round_half_away_from_zero(x).numpy(), [1, -1, 2, -2, 3, -3])
    # Neither TF's round (ties to even) nor FakeQuant's floor(x + 0.5) (ties up) does this.
    np.testing.assert_array_equal(tf.round(x).numpy(), [0, 0, 2, -2, 2, -2])
    np.testing.assert_array_equal(tf.floor(x + 0.5).numpy(), [1, 0, 2, -1, 3, -2])


def test_round_half_away_from_zero_is_exact_next_to_ties_and_for_large_values():
    halves = np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)
    x = np.concatenate([
        halves, _up(halves), _down(halves),
        np.float32([0.5 - 2.0**-25, -(0.5 - 2.0**-25)]),  # floor(|x| + 0.5) in float32 gives 1
        np.float32([2**23 + 1, -(2**23 + 1), 2**24 - 1, 2**23 + 0.5, -(2**23 + 0.5)]),  # |x| + 0.5 rounds to even
        np.float32([0.0, -0.0, 1e-45, -1e-45, 1e30, -1e30, F32_MAX, -F32_MAX]),
        (np.random.default_rng(0).normal(size=2000) * 10.0 ** np.random.default_rng(1).uniform(-3, 9, 2000)),
    ]).astype(np.float32)
    got = pow2.round_half_away_from_zero(tf.constant(x)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, round_half_away_reference(x))
    hard = tf.constant([0.5 - 2.0**-25, -(0.5 - 2.0**-25), 2**23 + 1, -(2**23 + 1)], tf.float32)
    np.testing.assert_array_equal(pow2.round_half_away_from_zero(hard).numpy(), [0, 0, 2**23 + 1, -(2**23 + 1)])


# The accumulator exponent e_acc (input scale x weight scale) and the output exponent e_acc + n.
@pytest.mark.parametrize("accumulator_exponent", [-17, -6])
@pytest.mark.parametrize("n", range(13))
def test_litert_requantize_matches_litert_rule(n, accumulator_exponent):
    rng = np.random.default_rng(n)
    # Every residue modulo 2**n (so every tie) for both signs, and accumulators up to 2**23.
    acc = np.concatenate([
        np.arange(-4 * 2**n - 3, 4 * 2**n + 4),
        rng.integers(-(2**23) + 1, 2**23, 2000),
    ])
    output_exponent = accumulator_exponent + n
    values = (acc * 2.0**accumulator_exponent).astype(np.float32)
    np.testing.assert_array_equal(values / 2.0**accumulator_exponent, acc)  # exact accumulators
    got = pow2.litert_requantize(
        tf.constant(values), tf.constant(float(accumulator_exponent)), tf.constant(float(output_exponent))
    ).numpy()
    assert got.dtype == np.float32
    expected = litert_requantize_reference(acc, n)
    np.testing.assert_array_equal(got.astype(np.float64) / 2.0**output_exponent, expected)
    single = round_half_away_reference(acc / 2.0**n)
    if n >= 2:
        # Double rounding: not one rounding of acc / 2**n (e.g. 3/8 -> 1, -5/8 -> 0).
        assert np.any(expected != single)
    else:
        assert np.all(np.abs(expected - single) <= (n == 1))  # n = 1: ties round up, not away from zero


@pytest.mark.parametrize(
    "n, acc, steps",
    [
        (1, [-3, -1, 1, 3], [-1, 0, 1, 2]),  # -1.5 -> -1, -0.5 -> 0: negative ties round up
        (2, [-6, -2, 2, 6], [-1, 0, 1, 2]),
        (3, [-12, -4, 4, 12], [-1, 0, 1, 2]),
        (3, [-5, -3, 3, 5], [0, 0, 1, 1]),  # -0.625 -> 0 and 0.375 -> 1: rounded twice
        (0, [-7, -1, 0, 5], [-7, -1, 0, 5]),
        (-2, [-7, -1, 0, 5], [-28, -4, 0, 20]),  # output finer than the accumulator: exact
    ],
)
def test_litert_requantize_negative_ties_and_double_rounding(n, acc, steps):
    accumulator_exponent = -9.0
    values = tf.constant(np.array(acc) * 2.0**accumulator_exponent, tf.float32)
    got = pow2.litert_requantize(values, tf.constant(accumulator_exponent), tf.constant(accumulator_exponent + n))
    np.testing.assert_array_equal(got.numpy() / 2.0 ** (accumulator_exponent + n), steps)
    np.testing.assert_array_equal(litert_requantize_reference(acc, n), steps)


def test_litert_requantize_per_channel_accumulator_exponents():
    """Per-channel weight scales: one accumulator exponent per channel on the last axis, one output exponent."""
    output_exponent = -9
    accumulator_exponents = np.array([-12, -10, -9, -15, -8, -20], np.float32)  # n = 3, 1, 0, 6, -1, 11
    rng = np.random.default_rng(5)
    acc = rng.integers(-(2**20), 2**20, (3, 4, 5, 6))
    n = output_exponent - accumulator_exponents
    acc[0] = (2 * rng.integers(-50, 50, (4, 5, 6)) + 1) * 2.0 ** np.maximum(n - 1, 0)  # ties in every channel with n >= 1
    values = (acc * 2.0**accumulator_exponents).astype(np.float32)
    got = pow2.litert_requantize(
        tf.constant(values), tf.constant(accumulator_exponents), tf.constant(float(output_exponent))
    ).numpy()
    for c, e_acc in enumerate(accumulator_exponents):
        expected = litert_requantize_reference(acc[..., c], output_exponent - int(e_acc))
        np.testing.assert_array_equal(got[..., c].astype(np.float64) / 2.0**output_exponent, expected, err_msg=str(c))


@pytest.mark.parametrize("k", [-24, -3, 2])
def test_fake_quant_activations_litert_rounding_ties_and_clamp(k):
    scale = 2.0**k
    steps = np.array(TIES + [-127.5, 126.5, 127.4, -128.4, 127.5, -128.5, 200.0, -200.0, 0.0, 3.2, -3.7, 1e4, -1e4])
    expected = [1, -1, 2, -2, 3, -3, -128, 127, 127, -128, 127, -128, 127, -128, 0, 3, -4, 127, -128]
    x = (steps * scale).astype(np.float32)
    got = pow2.fake_quant_activations(x, float(k), litert_rounding=True).numpy()
    np.testing.assert_array_equal(got / scale, expected)
    np.testing.assert_array_equal(got / scale, saturate(round_half_away_reference(steps)))
    # TF's FakeQuant alone (the default, and the exported graph) rounds -2.5 to -2: LiteRT gives -3.
    plain = pow2.fake_quant_activations(x, float(k)).numpy()
    np.testing.assert_array_equal(plain, fake_quant_reference(x, scale, -128, 127))
    np.testing.assert_array_equal(plain[:6] / scale, [1, 0, 2, -1, 3, -2])


@pytest.mark.parametrize("k", [-24, -3, 2])
def test_fake_quant_activations_litert_rounding_on_random_values(k):
    scale = 2.0**k
    rng = np.random.default_rng(k + 300)
    steps = rng.normal(size=(2, 5, 5, 4)) * 100
    steps[0, 0] = [-2.5, 2.5, -127.5, 126.5]
    x = (steps * scale).astype(np.float32)
    got = pow2.fake_quant_activations(x, float(k), litert_rounding=True).numpy()
    expected = saturate(round_half_away_reference(x.astype(np.float64) / scale))
    np.testing.assert_array_equal(got.astype(np.float64) / scale, expected)
    _grid_check(got, scale, -128, 127)
    assert got.min() == -128 * scale and got.max() == 127 * scale


@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quant_activations_with_accumulator_exponent_requantizes_and_clamps(per_channel):
    k = -4
    accumulator_exponents = np.array([-7, -4, -11, -5], np.float32) if per_channel else np.float32(-10)
    rng = np.random.default_rng(11)
    n = k - np.broadcast_to(accumulator_exponents, (4,)).astype(np.int64)  # 3, 0, 7, 1 or 6
    acc = np.rint(rng.normal(size=(2, 5, 5, 4)) * 80 * 2.0**n).astype(np.int64)  # some saturate
    acc[0, 0, 0] = (2 * rng.integers(-60, 60, 4) + 1) * 2 ** np.maximum(n - 1, 0)  # ties
    values = (acc * 2.0**accumulator_exponents).astype(np.float32)
    got = pow2.fake_quant_activations(
        values, float(k), litert_rounding=True, accumulator_exponent=tf.constant(accumulator_exponents)
    ).numpy()
    exponents = np.broadcast_to(accumulator_exponents, (4,))
    for c in range(4):
        expected = saturate(litert_requantize_reference(acc[..., c], k - int(exponents[c])))
        np.testing.assert_array_equal(got[..., c].astype(np.float64) / 2.0**k, expected, err_msg=str(c))
    _grid_check(got, 2.0**k, -128, 127)
    assert got.min() == -128 * 2.0**k and got.max() == 127 * 2.0**k  # large accumulators saturate


BAND = [127.25, 127.5, -128.25, -128.5, 126.5, -127.5]  # half a step either side of the range's ends


def _litert_ste_case(qmin, qmax, scale, n):
    """_ste_case's steps plus BAND, as activations (n None) or integer accumulators at 2**-n steps.

    With LiteRT's rounding a value is rounded first and saturated after, so its
    gradient is 1 exactly where the rounded value lies in [qmin, qmax].
    """
    steps = np.concatenate([_ste_case(qmin, qmax, 1.0)[0].astype(np.float64), BAND])
    if n is None:
        rounded = round_half_away_reference(steps)
    else:
        steps = np.round(steps * 2.0**n) / 2.0**n  # onto the accumulator grid
        rounded = litert_requantize_reference(steps * 2.0**n, n)
    expected = ((rounded >= qmin) & (rounded <= qmax)).astype(np.float32)
    return (steps * scale).astype(np.float32), expected


@pytest.mark.parametrize("n", [None, 2, 5], ids=["no_accumulator", "n2", "n5"])
@pytest.mark.parametrize("k", [-5, 0, 3])
def test_ste_gradient_activations_litert_rounding(k, n):
    x, expected = _litert_ste_case(-128, 127, 2.0**k, n)
    classic = _ste_case(-128, 127, 2.0**k)[1]
    if n is None:
        # The classic cases keep their gradient: 1 inside [-128, 127], 0 outside.
        np.testing.assert_array_equal(expected[:12], classic)
    else:
        # So do those not within a step of the ends (a conv rounds -128.6 at n = 2, i.e. -128.5, up to -128).
        far = np.abs(np.abs(_ste_case(-128, 127, 1.0)[0] + 0.5) - 128) > 1
        np.testing.assert_array_equal(expected[:12][far], classic[far])
    # 127.25, 127.5, -128.25, -128.5, 126.5, -127.5: half steps that round back into the range are not
    # saturated and get 1; a conv's double rounding takes 127.25 to 128 at n = 2 and -128.5 up to -128.
    assert expected[12:].tolist() == {None: [1, 0, 1, 0, 1, 1], 2: [0, 0, 1, 1, 1, 1], 5: [1, 0, 1, 1, 1, 1]}[n]
    x = tf.constant(x)
    accumulator = None if n is None else tf.constant(float(k - n))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = pow2.fake_quant_activations(x, float(k), litert_rounding=True, accumulator_exponent=accumulator)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), expected)


def test_exponents_get_no_gradient_with_litert_rounding():
    x = tf.constant(np.linspace(-300, 300, 49), tf.float32)  # steps of 12.5
    k = tf.Variable(0.0)
    accumulator = tf.Variable(-3.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ya = pow2.fake_quant_activations(x, k, litert_rounding=True)
        yc = pow2.fake_quant_activations(x, k, litert_rounding=True, accumulator_exponent=accumulator)
    assert tape.gradient(ya, k) is None
    assert tape.gradient(yc, k) is None and tape.gradient(yc, accumulator) is None
    inside = (np.abs(x.numpy()) <= 127).astype(np.float32)  # scale 1: no value within a step of the ends
    np.testing.assert_array_equal(tape.gradient(ya, x).numpy(), inside)
    np.testing.assert_array_equal(tape.gradient(yc, x).numpy(), inside)
