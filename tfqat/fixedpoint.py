"""The 32-bit fixed-point arithmetic of TFLite's integer kernels, for the ops that are not shifts.

SOFTMAX, LOGISTIC (on TFLite Micro), a MEAN over a count that is not a power of two and
AVERAGE_POOL_2D do not rescale by a power of two; the executor computes them as the runtimes do, from
the published definitions of gemmlowp's fixed-point functions (a value with I integer bits is an int32
raw r standing for r / 2**(31 - I)): a rounding doubling high multiply, rounding divisions by powers
of two, a Taylor polynomial with a barrel shifter for exp on negative values and Newton-Raphson for
1 / (1 + x). Arrays are int64 holding int32 values; every helper wraps or saturates as int32 would.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def wrap32(x: np.ndarray) -> np.ndarray:
    """int32 two's-complement wrap-around of int64 values (gemmlowp's raw + and - on int32)."""
    return ((np.asarray(x, np.int64) + 2**31) & (2**32 - 1)) - 2**31


def saturate32(x: np.ndarray) -> np.ndarray:
    return np.clip(x, INT32_MIN, INT32_MAX)


def _truncating_divide_pow2(x: np.ndarray, n: int) -> np.ndarray:
    # C's integer division by 2**n truncates toward zero.
    return np.where(x >= 0, x >> n, -((-x) >> n))


def rounding_doubling_high_mul(a, b) -> np.ndarray:
    """Round(a * b / 2**31) with ties away from zero, saturating the one overflow (-2**31 * -2**31)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    product = a * b
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    result = _truncating_divide_pow2(product + nudge, 31)
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, result)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """x / 2**exponent rounded half away from zero (gemmlowp's RoundingDivideByPOT)."""
    x = np.asarray(x, np.int64)
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def saturating_rounding_multiply_by_pot(x, exponent: int) -> np.ndarray:
    if exponent <= 0:
        return rounding_divide_by_pot(x, -exponent)
    return saturate32(np.asarray(x, np.int64) << exponent)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(Q31 multiplier, shift) with real = multiplier * 2**(shift - 31), as TFLite's QuantizeMultiplier."""
    if real == 0.0:
        return 0, 0
    mantissa, shift = math.frexp(real)
    fixed = int(math.floor(abs(mantissa) * 2**31 + 0.5)) * (1 if mantissa > 0 else -1)  # std::round
    if fixed == 2**31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return fixed, shift


def multiply_by_quantized_multiplier(x, multiplier, shift) -> np.ndarray:
    """TFLite's double-rounding MultiplyByQuantizedMultiplier (x an int32 accumulator)."""
    x = np.asarray(x, np.int64)
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rounding_divide_by_pot(rounding_doubling_high_mul(wrap32(x << left), multiplier), right)


# gemmlowp's constants: exp(-1/8), 1/3, exp(-2^k) for k = -2..4, 48/17 and -32/17 (Q2.29), as raw int32.
_EXP_MINUS_ONE_EIGHTH = 1895147668
_ONE_THIRD = 715827883
_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401), (4, 242))
_48_OVER_17, _MINUS_32_OVER_17 = 1515870810, -1010580540


def _mul(a, b):
    return rounding_doubling_high_mul(a, b)


