"""How sure an accuracy is: an interval for one model's accuracy, and for the difference of two on the same images.

A test split of a few hundred images leaves about a point of sampling error on
every accuracy, so a report that compares models a point apart must say how
sure each comparison is. Pure functions of counts and boolean arrays.
"""

from math import comb, sqrt
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must be between 0 and 1")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(correct: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of the accuracy correct / total.

    Unlike p +- z * standard error it stays inside [0, 1] and keeps its
    coverage near 0 and 1, where accuracies of good models sit.
    """
    if total < 1 or not 0 <= correct <= total:
        raise ValueError(f"an accuracy needs 0 <= correct <= total and total >= 1, got {correct} of {total}")
    z = _z(confidence)
    p = correct / total
    denominator = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * sqrt(p * (1.0 - p) / total + z * z / (4 * total * total)) / denominator
    # All right or all wrong: the end is exact, where the formula leaves a rounding error.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def mcnemar_p(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar p-value for two models scored on the same images.

    Only the images exactly one model gets right say which is better; if both
    were equally accurate, each such image would be the first's with chance 1/2.
    The p-value is the chance of a split at least as uneven as the one seen.
    """
    if only_first < 0 or only_second < 0:
        raise ValueError(f"image counts must be >= 0, got {only_first} and {only_second}")
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    tail = sum(comb(discordant, k) for k in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**discordant)  # integers: 2.0**n overflows from n = 1024 images


def paired_difference(reference_correct, other_correct, confidence: float = CONFIDENCE) -> dict:
    """Accuracy of `other` minus that of `reference` on the same images, with its interval and McNemar's p.

    Pairing removes the images both get right or both get wrong from the
    uncertainty, so the interval is much narrower than that of two independent
    accuracies. It is Agresti and Min's (2005) adjusted Wald interval: the Wald
    interval of the paired difference after adding 0.5 images to each cell of
    the 2 x 2 table, which keeps its coverage when few images differ.

    Args:
      reference_correct, other_correct: one bool per image, in the same image order.
    Returns:
      difference (a fraction, other - reference), interval (low, high), images,
      only_reference (images only the reference gets right), only_other, mcnemar_p.
    """
    reference = np.asarray(reference_correct, bool).ravel()
    other = np.asarray(other_correct, bool).ravel()
    if reference.shape != other.shape:
        raise ValueError(f"the two models are scored on {reference.size} and {other.size} images; pair the same images")
    images = int(reference.size)
    if images == 0:
        raise ValueError("no images to compare the two models on")
    only_reference = int(np.sum(reference & ~other))
    only_other = int(np.sum(other & ~reference))
    z = _z(confidence)
    adjusted = images + 2.0
    gain, loss = (only_other + 0.5) / adjusted, (only_reference + 0.5) / adjusted
    half = z * sqrt(max(0.0, (gain + loss - (gain - loss) ** 2) / adjusted))
    return {
        "difference": (only_other - only_reference) / images,
        "interval": [max(-1.0, gain - loss - half), min(1.0, gain - loss + half)],
        "confidence": confidence,
        "images": images,
        "only_reference": only_reference,
        "only_other": only_other,
        "mcnemar_p": mcnemar_p(only_reference, only_other),
    }
