"""Integer kernels of the shift-only int8 ops: integer multiply-accumulate, then a rounding shift.

Each kernel takes the op, its tensors' integer values (int64 arrays) and a `Requantize` that divides an
accumulator by 2**n with the executor's tie rule, counts the ties and clamps to the output's range.
Activations are NHWC; TFLite's weight layouts: CONV_2D [out, kh, kw, in], DEPTHWISE_CONV_2D
[1, kh, kw, in * multiplier], FULLY_CONNECTED [out, in].
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tfqat.integer.model import ExecutorError, Operator, Tensor

# Requantize(accumulator, n, output tensor, fused activation) -> int8 values
Requantize = Callable[[np.ndarray, np.ndarray, Tensor, int], np.ndarray]

_SAME, _VALID = 0, 1


def exponent(tensor: Tensor) -> np.ndarray:
    """log2 of the tensor's scale (an int64 scalar) or per-channel scales (an array); ExecutorError naming
    the tensor when one is not 2**k."""
    scales = np.asarray(tensor.scales[0] if len(tensor.scales) == 1 else tensor.scales, np.float64)
    if not tensor.scales:
        raise ExecutorError(f"{tensor.label} is not quantized: the executor runs fully integer models")
    mantissa, power = np.frexp(scales)
    bad = np.flatnonzero(np.atleast_1d(mantissa != 0.5))
    if bad.size:
        value = float(np.atleast_1d(scales)[bad[0]])
        where = f" (channel {bad[0]} of {np.size(scales)})" if np.size(scales) > 1 else ""
        raise ExecutorError(
            f"{tensor.label} has scale {value:.6g} = 2^{np.log2(value):.3f}{where}, not a power of two: not shift-only"
        )
    return (power - 1).astype(np.int64)


def _padding(size: int, kernel: int, stride: int, dilation: int, padding: int, out: int) -> tuple[int, int]:
    if padding == _VALID:
        return 0, 0
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def windows(x: np.ndarray, kh: int, kw: int, options: dict, out_hw: tuple[int, int], fill: int = 0) -> np.ndarray:
    """x [N, H, W, C] -> [N, OH, OW, C, kh, kw]: each output position's input window (padding = `fill`)."""
    sh, sw = options.get("strideH", 1), options.get("strideW", 1)
    dh, dw = options.get("dilationHFactor", 1), options.get("dilationWFactor", 1)
    padding = options.get("padding", _VALID)
    top, bottom = _padding(x.shape[1], kh, sh, dh, padding, out_hw[0])
    left, right = _padding(x.shape[2], kw, sw, dw, padding, out_hw[1])
    if top or bottom or left or right:
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    view = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    return view[:, :: sh, :: sw, :, :: dh, :: dw][:, : out_hw[0], : out_hw[1]]


def _linear_exponents(op: Operator, tensors: list[Tensor]) -> np.ndarray:
    x, w, out = tensors[0], tensors[1], tensors[-1]
    return exponent(out) - exponent(x) - exponent(w)  # n per output channel (or one)


