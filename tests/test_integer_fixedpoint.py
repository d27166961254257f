"""TFLite's 32-bit fixed-point helpers: exact integer identities, and the nonlinear functions within their
stated precision of the real functions."""

import math

import numpy as np
import pytest

from tfqat import fixedpoint as fp

Q31 = 2.0**31


def test_rounding_doubling_high_mul_rounds_half_away_and_saturates():
    assert fp.rounding_doubling_high_mul(3, 1 << 30).tolist() == 2  # 1.5 -> 2
    assert fp.rounding_doubling_high_mul(-3, 1 << 30).tolist() == -1  # -1.5 -> -1: ties toward +inf here
    assert fp.rounding_doubling_high_mul(fp.INT32_MIN, fp.INT32_MIN).tolist() == fp.INT32_MAX


def test_rounding_divide_by_pot_rounds_half_away_from_zero():
    x = np.array([5, -5, 6, -6, 7, -7])
    assert fp.rounding_divide_by_pot(x, 1).tolist() == [3, -3, 3, -3, 4, -4]


@pytest.mark.parametrize("real", [2.0**-7, 0.3, 1.0, 1.7, 2.0**5, 1 / 49])
def test_quantize_multiplier_restores_the_real_multiplier(real):
    multiplier, shift = fp.quantize_multiplier(real)
    assert 2**30 <= multiplier < 2**31
    assert math.isclose(multiplier * 2.0 ** (shift - 31), real, rel_tol=2**-30)


def test_exp_on_negative_values_is_within_a_few_raw_steps():
    bits = 5
    raw = np.linspace(-(2**31) + 1, 0, 20001).astype(np.int64)
    exact = np.exp(raw / 2.0 ** (31 - bits)) * Q31
    assert np.max(np.abs(fp.exp_on_negative_values(raw, bits) - exact)) < 2**-20 * Q31


def test_one_over_one_plus_x_and_logistic():
    a = np.linspace(0, Q31 - 1, 10001).astype(np.int64)
    assert np.max(np.abs(fp.one_over_one_plus_x(a) - Q31 / (1 + a / Q31))) < 2**-24 * Q31
    x = np.linspace(-(2**31) + 1, 2**31 - 1, 10001).astype(np.int64)
    logistic = 1 / (1 + np.exp(-x / 2.0**27)) * Q31
    assert np.max(np.abs(fp.logistic(x, 4) - logistic)) < 2**-20 * Q31
    assert fp.logistic(np.array([0]), 4).tolist() == [1 << 30]


def test_reciprocal_of_a_q12_sum():
    total = np.array([1 << 19, 3 << 19, 1000 << 19])  # 1.0, 3.0, 1000.0 with 12 integer bits
    scale, bits = fp.reciprocal(total, 12)
    assert np.allclose(scale / Q31 * 2.0 ** -bits.astype(float), 1 / np.array([1.0, 3.0, 1000.0]), rtol=1e-6)


def test_divide_round_half_away_matches_c_integer_division():
    total = np.array([5, -5, 4, -4, 7, -7, 0])
    assert fp.divide_round_half_away(total, 2).tolist() == [3, -3, 2, -2, 4, -4, 0]
    assert fp.divide_round_half_away(total, np.array([4, 4, 3, 3, 9, 9, 9])).tolist() == [1, -1, 1, -1, 1, -1, 0]


def test_wrap32_wraps_like_int32():
    assert fp.wrap32(np.array([2**31, -(2**31) - 1, 5])).tolist() == [-(2**31), 2**31 - 1, 5]
