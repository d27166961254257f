"""Power-of-two ("best precision", fixed-point) int8 quantization math.

Pure functions on tensors and numbers; Keras objects hold the state and call
these. A scale 2**k makes every requantization of the int8 model a shift.

Ranges follow TFLite's int8 spec: weights are symmetric in [-127, 127] with
zero point 0, activations use [-128, 127], here also with zero point 0 so that
the fixed-point format is Q(7-n).n and no offset arithmetic is needed.
Optionally a tensor that is non-negative by construction (a ReLU's output) is
unsigned: [0, 255] * 2**k, stored in int8 with zero point -128, twice the
resolution for the same range; the offset is an integer, so every
requantization stays a shift.
"""

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow loads)

import tensorflow as tf

WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
ACTIVATION_QMIN, ACTIVATION_QMAX = -128, 127
UNSIGNED_QMAX = 255  # unsigned activations: steps 0..255, int8 zero point -128

# The smallest scale used: an all-zero tensor gets 2**-24 instead of log2(0) = -inf.
# The TFLite converter widens any range narrower than 1e-6 (255 * 2**-24 > 1e-6),
# which would break the power of two.
MIN_EXPONENT = -24.0


def _log2_exponent(ratio):
    """Smallest integer k >= MIN_EXPONENT with ratio <= 2**k, exact even where log2 rounds."""
    ratio = tf.maximum(ratio, 2.0**MIN_EXPONENT)
    k = tf.math.ceil(tf.math.log(ratio) / tf.math.log(tf.constant(2.0, ratio.dtype)))
    # log2 of an exact power of two can come out a hair above or below the
    # integer; multiplying by 2**k is exact, so check and correct by one step.
    k = tf.where(ratio <= tf.pow(2.0, k - 1.0), k - 1.0, k)
    k = tf.where(ratio > tf.pow(2.0, k), k + 1.0, k)
    return k


def weight_exponent(max_abs):
    """Exponent k of the weight scale 2**k: smallest k with max_abs / 2**k <= 127."""
    max_abs = tf.convert_to_tensor(max_abs, tf.float32)
    return _log2_exponent(max_abs / WEIGHT_QMAX)


def activation_exponent(range_min, range_max, unsigned: bool = False):
    """Exponent k of the activation scale 2**k so that [min, max] fits [-128, 127] * 2**k.

    Unsigned: [0, max] fits [0, 255] * 2**k (a negative min is clipped to 0 by the quantizer).
    `unsigned` may be a boolean tensor: the grid chosen from data (the model input's quantizer).
    """
    if not isinstance(unsigned, bool):
        return tf.where(
            unsigned, activation_exponent(range_min, range_max, True), activation_exponent(range_min, range_max, False)
        )
    range_min = tf.convert_to_tensor(range_min, tf.float32)
    range_max = tf.convert_to_tensor(range_max, tf.float32)
    if unsigned:
        return _log2_exponent(range_max / UNSIGNED_QMAX)
    ratio = tf.maximum(range_max / ACTIVATION_QMAX, -range_min / -ACTIVATION_QMIN)
    return _log2_exponent(ratio)


def activation_steps(unsigned: bool = False) -> tuple:
    """(qmin, qmax) of an activation's integer steps: [-128, 127], or [0, 255] when unsigned (tensors when
    `unsigned` is a boolean tensor)."""
    if not isinstance(unsigned, bool):
        return tf.where(unsigned, 0.0, float(ACTIVATION_QMIN)), tf.where(unsigned, float(UNSIGNED_QMAX), float(ACTIVATION_QMAX))
    return (0, UNSIGNED_QMAX) if unsigned else (ACTIVATION_QMIN, ACTIVATION_QMAX)


def scale_from_exponent(exponent):
    return tf.pow(2.0, exponent)


def fake_quant_weights(weights, exponent, per_channel_axis=None):
    """Quantize-dequantize weights at scale 2**exponent, symmetric [-127, 127].

    Uses TensorFlow's FakeQuant ops so that the TFLite converter reads the exact
    range; their gradient is the straight-through estimator: 1 inside the range,
    0 where values clip. The exponent gets no gradient: scales are not learned.
    """
    weights = tf.convert_to_tensor(weights, tf.float32)  # numpy arrays have no .shape.rank
    scale = tf.stop_gradient(scale_from_exponent(exponent))
    range_min, range_max = WEIGHT_QMIN * scale, WEIGHT_QMAX * scale
    if per_channel_axis is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            weights, range_min, range_max, num_bits=8, narrow_range=True
        )
    rank = weights.shape.rank
    axis = per_channel_axis % rank
    if axis == rank - 1:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            weights, range_min, range_max, num_bits=8, narrow_range=True
        )
    perm = [i for i in range(rank) if i != axis] + [axis]
    inverse = [perm.index(i) for i in range(rank)]
    moved = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        tf.transpose(weights, perm), range_min, range_max, num_bits=8, narrow_range=True
    )
    return tf.transpose(moved, inverse)


