"""Rounding shifts: each tie rule on exact halves and near halves, tie counts, and the shift path equal to TFLite's
32-bit multiplier path (MultiplyByQuantizedMultiplier with the Q31 multiplier 0.5) on every accumulator tried."""

import numpy as np
import pytest

from tfqat import fixedpoint as fp
from tfqat.integer.rounding import count_ties, shift_round
from tfqat.targets import RULES, LaneSplit, check_rule

# accumulator, shift n -> expected result per rule
CASES = [
    # exact ties: x / 2**n = +-2.5, +-3.5, +-0.5
    (20, 3, {"half_away_from_zero": 3, "half_up": 3, "half_even": 2, "tflite_double": 3, "double_half_up": 3}),
    (-20, 3, {"half_away_from_zero": -3, "half_up": -2, "half_even": -2, "tflite_double": -3, "double_half_up": -2}),
    (28, 3, {"half_away_from_zero": 4, "half_up": 4, "half_even": 4, "tflite_double": 4, "double_half_up": 4}),
    (-4, 3, {"half_away_from_zero": -1, "half_up": 0, "half_even": 0, "tflite_double": -1, "double_half_up": 0}),
    # just below a tie: 19 / 8 = 2.375; a double rounding first halves 19 to 10 (9.5 up), a tie, then rounds it up
    (19, 3, {"half_away_from_zero": 2, "half_up": 2, "half_even": 2, "tflite_double": 3, "double_half_up": 3}),
    # -21 / 8 = -2.625: halved to -10 (-10.5 up), then -10 / 4 = -2.5 is a tie
    (-21, 3, {"half_away_from_zero": -3, "half_up": -3, "half_even": -3, "tflite_double": -3, "double_half_up": -2}),
    # n = 1: the double rules are one halving, ties up
    (-3, 1, {"half_away_from_zero": -2, "half_up": -1, "half_even": -2, "tflite_double": -1, "double_half_up": -1}),
]


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("x, n, expected", CASES)
def test_each_rule_on_ties_and_near_ties(rule, x, n, expected):
    assert int(shift_round(np.array([x]), n, rule)[0]) == expected[rule]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_no_shift_is_exact_and_a_negative_shift_multiplies(rule):
    x = np.arange(-50, 50)
    assert np.array_equal(shift_round(x, 0, rule), x)
    assert np.array_equal(shift_round(x, -3, rule), x * 8)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_away_from_ties_every_rule_rounds_to_nearest(rule):
    x = np.arange(-4096, 4096)
    n = 5
    exact = x / 2.0**n
    far = np.abs(exact - np.floor(exact) - 0.5) > 2.0 ** -(n - 1)  # more than one halving away from a tie
    assert np.array_equal(shift_round(x, n, rule)[far], np.round(exact[far]).astype(np.int64))


def test_tflite_double_equals_the_32_bit_multiplier_path():
    """The shift path (adds and shifts) gives what MultiplyByQuantizedMultiplier(x, 2**30, 1 - n) gives."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.arange(-70000, 70000), rng.integers(-(2**30), 2**30, 200000)])
    for n in (1, 2, 3, 7, 12, 20):
        assert np.array_equal(shift_round(x, n, "tflite_double"), fp.multiply_by_quantized_multiplier(x, 1 << 30, 1 - n))


def test_per_channel_shifts_and_lane_split():
    acc = np.array([[20, 20, 20, 20, 20]])  # 2.5 on every channel
    assert shift_round(acc, np.array([3, 3, 3, 3, 3]), "half_even").tolist() == [[2, 2, 2, 2, 2]]
    assert shift_round(acc, np.array([3, 2, 1, 0, -1]), "half_up").tolist() == [[3, 5, 10, 20, 40]]
    split = LaneSplit("half_up", 2, "half_even")  # channels 0..3 in lanes of 2, channel 4 left over
    assert shift_round(acc, 3, split).tolist() == [[3, 3, 3, 3, 2]]


def test_count_ties_counts_exact_halves_only():
    acc = np.array([[4, 12, 5, -4, 8], [3, -12, 0, 7, 4]])
    assert count_ties(acc, 3) == 5  # 4, 12, -4, -12, 4 are 0.5, 1.5, -0.5, -1.5, 0.5 steps
    assert count_ties(acc, np.array([3, 3, 3, 3, 0])) == 4  # the last channel is not shifted
    assert count_ties(acc, 0) == 0


def test_check_rule_names_the_choices():
    with pytest.raises(ValueError, match=r"ties='nearest' is not a rounding rule; choose one of \['double_half_up'"):
        check_rule("nearest")
    with pytest.raises(ValueError, match="lanes=0"):
        check_rule(LaneSplit("half_up", 0, "half_even"))
