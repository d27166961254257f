"""Intervals and tests for accuracies: published values, exact small cases, and coverage by simulation."""

from tfqat._keras import keras  # noqa: F401

from math import comb

import numpy as np
import pytest

from tfqat.evaluation import stats


def test_wilson_interval_matches_newcombe():
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 -> 0.2553 to 0.3662.
    low, high = stats.wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


def test_wilson_interval_at_the_ends():
    low, high = stats.wilson_interval(0, 10)
    assert low == 0.0 and 0.0 < high < 0.35
    low, high = stats.wilson_interval(10, 10)
    assert 0.65 < low < 1.0 and high == 1.0


@pytest.mark.parametrize("accuracy", [0.3, 0.9, 0.97])
def test_wilson_interval_covers_the_true_accuracy(accuracy):
    """Of 4,000 simulated test splits of 593 images, about 95 % of the intervals hold the true accuracy."""
    rng = np.random.default_rng(0)
    counts = rng.binomial(593, accuracy, size=4000)
    covered = np.mean([low <= accuracy <= high for low, high in (stats.wilson_interval(int(c), 593) for c in counts)])
    assert 0.93 <= covered <= 0.97


def test_mcnemar_p_exact_cases():
    assert stats.mcnemar_p(0, 0) == 1.0
    assert stats.mcnemar_p(7, 7) == 1.0
    assert stats.mcnemar_p(0, 5) == pytest.approx(2 / 32)
    assert stats.mcnemar_p(5, 0) == pytest.approx(2 / 32)
    expected = 2 * sum(comb(44, k) for k in range(18)) / 2**44
    assert stats.mcnemar_p(27, 17) == pytest.approx(expected)
    assert stats.mcnemar_p(27, 17) == pytest.approx(0.1742, abs=1e-4)


def test_mcnemar_p_with_many_discordant_images():
    assert stats.mcnemar_p(600, 600) == 1.0
    assert 0.0 <= stats.mcnemar_p(300, 724) < 1e-30
    # The continuity-corrected normal approximation gives 0.07069 for these counts.
    assert stats.mcnemar_p(1550, 1450) == pytest.approx(0.07067, abs=1e-4)


def test_paired_difference_counts_and_sign():
    reference = np.array([1, 1, 1, 0, 0, 1], bool)
    other = np.array([1, 0, 0, 1, 0, 1], bool)
    result = stats.paired_difference(reference, other)
    assert result["images"] == 6
    assert (result["only_reference"], result["only_other"]) == (2, 1)
    assert result["difference"] == pytest.approx(other.mean() - reference.mean())
    low, high = result["interval"]
    assert low < result["difference"] < high
    assert result["mcnemar_p"] == stats.mcnemar_p(2, 1)


def test_paired_difference_of_identical_models():
    correct = np.arange(100) % 3 > 0
    result = stats.paired_difference(correct, correct)
    assert result["difference"] == 0.0 and result["mcnemar_p"] == 1.0
    # No image tells them apart; the 0.5 images added to each cell leave z / (n + 2) either side.
    assert result["interval"] == pytest.approx([-1.959964 / 102, 1.959964 / 102])


def test_paired_interval_is_narrower_than_two_independent_ones():
    rng = np.random.default_rng(1)
    reference = rng.random(593) < 0.92
    other = reference.copy()
    flip = rng.choice(593, 40, replace=False)
    other[flip] = ~other[flip]
    low, high = stats.paired_difference(reference, other)["interval"]
    a, b = stats.wilson_interval(int(reference.sum()), 593), stats.wilson_interval(int(other.sum()), 593)
    assert high - low < (a[1] - a[0]) + (b[1] - b[0])


@pytest.mark.parametrize("gain, loss", [(0.02, 0.02), (0.015, 0.035), (0.002, 0.01)])
def test_paired_interval_covers_the_true_difference(gain, loss):
    """Simulated pairs of models on 593 images, each image right for one model only with the given chances."""
    rng = np.random.default_rng(2)
    covered = []
    for _ in range(2000):
        draw = rng.random(593)
        only_other, only_reference = draw < gain, (draw >= gain) & (draw < gain + loss)
        both = (draw >= gain + loss) & (draw < 0.9)
        low, high = stats.paired_difference(only_reference | both, only_other | both)["interval"]
        covered.append(low <= gain - loss <= high)
    assert 0.93 <= np.mean(covered) <= 0.98


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="0 <= correct <= total"):
        stats.wilson_interval(5, 4)
    with pytest.raises(ValueError, match="total >= 1"):
        stats.wilson_interval(0, 0)
    with pytest.raises(ValueError, match="confidence"):
        stats.wilson_interval(1, 2, confidence=95)
    with pytest.raises(ValueError, match="3 and 2 images"):
        stats.paired_difference([True, False, True], [True, False])
    with pytest.raises(ValueError, match="no images"):
        stats.paired_difference([], [])
    with pytest.raises(ValueError, match=">= 0"):
        stats.mcnemar_p(-1, 3)
