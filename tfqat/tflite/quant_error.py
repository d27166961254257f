"""How far an int8 tensor is from its float counterpart: SQNR, clipping, zeroing. Arrays in, numbers out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tfqat.quantization.pow2 import is_power_of_two

# Integer ranges: activations use all of int8 (the zero point says where 0 is);
# TFLite's int8 weights are symmetric, [-127, 127] with zero point 0.
ACTIVATION_RANGE = (-128, 127)
WEIGHT_RANGE = (-127, 127)


def sqnr_from_energies(signal: float, noise: float) -> float:
    """10 log10(signal / noise) in dB; inf without noise (identical tensors, even all-zero ones)."""
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(reference, approximation) -> float:
    """SQNR of `approximation` against `reference`: 10 log10(sum(f^2) / sum((f - a)^2)) in dB.

    Identical arrays give float('inf'); an all-zero reference with any error gives -inf.
    """
    return sqnr_from_energies(*_energies(np.asarray(reference), np.asarray(approximation)))


def clipped_fraction(values, scale, zero_point: int = 0, qrange: tuple[int, int] = ACTIVATION_RANGE) -> float:
    """Fraction of float values that saturate: round(value / scale) + zero_point falls outside [qmin, qmax].

    That is, values beyond the grid's span [(qmin - zero_point) * scale, (qmax -
    zero_point) * scale] by half a step or more (ties round away from zero, as in
    LiteRT); a value within half a step of the span's end only rounds. Half a step
    of slack also keeps float32 scales, whose qmax * scale can sit a hair below a
    weight tensor's largest value, from counting that value as clipped.
    """
    values = np.asarray(values)
    return fraction(_clipped_count(values, scale, zero_point, qrange), values.size)


def zeroed_fraction(reference, quantized, zero_point: int = 0) -> float:
    """Fraction of the nonzero float values whose integer is the zero point: they rounded to 0."""
    return fraction(*_zeroed_counts(np.asarray(reference), np.asarray(quantized), zero_point))


def _energies(reference: np.ndarray, approximation: np.ndarray) -> tuple[float, float]:
    # float64: float32 sums over millions of values lose the digits that matter at 40+ dB.
    reference = reference.astype(np.float64, copy=False).ravel()
    error = reference - approximation.astype(np.float64, copy=False).ravel()
    return float(np.dot(reference, reference)), float(np.dot(error, error))


def _clipped_count(values: np.ndarray, scale, zero_point: int, qrange: tuple[int, int]) -> int:
    scale = np.asarray(scale, np.float64)
    low, high = (qrange[0] - zero_point - 0.5) * scale, (qrange[1] - zero_point + 0.5) * scale
    return int(np.count_nonzero((values <= low) | (values >= high)))


def _zeroed_counts(reference: np.ndarray, quantized: np.ndarray, zero_point: int) -> tuple[int, int]:
    nonzero = reference != 0
    return int(np.count_nonzero(nonzero & (quantized == zero_point))), int(np.count_nonzero(nonzero))


def fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def scale_exponents(scales: Sequence[float]) -> tuple[float, float, bool]:
    """(smallest, largest) log2 of the scales, ints when every scale is exactly 2**k, and whether it is."""
    exact = is_power_of_two(scales)
    logs = [int(math.log2(s)) if exact else (math.log2(s) if s > 0 else math.nan) for s in scales]
    return min(logs), max(logs), exact


@dataclass
class Tally:
    """Running sums over the images of one tensor; memory stays bounded however many images run."""

    signal: float = 0.0
    noise: float = 0.0
    clipped: int = 0
    zeroed: int = 0
    nonzero: int = 0
    count: int = 0

    def add(self, reference: np.ndarray, quantized: np.ndarray, scale, zero_point: int, qrange) -> None:
        dequantized = (quantized.astype(np.float32) - np.float32(zero_point)) * np.asarray(scale, np.float32)
        signal, noise = _energies(reference, dequantized)
        zeroed, nonzero = _zeroed_counts(reference, quantized, zero_point)
        self.signal += signal
        self.noise += noise
        self.clipped += _clipped_count(reference, scale, zero_point, qrange)
        self.zeroed += zeroed
        self.nonzero += nonzero
        self.count += reference.size
