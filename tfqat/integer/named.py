"""The int8 ops that are not a shift, computed as the runtimes compute them (the verifier names these).

SOFTMAX: gemmlowp fixed point (input x beta rescaled to Q5.26, exp on negative values, a sum in
Q12.19, its reciprocal, a rounding shift to 1/256 steps), in LiteRT's reference kernels and in TFLite
Micro. LOGISTIC: LiteRT fills a 256-entry table with float32 1 / (1 + exp(-x)) rounded half away from
zero ("litert"); TFLite Micro computes gemmlowp's fixed-point logistic from Q4.27 ("micro"); ESP-DL
("espdl") looks up sigmoid rounded to 2**-7 (no zero point), which TFLite's grid (1/256, zero point -128)
holds on its even steps, so the requantization to 2**-7 after it is exact. MEAN over
a count that is not a power of two: the sum times a Q31 multiplier (s_in / s_out) / count, or on XNNPACK
("xnnpack") the raw sum times a float32 scale, and on ESP-DL ("espdl") the sum times a float32 scale
rounded by the chip's rule. And AVERAGE_POOL_2D: the window's sum divided by the number
of in-bounds elements, ties away from zero. "xnnpack" computes every other op as "litert".
"""

from __future__ import annotations

import numpy as np

from tfqat import fixedpoint as fp
from tfqat.integer.kernels import activation_range, reduced_axes, windows
from tfqat.integer.model import ExecutorError, Operator, Tensor
from tfqat.targets import MEAN_ARITHMETIC, SIGNED_SIGMOID_EXPONENT as SIGMOID_EXPONENT

HOW = {
    ("SOFTMAX", "litert"): "gemmlowp fixed-point exp and reciprocal",
    ("SOFTMAX", "micro"): "gemmlowp fixed-point exp and reciprocal",
    ("LOGISTIC", "litert"): "a table of float32 1 / (1 + exp(-x))",
    ("LOGISTIC", "micro"): "gemmlowp fixed-point logistic",
    ("LOGISTIC", "espdl"): "the chip's table: sigmoid in steps of 2^-7 (0 to 127, no zero point), on the output's grid",
    ("MEAN", "litert"): "the sum times a Q31 multiplier (s_in / s_out) / count",
    ("MEAN", "micro"): "the sum times a Q31 multiplier (s_in / s_out) / count",
    ("AVERAGE_POOL_2D", "litert"): "the window's sum divided by its element count",
    ("AVERAGE_POOL_2D", "micro"): "the window's sum divided by its element count",
    ("MEAN", "xnnpack"): "the raw sum times the float32 scale (s_in / s_out) * (1 / count), rounded half to even",
    ("MEAN", "espdl"): "the sum times the float32 scale (1 / count) * (s_in / s_out), rounded by the chip's rule",
    ("AVERAGE_POOL_2D", "espdl"): "the window's sum times the float32 scale (1 / count) * (s_in / s_out), rounded "
    "by the chip's rule",
}
for _op in ("SOFTMAX", "LOGISTIC", "AVERAGE_POOL_2D"):
    HOW[_op, "xnnpack"] = HOW[_op, "litert"]
"""How each named op is computed, per flavour (the executor's report quotes it)."""

_SOFTMAX_DIFF_BITS, _SOFTMAX_SUM_BITS = 5, 12


def softmax(op: Operator, tensors: list[Tensor], values: list[np.ndarray], flavour: str, rule: str = "") -> np.ndarray:
    x_t = tensors[0]
    real = min(op.options.get("beta", 1.0) * x_t.scales[0] * 2.0 ** (31 - _SOFTMAX_DIFF_BITS), 2.0**31 - 1)
    multiplier, left_shift = fp.quantize_multiplier(real)
    diff_min = -fp.input_radius(_SOFTMAX_DIFF_BITS, left_shift)
    x = values[0]
    diff = x - x.max(axis=-1, keepdims=True)
    valid = diff >= diff_min
    rescaled = fp.rounding_doubling_high_mul(fp.wrap32(diff << left_shift), multiplier)
    exps = fp.exp_on_negative_values(rescaled, _SOFTMAX_DIFF_BITS)
    total = np.sum(np.where(valid, fp.rounding_divide_by_pot(exps, _SOFTMAX_SUM_BITS), 0), axis=-1, keepdims=True)
    scale, bits_over_unit = fp.reciprocal(total, _SOFTMAX_SUM_BITS)
    steps = fp.rounding_divide_by_pot(fp.rounding_doubling_high_mul(scale, exps), bits_over_unit + 31 - 8)
    return np.where(valid, np.clip(steps - 128, -128, 127), -128)


def logistic(op: Operator, tensors: list[Tensor], values: list[np.ndarray], flavour: str, rule: str = "") -> np.ndarray:
    x_t, out = tensors
    if flavour == "micro":
        return _logistic_fixed_point(x_t, values[0] - x_t.zero_point)
    if flavour == "espdl":
        return _on_grid(espdl_sigmoid(values[0] - x_t.zero_point, x_t.scales[0]), SIGMOID_EXPONENT, out)
    table = _logistic_table(x_t.scales[0], x_t.zero_point, out.scales[0], out.zero_point)
    return table[values[0] + 128]