def round_half_away_from_zero(values):
    """Rounding as LiteRT's int8 kernels do it (TF's FakeQuant rounds ties up instead).

    Exact for every float: |x| - floor(|x|) loses nothing, whereas floor(|x| + 0.5)
    rounds the sum first and gets 0.49999997 (to 1) and odd values >= 2**23 wrong.
    """
    magnitude = tf.abs(values)
    whole = tf.floor(magnitude)
    return tf.sign(values) * (whole + tf.cast(magnitude - whole >= 0.5, magnitude.dtype))


def fake_quant_activations(
    values, exponent, litert_rounding: bool = False, accumulator_exponent=None, unsigned: bool = False,
    kernel: str = "conv",
):
    """Quantize-dequantize activations at scale 2**exponent in [-128, 127], zero point 0 ([0, 255] if unsigned;
    `unsigned` may be a boolean tensor).

    With `litert_rounding`, values are first rounded to the grid half away from
    zero, as LiteRT's ADD (and QUANTIZE) requantization does, so a tie such as
    -2.5 steps gives -3 as on the device, not FakeQuant's -2; FakeQuant then
    only clamps.
    With an `accumulator_exponent` too, the values are the int32 accumulator of
    a conv/dense, MUL or MEAN (`kernel`) and are requantized as `litert_requantize`
    does. Gradients stay straight-through.
    The graph handed to the TFLite converter must not carry these extra ops (it
    reads the ranges off FakeQuant alone).
    """
    scale = tf.stop_gradient(scale_from_exponent(exponent))
    if litert_rounding:
        if accumulator_exponent is None:
            rounded = round_half_away_from_zero(values / scale) * scale
        else:
            rounded = litert_requantize(
                values, tf.stop_gradient(accumulator_exponent), tf.stop_gradient(exponent), kernel
            )
        values = values + tf.stop_gradient(rounded - values)
    qmin, qmax = activation_steps(unsigned)
    return tf.quantization.fake_quant_with_min_max_vars(values, qmin * scale, qmax * scale, num_bits=8, narrow_range=False)


# Kernels whose int32 accumulator LiteRT requantizes by a power of two (litert_requantize), and for those
# that round their last channels their own way, how many channels their vector loop takes at a time.
REQUANTIZING_KERNELS = ("conv", "depthwise", "mul", "mean")
VECTOR_LANES = {"depthwise": 8, "mean": 16}


def litert_requantize(values, accumulator_exponent, exponent, kernel: str = "conv"):
    """Round int32 accumulators to the grid 2**exponent exactly as LiteRT's int8 kernels do.

    `values` are int32 accumulators times 2**accumulator_exponent: a conv/dense's (input scale x
    weight scale, per channel along the last axis), a MUL's product (its two input scales) or a
    MEAN's sum (input scale / count). LiteRT multiplies by 2**-n, n = exponent - accumulator_exponent,
    as a Q31 multiplier of 0.5 and a shift: it rounds acc/2 half up, then divides by 2**(n-1),
    rounding half up again on CONV_2D and FULLY_CONNECTED, half away from zero on MUL; DEPTHWISE_CONV_2D
    and MEAN round half up on the channels their vector loop takes (whole groups of 8 and 16) and half
    away from zero on the channels left over (each measured bit-exact on ai-edge-litert 2.3). That
    double rounding differs from a single rounding on about one value in 2**n, often for small n.
    """
    if kernel not in REQUANTIZING_KERNELS:
        msg = f"litert_requantize kernel={kernel!r} is not one of {REQUANTIZING_KERNELS}"
        raise ValueError(msg)
    accumulator = values * tf.pow(2.0, -accumulator_exponent)
    n = exponent - accumulator_exponent
    halved = tf.floor(accumulator * 0.5 + 0.5)
    divided = halved * tf.pow(2.0, 1.0 - tf.maximum(n, 1.0))
    half_up, half_away = tf.floor(divided + 0.5), round_half_away_from_zero(divided)
    if kernel == "conv":
        shifted = half_up
    elif kernel == "mul":
        shifted = half_away
    else:
        channels, lanes = values.shape[-1], VECTOR_LANES[kernel]
        vector = tf.range(channels) < (channels // lanes) * lanes
        shifted = tf.where(vector, half_up, half_away)
    steps = tf.where(n >= 1.0, shifted, accumulator * tf.pow(2.0, -n))
    return steps * tf.pow(2.0, exponent)


def is_power_of_two(values):
    """True where every value is exactly 2**k for an integer k (numpy or tensors)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    mantissa, _ = np.frexp(values)
    return bool(np.all((values > 0) & (mantissa == 0.5)))
