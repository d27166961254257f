"""Dividing an integer accumulator by 2**n with a stated tie rule: integer adds, ands and shifts only.

A shift-only requantization divides the int32 accumulator by 2**n and rounds. Runtimes agree except on
ties (a remainder of exactly half a step) and, for a double rounding, on the values its first rounding
moves onto a tie; the rule is a parameter so that one executor reproduces each of them.

numpy's `>>` on signed integers is an arithmetic shift (floor division by 2**n) and `&` of a negative
number is taken in two's complement, so `x & (2**n - 1)` is the non-negative remainder of that floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Rule = Literal["half_away_from_zero", "half_up", "half_even", "tflite_double", "double_half_up"]

RULES: dict[str, str] = {
    "half_away_from_zero": "one rounding, ties away from zero (std::round; ARM's rounding shift on magnitudes)",
    "half_up": "one rounding, ties toward +infinity ((x + 2^(n-1)) >> n: CMSIS-NN, ESP32-S3)",
    "half_even": "one rounding, ties to the even neighbour (IEEE round-to-nearest-even: ESP32-P4, float32 kernels)",
    "tflite_double": "TFLite's MultiplyByQuantizedMultiplier with the Q31 multiplier 0.5: halve rounding ties up, "
    "then divide by 2^(n-1) rounding ties away from zero",
    "double_half_up": "halve rounding ties up, then divide by 2^(n-1) rounding ties up again",
}


@dataclass(frozen=True)
class LaneSplit:
    """A kernel whose vector loop takes `lanes` channels at a time and rounds them by `rule`, and rounds
    the channels left over (the last C mod lanes) by `leftover` (LiteRT's built-in DEPTHWISE_CONV_2D)."""

    rule: str
    lanes: int
    leftover: str


def check_rule(rule):
    """Returns the rule (a name or a LaneSplit), or raises ValueError naming the valid choices."""
    if isinstance(rule, LaneSplit):
        check_rule(rule.rule)
        check_rule(rule.leftover)
        if rule.lanes < 1:
            raise ValueError(f"LaneSplit lanes={rule.lanes} is not valid; use an integer >= 1")
        return rule
    if rule not in RULES:
        msg = f"ties={rule!r} is not a rounding rule; choose one of {sorted(RULES)}"
        raise ValueError(msg)
    return rule


def _floor_and_remainder(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    return x >> n, x & ((1 << n) - 1), 1 << (n - 1)


def _single(x: np.ndarray, n: int, ties: str) -> np.ndarray:
    floor, remainder, half = _floor_and_remainder(x, n)
    above = remainder > half
    tie = remainder == half
    if ties == "half_up":
        up = above | tie
    elif ties == "half_away_from_zero":
        up = above | (tie & (x >= 0))
    else:  # half_even
        up = above | (tie & ((floor & 1) == 1))
    return floor + up.astype(x.dtype)


def shift_round(accumulator: np.ndarray, n, ties) -> np.ndarray:
    """accumulator / 2**n rounded by `ties` (n may be an array broadcasting against the accumulator,
    e.g. one shift per output channel, the last axis); n <= 0 is an exact left shift."""
    x = np.asarray(accumulator, np.int64)
    n = np.asarray(n, np.int64)
    if isinstance(ties, LaneSplit):
        vector = x.shape[-1] // ties.lanes * ties.lanes
        n = np.broadcast_to(n, x.shape[-1:]) if n.ndim <= 1 else n
        head = shift_round(x[..., :vector], n[..., :vector], ties.rule)
        tail = shift_round(x[..., vector:], n[..., vector:], ties.leftover)
        return np.concatenate([head, tail], axis=-1)
    if n.ndim == 0:
        return _shift_round_scalar(x, int(n), ties)
    out = np.empty(np.broadcast_shapes(x.shape, n.shape), np.int64)
    x = np.broadcast_to(x, out.shape)
    n = np.broadcast_to(n, out.shape)
    for value in np.unique(n):
        where = n == value
        out[where] = _shift_round_scalar(x[where], int(value), ties)
    return out


def _shift_round_scalar(x: np.ndarray, n: int, ties: str) -> np.ndarray:
    if n <= 0:
        return x << -n
    if ties in ("tflite_double", "double_half_up"):
        halved = (x + 1) >> 1  # x / 2 rounded half up: SaturatingRoundingDoublingHighMul(x, 2^30)
        if n == 1:
            return halved
        return _single(halved, n - 1, "half_away_from_zero" if ties == "tflite_double" else "half_up")
    return _single(x, n, ties)


def count_ties(accumulator: np.ndarray, n) -> int:
    """How many accumulators lie exactly halfway between two steps of 2**n: where rounding rules can disagree."""
    x = np.asarray(accumulator, np.int64)
    n = np.broadcast_to(np.asarray(n, np.int64), x.shape)
    positive = n > 0
    shift = np.where(positive, n, 1)
    half = np.left_shift(np.int64(1), shift - 1)
    return int(np.count_nonzero(positive & ((x & ((half << 1) - 1)) == half)))

