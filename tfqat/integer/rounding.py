"""Dividing an integer accumulator by 2**n with a stated tie rule: integer adds, ands and shifts only.

A shift-only requantization divides the int32 accumulator by 2**n and rounds. Runtimes agree except on
ties (a remainder of exactly half a step) and, for a double rounding, on the values its first rounding
moves onto a tie; the rule (named in tfqat.targets.RULES) is a parameter so that one executor reproduces
each of them.

numpy's `>>` on signed integers is an arithmetic shift (floor division by 2**n) and `&` of a negative
number is taken in two's complement, so `x & (2**n - 1)` is the non-negative remainder of that floor.
"""

from __future__ import annotations

import numpy as np

from tfqat.targets import LaneSplit


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

