"""AdaRound for a calibrated tfqat model: each kernel rounded to fit its float layer's outputs, no labels.

Layer by layer in graph order, on sample images: the inputs the quantized model
(with every earlier layer already rounded) feeds the layer and the inputs the
float model feeds it give the moments `tfqat.quantization.rounding` needs; the
chosen kernel is written back as exact multiples of its power-of-two step, so
the model's own round-to-nearest quantizer reproduces it and the result is an
ordinary tfqat model (it exports, verifies and fine-tunes like any other).
With bias correction, the moments are centred and each bias takes the mean
output error away: b~ = b + E[x_f] W - E[x_q] W~, the empirical correction of
Nagel et al. 2019 against the float model's outputs, which also removes the
mean error that earlier layers pass on.
"""

import sys
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from tfqat.quantization import rounding
from tfqat.quantization.kinds import kernel_kind
from tfqat.quantization.quantizers import Pow2WeightQuantizer
from tfqat.data.batches import image_batches
from tfqat.post_training.bias_correction import kernel_layers
from tfqat.graph.canonical import canonical_model
from tfqat.post_training.layerwise import float_twins, run_side_by_side

_CHUNK = 8  # images per moment update: a depthwise layer's patches of 8 images at 112 px take about 100 MB
# Moments from at most this many input rows per layer (whole images, in order): 21 images of a 112 px layer,
# every image of a 14 px one. Far more rows than any kernel has inputs; the big early layers cost a tenth.
MAX_ROWS = 2**18


def grouped_kernel(layer, kernel) -> np.ndarray:
    """A Conv2D/Dense kernel as (1, D, M); a grouped (DepthwiseConv2D) one (h, w, C, dm) as (C, h*w, dm)."""
    kernel = np.asarray(kernel)
    if kernel_kind(layer).grouped:
        h, w, channels, multiplier = kernel.shape
        return kernel.reshape(h * w, channels, multiplier).transpose(1, 0, 2)
    return kernel.reshape(1, -1, kernel.shape[-1])


def ungrouped_kernel(layer, grouped, shape) -> np.ndarray:
    """The inverse of `grouped_kernel`."""
    if kernel_kind(layer).grouped:
        return grouped.transpose(1, 0, 2).reshape(shape)
    return grouped.reshape(shape)


def grouped_scale(layer, exponent) -> np.ndarray:
    """The kernel step 2**k, broadcastable to the grouped kernel (per tensor or per output channel)."""
    scale = np.exp2(np.asarray(exponent, np.float64)).astype(np.float32)
    if scale.ndim == 0:
        return scale
    if kernel_kind(layer).grouped:  # output channel c * dm + m
        multiplier = layer.depth_multiplier
        return scale.reshape(-1, 1, multiplier)
    return scale.reshape(1, 1, -1)


def patches(layer, inputs) -> tf.Tensor:
    """The layer's input patches as (rows, G, D): one row per output position, laid out as `grouped_kernel`."""
    inputs = tf.convert_to_tensor(inputs, tf.float32)
    kind = kernel_kind(layer)
    if kind.tflite_op == "FULLY_CONNECTED":
        return tf.reshape(inputs, [-1, 1, inputs.shape[-1]])
    if layer.data_format != "channels_last":
        raise ValueError(f"layer '{layer.name}': AdaRound needs channels_last convolutions")
    h, w = layer.kernel_size
    windows = tf.image.extract_patches(
        inputs, sizes=[1, h, w, 1], strides=[1, *layer.strides, 1], rates=[1, *layer.dilation_rate, 1],
        padding=layer.padding.upper(),
    )  # (N, H', W', h * w * C), in (h, w, C) order, the kernel's
    channels = inputs.shape[-1]
    if kind.grouped:
        return tf.transpose(tf.reshape(windows, [-1, h * w, channels]), [0, 2, 1])
    return tf.reshape(windows, [-1, 1, h * w * channels])


class _MomentSums:
    """Running sums of a layer's quantized and float input patches, their products and cross-products."""

    def __init__(self):
        self.count, self.sums = 0, None

    def add(self, rows_q, rows_f):
        parts = [
            tf.reduce_sum(rows_q, 0), tf.reduce_sum(rows_f, 0),
            tf.einsum("rgd,rge->gde", rows_q, rows_q), tf.einsum("rgd,rge->gde", rows_q, rows_f),
            tf.einsum("rgd,rge->gde", rows_f, rows_f),
        ]
        parts = [p.numpy().astype(np.float64) for p in parts]
        self.sums = parts if self.sums is None else [s + p for s, p in zip(self.sums, parts)]
        self.count += int(rows_q.shape[0])

    def moments(self, centred: bool):
        """(mean_q, mean_f, Moments, rows): centred moments are covariances, as when the bias absorbs the mean."""
        sum_q, sum_f, qq, qf, ff = (s / self.count for s in self.sums)
        if centred:
            qq = qq - np.einsum("gd,ge->gde", sum_q, sum_q)
            qf = qf - np.einsum("gd,ge->gde", sum_q, sum_f)
            ff = ff - np.einsum("gd,ge->gde", sum_f, sum_f)
        return sum_q, sum_f, rounding.Moments(qq, qf, ff), self.count


