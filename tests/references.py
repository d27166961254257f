"""Plain-Python references the tests compare tfqat's math with (shared by several test files)."""

import numpy as np

from tfqat.quantization import pow2


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


def fake_quant_reference(x, scale, qmin, qmax):
    """TensorFlow's FakeQuant arithmetic in numpy float32: clamp, shift by the minimum, round half up."""
    x = np.asarray(x, np.float32)
    scale = np.asarray(scale, np.float32)
    low, high = np.float32(qmin) * scale, np.float32(qmax) * scale
    shifted = np.clip(x, low, high) - low
    return (np.floor(shifted * (np.float32(1) / scale) + np.float32(0.5)) * scale + low).astype(np.float32)
