"""Where ESP-DL expects each value: its filter layout, explicit pads and NHWC shapes. Pure numpy.

ESP32-S3 and ESP32-P4 read an int8 filter in blocks of 16 output channels, innermost: (N/16) x H x W x C x 16,
so one load feeds 16 multiply-accumulate lanes. Output channels left over (N mod 16) follow in plain
N x H x W x C order for a conv, and H x W x N order for a depthwise conv. The file's `dims` name the
filter's logical shape (H, W, C, N) or (H, W, N, 1) for a depthwise conv, not this byte order.
"""

from __future__ import annotations

import numpy as np

LANES = 16  # int8 output channels per block


def blocked_filter(filters: np.ndarray, depthwise: bool = False) -> tuple[np.ndarray, tuple[int, ...], str]:
    """(values in storage order, logical dims, layout name) of int8 filters given as [N, H, W, C] (a depthwise
    conv's as [N, H, W, 1]: one input channel per output channel)."""
    n, h, w, c = filters.shape
    aligned = n // LANES * LANES
    blocks = filters[:aligned].reshape(n // LANES, LANES, h, w, c).transpose(0, 2, 3, 4, 1)
    rest = filters[aligned:]
    if depthwise:
        rest = rest.transpose(3, 1, 2, 0)  # C (= 1) x H x W x N
    values = np.concatenate([blocks.reshape(-1), rest.reshape(-1)])
    layout = "(N/16)HWC16" + ("_UNALIGNED" if aligned != n else "")
    dims = (h, w, n, c) if depthwise else (h, w, c, n)
    return values, dims, layout


def same_pads(size: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
              dilations: tuple[int, int]) -> tuple[int, int, int, int]:
    """TFLite's SAME padding as ESP-DL's explicit pads (ONNX order: top, left, bottom, right); the odd pixel
    goes to the end, as TensorFlow puts it."""
    begin, end = [], []
    for length, k, s, d in zip(size, kernel, strides, dilations):
        out = -(-length // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - length, 0)
        begin.append(total // 2)
        end.append(total - total // 2)
    return begin[0], begin[1], end[0], end[1]
