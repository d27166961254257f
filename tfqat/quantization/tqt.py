"""Trained quantization thresholds (TQT; Jain et al., MLSys 2020): the math, on tensors.

A TQT quantizer keeps a trainable log2-threshold t. Its scale is the power of
two 2**(ceil(t) - 7), so the int8 model it exports still requantizes by
shifts. The forward pass is plain power-of-two fake quantization at that
scale; the backward pass is the paper's straight-through estimate:

- values: gradient 1 where they fall inside the int8 range, 0 where they clip;
- log2-threshold: s ln2 (round(x/s) - x/s) for values inside the range (the
  rounding error, which on average pulls the threshold down), and s ln2 q_min or
  s ln2 q_max for clipped ones (which push it up): the trade-off between range
  and resolution is learned from the loss.

Keras objects hold the threshold variables and call these functions.
"""

import math

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow loads)

import tensorflow as tf

from tfqat.quantization import pow2

# 2**(ceil(t) - 7) spreads the threshold 2**ceil(t) over the 128 steps of one sign of an int8 grid;
# an unsigned grid (0..255) spreads it over 256 steps: 2**(ceil(t) - 8).
STEPS_EXPONENT = 7.0
UNSIGNED_STEPS_EXPONENT = 8.0


def _steps_exponent(unsigned: bool) -> float:
    return UNSIGNED_STEPS_EXPONENT if unsigned else STEPS_EXPONENT


def exponent_from_log2_threshold(log2_threshold, unsigned: bool = False):
    """The scale exponent k (scale 2**k) of a log2-threshold: ceil(t) - 7 (ceil(t) - 8 when unsigned)."""
    return tf.math.ceil(log2_threshold) - _steps_exponent(unsigned)


def log2_threshold_from_exponent(exponent, unsigned: bool = False):
    """A log2-threshold whose scale exponent is `exponent`, half a step inside its bin (no flip on the first step)."""
    return tf.convert_to_tensor(exponent, tf.float32) + _steps_exponent(unsigned) - 0.5


def _fake_quant(values, scale, qmin: int, qmax: int, per_channel: bool, gradient=None):
    """FakeQuant at a power-of-two scale (per tensor, or per channel along the last axis), as the exporter reads it.

    With `gradient` (the upstream gradient), FakeQuant's own fused gradient instead: `gradient` where the
    values fall inside the range, 0 where they clip.
    """
    narrow = qmin == -qmax
    low, high = qmin * scale, qmax * scale
    if gradient is not None:
        fused = (
            tf.quantization.fake_quant_with_min_max_vars_per_channel_gradient if per_channel
            else tf.quantization.fake_quant_with_min_max_vars_gradient
        )
        return fused(gradient, values, low, high, num_bits=8, narrow_range=narrow)[0]
    if per_channel:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(values, low, high, num_bits=8, narrow_range=narrow)
    return tf.quantization.fake_quant_with_min_max_vars(values, low, high, num_bits=8, narrow_range=narrow)


def tqt_fake_quant(values, log2_threshold, qmin: int, qmax: int):
    """Power-of-two fake quantization at threshold 2**ceil(log2_threshold), with TQT's gradients.

    Args:
      values: the tensor to quantize; with a per-channel threshold, channels on its last axis.
      log2_threshold: a scalar (per tensor) or one value per channel of the last axis.
      qmin, qmax: the integer range: -127, 127 for weights (narrow, zero point 0), -128, 127 for activations,
        0, 255 for unsigned activations (threshold over 256 steps).
    Returns:
      The fake-quantized values; gradients flow to `values` and to `log2_threshold`.
    """
    values = tf.convert_to_tensor(values, tf.float32)
    log2_threshold = tf.convert_to_tensor(log2_threshold, tf.float32)
    per_channel = log2_threshold.shape.rank == 1
    unsigned = qmin == 0

    @tf.custom_gradient
    def quantize(x, log2_t):
        scale = tf.pow(2.0, exponent_from_log2_threshold(log2_t, unsigned))
        y = _fake_quant(x, scale, qmin, qmax, per_channel)

        def grad(dy):
            # Inside the range dx = dy and the threshold's local gradient is ln2 (y - x) (the rounding error;
            # y / scale are exact integer steps); where values clip dx = 0 and it is ln2 y (y = qmin or qmax
            # steps). Both are ln2 (dy y - dx x), with dx from FakeQuant's fused gradient: three elementwise
            # passes instead of a dozen, and no cancellation (the difference is taken per element).
            dx = _fake_quant(x, scale, qmin, qmax, per_channel, gradient=dy)
            axes = list(range(x.shape.rank - 1)) if per_channel else None
            return dx, math.log(2.0) * tf.reduce_sum(dy * y - dx * x, axis=axes)

        return y, grad

    return quantize(values, log2_threshold)


def weight_log2_threshold(max_abs):
    """The log2-threshold whose scale is the plain power-of-two weight scale of these weights (`pow2`)."""
    return log2_threshold_from_exponent(pow2.weight_exponent(max_abs))


def activation_log2_threshold(range_min, range_max, unsigned: bool = False):
    """The log2-threshold whose scale is the plain power-of-two activation scale of [range_min, range_max]."""
    return log2_threshold_from_exponent(pow2.activation_exponent(range_min, range_max, unsigned), unsigned)