def layer_moments(layer, inputs_q, inputs_f, centred: bool = True, max_rows: int = MAX_ROWS):
    """The moments of a layer's input patches over the images, until `max_rows` patches have been seen."""
    sums = _MomentSums()
    for start in range(0, inputs_q.shape[0], _CHUNK):
        sums.add(patches(layer, inputs_q[start : start + _CHUNK]), patches(layer, inputs_f[start : start + _CHUNK]))
        if sums.count >= max_rows:
            break
    return sums.moments(centred)


def _sample_images(images, steps: Optional[int]) -> np.ndarray:
    batches = [np.asarray(batch, np.float32) for batch in image_batches(images, steps)]
    if not batches:
        raise ValueError("adaround got no images")
    return np.concatenate(batches)


def adaround(
    qat_model, float_model, images, *, bias_correction: bool = True, steps: Optional[int] = None,
    iterations: int = rounding.ITERATIONS, verbose: bool = True,
) -> dict:
    """Round every quantized conv/dense kernel of `qat_model` adaptively, in place, on `images` (no labels).

    Args:
      qat_model: a calibrated model from `tfqat.quantize_model(float_model)`. With trained thresholds each
        kernel is rounded on the step its threshold sets (a QAT start that is already AdaRound's model).
      float_model: the float model it was made from (e.g. the equalized one).
      images: sample inputs, in any form `tfqat.calibrate` takes; they are all held in memory
        with two copies of the widest activations (512 images at 224 px: about 6 GB).
      bias_correction: also set each bias so that the layer's mean output matches the float layer's.
      steps: how many batches of `images` to use (default: all).
      iterations: optimizer steps per layer.
      verbose: one progress line per layer on stderr.
    Returns:
      Layer name -> {"nearest_error", "error", "adaptive"}: the layer's output error on `images`
      relative to its float output's energy, with round-to-nearest and with the chosen rounding.
    """
    layers = {wrapper.name: entry for wrapper, *entry in kernel_layers(qat_model)}
    if not layers:
        msg = f"model '{qat_model.name}' has no quantized conv/dense layer with a bias; pass a model from quantize_model"
        raise ValueError(msg)
    for name, (_, quantizer, _, _) in layers.items():
        if not isinstance(quantizer, Pow2WeightQuantizer):
            raise ValueError(f"layer '{name}': AdaRound needs tfqat's power-of-two kernel quantizer, not {type(quantizer).__name__}")
    images = _sample_images(images, steps)
    folded = canonical_model(float_model)
    twin = float_twins(qat_model, folded)
    report, started = {}, time.perf_counter()

    def round_layer(layer, inputs_q, inputs_f):
        if layer.name not in layers:
            return
        kernel, quantizer, variables, bias = layers[layer.name]
        float_layer = twin(layer)
        float_kernel = np.asarray(kernel_kind(float_layer).kernel(float_layer))
        float_bias = np.asarray(float_layer.bias)
        mean_q, mean_f, moments, rows = layer_moments(layer.layer, inputs_q[0], inputs_f[0], centred=bias_correction)
        exponent = quantizer.kernel_exponent(tf.constant(float_kernel), variables)
        grouped = grouped_kernel(layer.layer, float_kernel)
        result = rounding.adaround(grouped, grouped_scale(layer.layer, exponent), moments, iterations, rows)
        kernel.assign(ungrouped_kernel(layer.layer, result.kernel, float_kernel.shape))
        new_bias = float_bias
        if bias_correction:
            shift = np.einsum("gd,gdm->gm", mean_f, grouped) - np.einsum("gd,gdm->gm", mean_q, result.kernel)
            new_bias = float_bias + shift.reshape(-1).astype(np.float32)
        bias.assign(new_bias)
        report[layer.name] = {
            "nearest_error": result.nearest_error, "error": result.error, "adaptive": result.adaptive,
            "flips_error": result.flips_error, "relaxed_error": result.relaxed_error,
        }
        if verbose:
            seconds = time.perf_counter() - started
            print(
                f"[tfqat] adaround {len(report)}/{len(layers)} {layer.name}: output error "
                f"{result.nearest_error:.2e} (nearest) -> {result.error:.2e} ({seconds:.0f} s)",
                file=sys.stderr, flush=True,
            )

    run_side_by_side(qat_model, images, twin, round_layer)
    return report