def _exp_on_quarter_interval(a: np.ndarray) -> np.ndarray:
    """exp(a) for a in [-1/4, 0), Q0.31 in and out: a Taylor polynomial around -1/8."""
    x = wrap32(a + (1 << 28))
    x2 = _mul(x, x)
    x3 = _mul(x2, x)
    x4 = _mul(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(wrap32(_mul(wrap32(x4_over_4 + x3), _ONE_THIRD) + x2), 1)
    return wrap32(_EXP_MINUS_ONE_EIGHTH + _mul(_EXP_MINUS_ONE_EIGHTH, wrap32(x + poly)))


def exp_on_negative_values(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """exp(a) for a <= 0 given with `integer_bits` integer bits; the result is Q0.31."""
    a = np.asarray(a, np.int64)
    fractional_bits = 31 - integer_bits
    quarter = 1 << (fractional_bits - 2)
    shifted = wrap32((a & (quarter - 1)) - quarter)
    result = _exp_on_quarter_interval(saturating_rounding_multiply_by_pot(shifted, integer_bits))
    remainder = wrap32(shifted - a)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = (remainder & (1 << (fractional_bits + exponent))) != 0
            result = np.where(bit, _mul(result, multiplier), result)
    if integer_bits > 5:
        result = np.where(a < -(1 << (36 - integer_bits)), 0, result)
    return np.where(a == 0, INT32_MAX, result)


def _rounding_half_sum(a, b) -> np.ndarray:
    total = np.asarray(a, np.int64) + np.asarray(b, np.int64)
    return _truncating_divide_pow2(total + np.where(total >= 0, 1, -1), 1)


def one_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """1 / (1 + a) for a in [0, 1), Q0.31 in and out, by three Newton-Raphson steps (Q2.29 inside)."""
    half_denominator = _rounding_half_sum(a, INT32_MAX)
    x = wrap32(_48_OVER_17 + _mul(half_denominator, _MINUS_32_OVER_17))
    one_q2 = 1 << 29
    for _ in range(3):
        error = wrap32(one_q2 - _mul(half_denominator, x))
        x = wrap32(x + saturating_rounding_multiply_by_pot(_mul(x, error), 2))
    # x / 2 read with one integer bit more (the same raw), rescaled to Q0.31: a saturating doubling.
    return saturating_rounding_multiply_by_pot(x, 1)


def reciprocal(x: np.ndarray, integer_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's GetReciprocal: (1 / x scaled into Q0.31, bits over unit) for x > 0 with `integer_bits`."""
    x = np.asarray(x, np.int64)
    headroom = 31 - np.floor(np.log2(np.maximum(x, 1))).astype(np.int64)  # leading zeros of a uint32
    headroom = np.where(x > 0, headroom, 32)
    bits_over_unit = integer_bits - headroom
    shifted_minus_one = wrap32(((x << headroom) & (2**32 - 1)) - 2**31)
    return one_over_one_plus_x(shifted_minus_one), bits_over_unit


def logistic(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """1 / (1 + exp(-a)), `integer_bits` in, Q0.31 out."""
    a = np.asarray(a, np.int64)
    magnitude = np.where(a > 0, a, wrap32(-a))
    positive = one_over_one_plus_x(exp_on_negative_values(wrap32(-magnitude), integer_bits))
    result = np.where(a > 0, positive, wrap32(INT32_MAX - positive))
    return np.where(a == 0, 1 << 30, result)


def divide_round_half_away(total, count) -> np.ndarray:
    """total / count rounded half away from zero by C's truncating division of total +- count // 2."""
    total = np.asarray(total, np.int64)
    count = np.asarray(count, np.int64)
    half = count // 2
    shifted = np.where(total > 0, total + half, total - half)
    return np.sign(shifted) * (np.abs(shifted) // count)


LOGISTIC_INPUT_BITS = 4  # TFLite Micro's LOGISTIC rescales its input to Q4.27


def input_radius(integer_bits: int, left_shift: int, total_bits: int = 31) -> int:
    """The largest input difference that does not saturate after rescaling (TFLite's CalculateInputRadius)."""
    return math.floor(((1 << integer_bits) - 1) * 2.0 ** (total_bits - integer_bits) / 2.0**left_shift)


def micro_logistic_steps(x: np.ndarray, scale: float) -> np.ndarray:
    """TFLite Micro's int8 LOGISTIC of inputs x (less their zero point) at `scale`: output steps, zero point -128."""
    mantissa, left_shift = math.frexp(scale * 2.0 ** (31 - LOGISTIC_INPUT_BITS))
    multiplier = int(math.floor(mantissa * 2**31 + 0.5))
    radius = input_radius(LOGISTIC_INPUT_BITS, left_shift)
    q4 = multiply_by_quantized_multiplier(x, multiplier, left_shift)
    steps = rounding_divide_by_pot(logistic(q4, LOGISTIC_INPUT_BITS), 31 - 8) - 128
    steps = np.clip(steps, -128, 127)
    return np.where(x <= -radius, -128, np.where(x >= radius, 127, steps))
