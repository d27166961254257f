"""Cross-layer equalization: even out per-channel weight ranges before per-tensor quantization.

One power-of-two scale per tensor fails on MobileNetV2 because the channels of a
folded depthwise kernel span ranges hundreds of times apart. Between two
convolutions joined only by ReLU (and zero padding), scaling output channel c of
the first by 1/s_c and input channel c of the second by s_c leaves the network's
function unchanged, since relu(x / s) = relu(x) / s for s > 0 (Nagel et al. 2019,
"Data-Free Quantization Through Weight Equalization and Bias Correction").

tfqat only ever shrinks the first layer's channels (s_c >= 1): growing a channel
grows its activations too and widens the per-tensor activation range, which on
the flowers MobileNetV2 cost more than the even weights gained. ReLU6 stays: with
s_c >= 1 its clip moves from 6 to 6 * s_c (in the original units), so the
equalized model differs from the original only where a pre-activation exceeded 6.
Given sample images, channels whose clip acts on more than a small fraction of
their positions keep s_c = 1, so on such data the equalized model differs from
the original only at the few positions where a scaled channel clips.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import tensorflow as tf

from tfqat._keras import keras
from tfqat.graph import functional
from tfqat.data.batches import image_batches
from tfqat.graph.canonical import canonical_model
from tfqat.quantization.kinds import kernel_kind

# Layers that commute with a positive per-channel scale, so a pair may reach across them.
_PASS_THROUGH = (keras.layers.ZeroPadding2D,)


@dataclass(frozen=True)
class Pair:
    """Two convolutions whose shared channels can be rescaled: `first`'s outputs feed `second`'s inputs."""

    first: str
    second: str
    clip: Optional[float] = None  # the lowest ReLU max_value between them: where s_c > 1 changes the function


def _is_kernel_layer(layer) -> bool:
    """A channels-last equalizable conv (`tfqat.quantization.kinds`): an ungrouped Conv2D, or a DepthwiseConv2D
    with one filter per channel."""
    kind = kernel_kind(layer)
    if kind is None or not kind.equalizable:
        return False
    plain = layer.depth_multiplier == 1 if kind.grouped else layer.groups == 1
    return plain and layer.data_format == "channels_last"


def _is_plain_relu(layer) -> bool:
    return (
        isinstance(layer, keras.layers.ReLU)
        and float(layer.negative_slope) == 0.0
        and float(layer.threshold) == 0.0
    )


def find_pairs(model) -> list:
    """The equalizable pairs of a flat model: conv -> [ReLU / ZeroPadding2D]* -> conv, each link its only user."""
    used_by = functional.consumers(model)
    pairs = []
    for layer in model.layers:
        if not _is_kernel_layer(layer) or layer.activation is not keras.activations.linear:
            continue
        current, clip = layer, None
        while True:
            users = used_by.get(str(id(current.output)), [])
            if len(users) != 1:
                break
            current = users[0]
            if _is_plain_relu(current) and current.max_value is not None:
                clip = min(float(current.max_value), clip if clip is not None else np.inf)
            elif not (_is_plain_relu(current) or isinstance(current, _PASS_THROUGH)):
                break
        if _is_kernel_layer(current) and current is not layer:
            pairs.append(Pair(layer.name, current.name, clip))
    return pairs


def clipped_fractions(model, pairs, images, steps: Optional[int] = None) -> dict:
    """For each pair with a clip: the fraction of positions of `images` where each of `first`'s channels exceeds it.

    `images` is an array of images or an iterable of image batches or (images, labels) batches, as for `calibrate`.
    """
    batches = image_batches(images, steps)
    clipped = [pair for pair in pairs if pair.clip is not None]
    probe = keras.Model(model.inputs, [model.get_layer(pair.first).output for pair in clipped]) if clipped else None

    @tf.function
    def count(batch):
        # Summed inside the function, so a batch's activations are never all held in numpy at once.
        outputs = tf.nest.flatten(probe(batch, training=False))
        above = [tf.reduce_sum(tf.cast(out > p.clip, tf.int64), axis=[0, 1, 2]) for p, out in zip(clipped, outputs)]
        positions = [tf.size(out, tf.int64) // tf.cast(tf.shape(out)[-1], tf.int64) for out in outputs]
        return above, positions

    above = {pair.first: 0 for pair in clipped}
    positions = {pair.first: 0 for pair in clipped}
    used = 0
    for batch in batches:
        used += 1
        if probe is None:
            break  # nothing to measure; the batch only shows that the data is not empty
        for pair, batch_above, batch_positions in zip(clipped, *count(batch)):
            above[pair.first] = above[pair.first] + batch_above.numpy()
            positions[pair.first] += int(batch_positions)
    if used == 0:
        raise ValueError("equalize got no image batches to measure its ReLU clips on")
    return {name: above[name] / positions[name] for name in above}


def _output_ranges(layer, kernel) -> np.ndarray:
    """Largest |weight| of each output channel (a depthwise kernel's channel is its input channel)."""
    return np.abs(kernel).reshape(-1, kernel_kind(layer).output_channels(kernel.shape)).max(axis=0)


def _input_ranges(kernel) -> np.ndarray:
    """Largest |weight| that multiplies each input channel (kernels are h, w, in, out or h, w, in, 1)."""
    return np.abs(kernel).max(axis=(0, 1, 3))


def equalization_scales(first_ranges, second_ranges) -> np.ndarray:
    """s_c = max(1, sqrt(r1_c / r2_c)): dividing the first by s and multiplying the second gives both sqrt(r1 r2).

    Where the first range is already the smaller, s_c = 1 (see the module
    docstring); channels that are all zero in either kernel keep s_c = 1 too.
    """
    first_ranges = np.asarray(first_ranges, np.float64)
    second_ranges = np.asarray(second_ranges, np.float64)
    usable = (first_ranges > second_ranges) & (second_ranges > 0)
    scales = np.ones_like(first_ranges)
    scales[usable] = np.sqrt(first_ranges[usable] / second_ranges[usable])
    return scales


def _scale_output_channels(layer, weights, scales) -> None:
    kernel = weights[0]
    weights[0] = kernel / scales.reshape(kernel_kind(layer).channel_shape(kernel.shape))
    if len(weights) > 1:
        weights[1] = weights[1] / scales


def equalize(
    model,
    images=None,
    *,
    steps: Optional[int] = None,
    max_clipped: float = 0.01,
    rounds: int = 20,
    tolerance: float = 1e-4,
):
    """A flat copy of `model` with BatchNorm folded and the weight ranges of every equalizable pair evened out.

    Chains such as expand -> depthwise -> project share the middle layer between two
    pairs, so the pairs are equalized in turn for up to `rounds` rounds, until no
    scale moves by more than `tolerance`. With `images` (typical inputs such as the
    calibration set, in any form `calibrate` takes; `steps` limits the batches), a
    channel whose ReLU6 clips on more than a `max_clipped` fraction of its positions
    keeps its scale of 1: moving its clip would change what the model computes. The
    result is a float model, ready for `quantize_model`; the original is left untouched.
    """
    functional.check_functional(model)
    if rounds < 1:
        raise ValueError(f"equalize needs at least one round, got rounds={rounds}")
    if not 0.0 <= max_clipped <= 1.0:
        raise ValueError(f"max_clipped is a fraction of positions in [0, 1], got {max_clipped}")
    folded = canonical_model(model)
    pairs = find_pairs(folded)
    clipped = clipped_fractions(folded, pairs, images, steps) if images is not None else {}
    held = {name: fractions > max_clipped for name, fractions in clipped.items()}
    layers = {layer.name: layer for layer in folded.layers}
    weights = {
        name: [np.asarray(w, np.float64) for w in layers[name].get_weights()]
        for pair in pairs
        for name in (pair.first, pair.second)
    }
    for _ in range(rounds):
        largest_change = 0.0
        for pair in pairs:
            first = layers[pair.first]
            scales = equalization_scales(
                _output_ranges(first, weights[pair.first][0]), _input_ranges(weights[pair.second][0])
            )
            if pair.first in held:
                scales[held[pair.first]] = 1.0
            _scale_output_channels(first, weights[pair.first], scales)
            weights[pair.second][0] = weights[pair.second][0] * scales.reshape(1, 1, -1, 1)
            largest_change = max(largest_change, float(np.abs(np.log(scales)).max(initial=0.0)))
        if largest_change <= tolerance:
            break

    def hook(layer, args, kwargs):
        if layer.name in weights:
            new_layer = functional.clone_layer(layer)
            outputs = new_layer(*args, **kwargs)
            dtypes = [v.dtype.as_numpy_dtype for v in layer.weights]
            new_layer.set_weights([w.astype(dtype) for w, dtype in zip(weights[layer.name], dtypes)])
            return outputs
        return None

    return functional.rebuild(folded, hook)