def _logistic_table(in_scale: float, in_zero: int, out_scale: float, out_zero: int) -> np.ndarray:
    steps = np.arange(-128, 128, dtype=np.int64)
    x = np.float32(in_scale) * (steps - in_zero).astype(np.float32)
    e = np.exp(-x.astype(np.float64)).astype(np.float32)  # a correctly rounded float32 expf
    y = (np.float32(1) / (np.float32(1) + e)) * (np.float32(1) / np.float32(out_scale))
    rounded = np.sign(y) * np.floor(np.abs(y) + np.float32(0.5))  # exact for float32 y: |y| + 0.5 < 2**24
    return np.clip(rounded.astype(np.int64) + out_zero, -128, 127)


def espdl_sigmoid(steps: np.ndarray, in_scale: float) -> np.ndarray:
    """ESP-DL's int8 sigmoid, the table esp-ppq writes: sigmoid(x) in steps of 2**-7, rounded, 0 to 127.

    128 * sigmoid(x) is a tie only at x = 0 (64 exactly), so the chips' roundings agree; computed in float64,
    as the Keras model does (`tfqat.quantization.layers.espdl_logistic`)."""
    x = np.asarray(steps, np.float64) * in_scale
    grid = 2.0**-SIGMOID_EXPONENT
    return np.minimum(np.floor(grid / (1.0 + np.exp(-x)) + 0.5), grid - 1).astype(np.int64)


def _on_grid(steps: np.ndarray, exponent: int, out: Tensor) -> np.ndarray:
    """Integers at 2**exponent on the output's grid; ExecutorError when the grid cannot hold them exactly."""
    factor = 2.0**exponent / out.scales[0]
    if factor != round(factor):
        raise ExecutorError(f"{out.label}: scale {out.scales[0]:g} cannot hold steps of 2^{exponent} exactly")
    return np.clip(steps * int(factor) + out.zero_point, -128, 127)


def _logistic_fixed_point(x_t: Tensor, x: np.ndarray) -> np.ndarray:
    return fp.micro_logistic_steps(x, x_t.scales[0])


def mean(op: Operator, tensors: list[Tensor], values: list[np.ndarray], flavour: str, rule: str = "") -> np.ndarray:
    """`rule`: the target's single rounding of the MEAN (ESP-DL's chips differ only in it)."""
    x_t, out = tensors[0], tensors[-1]
    axes = reduced_axes(op, values, values[0].ndim)
    count = int(np.prod([values[0].shape[a] for a in axes]))
    keep = bool(op.options.get("keepDims"))
    if MEAN_ARITHMETIC[flavour] == "espdl_float32":
        return _espdl_average(np.sum(values[0], axis=axes, keepdims=keep), count, x_t, out, rule)
    if MEAN_ARITHMETIC[flavour] == "float32":
        f32 = np.float32
        scale = f32(x_t.scales[0]) / f32(out.scales[0]) * (f32(1) / f32(count))
        offset = f32(out.zero_point) - f32(count * x_t.zero_point) * scale
        raw_sum = np.sum(values[0], axis=axes, keepdims=keep).astype(f32)  # an int32 below 2**24: exact
        return np.clip(np.rint(raw_sum * scale + offset), -128, 127).astype(np.int64)  # rint: half to even
    total = np.sum(values[0] - x_t.zero_point, axis=axes, keepdims=keep)
    multiplier, shift = fp.quantize_multiplier(x_t.scales[0] / out.scales[0])
    extra = min(count.bit_length() - 1, 32, 31 + shift)
    multiplier, shift = (multiplier << extra) // count, shift - extra
    steps = fp.multiply_by_quantized_multiplier(total, multiplier, shift) + out.zero_point
    return np.clip(steps, -128, 127)


def _espdl_average(total: np.ndarray, count, x_t: Tensor, out: Tensor, rule: str) -> np.ndarray:
    """ESP-DL's average of int8 values (no zero points): float32(sum) * ((1.0f / count) * 2**(e_in - e_out)),
    rounded by the chip's rule (floorf(x + 0.5) on ESP32-S3, to even on ESP32-P4), saturated."""
    f32 = np.float32
    scale = (f32(1) / np.asarray(count).astype(f32)) * f32(x_t.scales[0] / out.scales[0])  # times 2**k: exact
    product = np.asarray(total).astype(f32) * scale
    steps = np.floor(product + f32(0.5)) if rule == "half_up" else np.rint(product)
    return np.clip(steps, -128, 127).astype(np.int64)


def average_pool_2d(op: Operator, tensors: list[Tensor], values: list[np.ndarray], flavour: str, rule: str = "") -> np.ndarray:
    out = tensors[-1]
    o = op.options
    kh, kw = o["filterHeight"], o["filterWidth"]
    x = values[0]
    total = windows(x, kh, kw, o, out.shape[1:3]).sum(axis=(-2, -1))
    count = windows(np.ones((1, *x.shape[1:3], 1), np.int64), kh, kw, o, out.shape[1:3]).sum(axis=(-2, -1))
    if MEAN_ARITHMETIC[flavour] == "espdl_float32":
        return _espdl_average(total, count, tensors[0], out, rule)
    low, high = activation_range(out, o.get("fusedActivationFunction", 0))
    return np.clip(fp.divide_round_half_away(total, count), low, high)
