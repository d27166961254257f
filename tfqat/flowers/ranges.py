"""Per-channel weight ranges of a model, and what per-tensor power-of-two int8 does to them.

`weight_ranges` reads a Keras model; `layer_range_stats` is a pure function of
its output. Together they explain why per-tensor power-of-two PTQ fails on
MobileNetV2's depthwise layers. Nothing here needs TensorFlow at import time,
so reports can be rendered without it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    from tfqat._keras import keras

# tfqat.quantization.pow2's WEIGHT_QMAX and MIN_EXPONENT, repeated so that reports need no
# TensorFlow (a test checks they agree). Channels below the smallest scale
# tfqat uses are numerically zero: dead channels (BN gamma ~ 0) that would
# otherwise dominate every spread.
_WEIGHT_QMAX = 127
DEAD_EXPONENT = -24


def layer_range_stats(weight_ranges: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per layer: the spread of per-channel max|w| and what per-tensor power-of-two int8 does to it.

    Channels with max|w| < 2**DEAD_EXPONENT are counted as `dead` (BN gamma ~ 0)
    and left out of min, median and ratio. `step` is the per-tensor weight step
    2^k (smallest k with max / 2^k <= 127, as tfqat.quantization.pow2); `median_levels` is
    the median live channel's max|w| / step, the int8 levels it can use;
    `zeroed` counts live channels below half a step, which round to all zeros.
    Layers with no live channel are skipped.
    """
    stats = []
    for layer in weight_ranges.get("layers", []):
        values = np.asarray(layer["channel_max_abs"], dtype=np.float64)
        live = values[values >= 2.0**DEAD_EXPONENT]
        if live.size == 0:
            continue
        top = float(live.max())
        step = 2.0 ** _weight_exponent(top)
        stats.append({
            "name": layer["name"], "kind": layer["kind"], "channels": int(values.size),
            "dead": int(values.size - live.size), "min": float(live.min()), "median": float(np.median(live)),
            "max": top, "ratio": top / float(live.min()), "step": step, "half_step": step / 2,
            "median_levels": float(np.median(live)) / step, "zeroed": int(np.sum(live < step / 2)),
        })
    return stats


def _weight_exponent(max_abs: float) -> int:
    """Smallest integer k >= DEAD_EXPONENT with max_abs / 2**k <= 127, in float32 like tfqat.quantization.pow2, exactly."""
    ratio = max(float(np.float32(max_abs) / np.float32(_WEIGHT_QMAX)), 2.0**DEAD_EXPONENT)
    mantissa, exponent = math.frexp(ratio)  # ratio = mantissa * 2**exponent, mantissa in [0.5, 1)
    return exponent - 1 if mantissa == 0.5 else exponent


def weight_ranges(model: keras.Model) -> dict[str, list[dict[str, Any]]]:
    """Per-output-channel max|w| of every Conv2D, DepthwiseConv2D and Dense layer, in layer order.

    Nested models are searched and wrappers (e.g. TFMOT's QuantizeWrapper) are
    unwrapped. Depthwise channel c = in * depth_multiplier + m, the order of the
    layer's outputs.

    Returns:
      {"layers": [{"name", "kind": "conv" | "depthwise" | "dense", "channel_max_abs": [float, ...]}]}
    """
    from tfqat._keras import keras
    from tfqat.quantization.kinds import kernel_kind

    layers = []
    for layer in _leaf_layers(model, keras):
        kind = kernel_kind(layer)
        if kind is None:
            continue
        kernel = np.asarray(keras.backend.get_value(kind.kernel(layer)))
        # Depthwise kernels are (h, w, in, dm): flattening the last two axes gives channel in * dm + m.
        max_abs = np.abs(kernel.reshape(-1, kind.output_channels(kernel.shape))).max(axis=0)
        layers.append({"name": layer.name, "kind": kind.name, "channel_max_abs": [float(v) for v in max_abs]})
    return {"layers": layers}


def _leaf_layers(model, keras):
    for layer in model.layers:
        while isinstance(layer, keras.layers.Wrapper):
            layer = layer.layer
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer, keras)
        else:
            yield layer