def _with_bias(acc: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    return acc if bias is None else acc + bias.astype(np.int64)


def conv_2d(op, tensors, values, requantize: Requantize):
    x_t, w_t, out = tensors[0], tensors[1], tensors[-1]
    x = values[0] - x_t.zero_point
    w = values[1]
    n_out = (x.shape[0], *out.shape[1:3])
    patches = windows(x, w.shape[1], w.shape[2], op.options, n_out[1:])  # N, OH, OW, C, kh, kw
    acc = np.tensordot(patches, w.transpose(3, 1, 2, 0), axes=([3, 4, 5], [0, 1, 2]))
    acc = _with_bias(acc, values[2] if len(values) > 2 else None)
    return requantize(acc, _linear_exponents(op, tensors), out, op.options.get("fusedActivationFunction", 0))


def depthwise_conv_2d(op, tensors, values, requantize: Requantize):
    x_t, w_t, out = tensors[0], tensors[1], tensors[-1]
    x = values[0] - x_t.zero_point
    w = values[1][0]  # kh, kw, C * multiplier
    multiplier = w.shape[-1] // x.shape[-1]
    if multiplier > 1:
        x = np.repeat(x, multiplier, axis=-1)  # output channel c reads input channel c // multiplier
    patches = windows(x, w.shape[0], w.shape[1], op.options, out.shape[1:3])
    acc = np.zeros(patches.shape[:4], np.int64)
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            acc += patches[..., i, j] * w[i, j]
    acc = _with_bias(acc, values[2] if len(values) > 2 else None)
    return requantize(acc, _linear_exponents(op, tensors), out, op.options.get("fusedActivationFunction", 0))


def fully_connected(op, tensors, values, requantize: Requantize):
    x_t, w_t, out = tensors[0], tensors[1], tensors[-1]
    w = values[1]
    x = values[0].reshape(-1, w.shape[1]) - x_t.zero_point
    acc = _with_bias(x @ w.T, values[2] if len(values) > 2 else None)
    if op.options.get("keepNumDims"):
        acc = acc.reshape(*values[0].shape[:-1], w.shape[0])
    return requantize(acc, _linear_exponents(op, tensors), out, op.options.get("fusedActivationFunction", 0))


def add_or_sub(op, tensors, values, requantize: Requantize):
    """ADD and SUB: both inputs on the finer of their grids, summed exactly, then one rounding.

    The accumulator carries one guard bit (x 2), as TFLite's kernels scale their inputs up by 2**20
    before the output's MultiplyByQuantizedMultiplier: its first halving is then exact, so a double
    rule rounds the sum once, as those kernels do.
    """
    a_t, b_t, out = tensors
    e_a, e_b = int(exponent(a_t)), int(exponent(b_t))  # per-tensor
    low = min(e_a, e_b)
    a = (values[0] - a_t.zero_point) << (e_a - low)
    b = (values[1] - b_t.zero_point) << (e_b - low)
    acc = (a - b if op.name == "SUB" else a + b) << 1
    return requantize(acc, exponent(out) - low + 1, out, op.options.get("fusedActivationFunction", 0))


def mul(op, tensors, values, requantize: Requantize):
    a_t, b_t, out = tensors
    acc = (values[0] - a_t.zero_point) * (values[1] - b_t.zero_point)
    n = exponent(out) - exponent(a_t) - exponent(b_t)
    return requantize(acc, n, out, op.options.get("fusedActivationFunction", 0))


def reduced_axes(op: Operator, values, rank: int) -> tuple[int, ...]:
    return tuple(sorted({int(a) % rank for a in np.ravel(values[1])}))


def mean_power_of_two(op, tensors, values, requantize: Requantize):
    """MEAN over 2**k values: the sum's scale is s_in / 2**k, so the division folds into the shift."""
    x_t, out = tensors[0], tensors[-1]
    axes = reduced_axes(op, values, values[0].ndim)
    count = int(np.prod([values[0].shape[a] for a in axes]))
    acc = np.sum(values[0] - x_t.zero_point, axis=axes, keepdims=bool(op.options.get("keepDims")))
    n = exponent(out) - exponent(x_t) + (count.bit_length() - 1)
    return requantize(acc, n, out, 0)


def requantize_op(op, tensors, values, requantize: Requantize):
    """QUANTIZE from int8 to int8: a rescale s_in / s_out."""
    x_t, out = tensors
    return requantize(values[0] - x_t.zero_point, exponent(out) - exponent(x_t), out, 0)


def max_pool_2d(op, tensors, values, requantize: Requantize):
    out = tensors[-1]
    o = op.options
    patches = windows(values[0], o["filterHeight"], o["filterWidth"], o, out.shape[1:3], fill=np.iinfo(np.int64).min)
    low, high = activation_range(out, o.get("fusedActivationFunction", 0))
    return np.clip(patches.max(axis=(-2, -1)), low, high)


def pad(op, tensors, values, requantize: Requantize):
    paddings = np.asarray(values[1]).reshape(-1, 2)
    fill = tensors[-1].zero_point if op.name == "PAD" or len(values) < 3 else int(np.ravel(values[2])[0])
    return np.pad(values[0], [tuple(p) for p in paddings], constant_values=fill)


def reshape(op, tensors, values, requantize: Requantize):
    out = tensors[-1]
    shape = list(out.shape)
    if shape and shape[0] in (1, -1) and values[0].shape[0] != 1:
        shape[0] = values[0].shape[0]  # the file's batch of 1 stands for any batch
    return values[0].reshape(shape)


def concatenation(op, tensors, values, requantize: Requantize):
    out = tensors[-1]
    for t in tensors[:-1]:
        if t.scales != out.scales or t.zero_points != out.zero_points:
            raise ExecutorError(
                f"op {op.index} CONCATENATION: {t.label} has another scale than its output; TFLite requantizes "
                "it in float, which the executor does not reproduce"
            )
    axis = op.options.get("axis", -1) % values[0].ndim
    low, high = activation_range(out, op.options.get("fusedActivationFunction", 0))
    return np.clip(np.concatenate(values, axis=axis), low, high)


def activation_range(out: Tensor, fused: int) -> tuple[int, int]:
    """The integer range a fused activation (0 none, 1 RELU, 2 RELU_N1_TO_1, 3 RELU6) clamps to."""
    info = np.iinfo(out.dtype)
    low, high = int(info.min), int(info.max)
    if fused == 0:
        return low, high
    scale, zero = out.scales[0], out.zero_point

    def q(v: float) -> int:  # TFLite: zero point + round(v / scale), ties away from zero
        steps = v / scale
        return zero + int(np.sign(steps) * np.floor(abs(steps) + 0.5))

    if fused == 1:
        return max(low, zero), high
    if fused == 3:
        return max(low, zero), min(high, q(6.0))
    if fused == 2:
        return max(low, q(-1.0)), min(high, q(1.0))
    raise ExecutorError(f"{out.label}: fused activation {fused} is not one the executor knows")
