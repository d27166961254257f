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

from typing import Optional

import numpy as np
import tensorflow as tf

from tfqat.targets import MEAN_ARITHMETIC, MEAN_KEEP_DIMS, SECOND_STEP, TARGETS, LaneSplit, RoundingRule, check_rule, single_rule

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
    rule: Optional[RoundingRule] = None, average_count: Optional[int] = None, mean_arithmetic: str = "q31",
    mean_input_zero_point=0.0,
):
    """Quantize-dequantize activations at scale 2**exponent in [-128, 127], zero point 0 ([0, 255] if unsigned;
    `unsigned` may be a boolean tensor).

    With `litert_rounding` (the name stays from the first target, LiteRT), values are first rounded to the
    grid by the target's `rule` (`tfqat.targets`), as the runtime requantizes, so a tie such as -2.5 steps
    gives what the device gives, not FakeQuant's -2 (ties up); FakeQuant then only clamps.
    With an `accumulator_exponent` too, the values are the int32 accumulator of a conv/dense, MUL or MEAN
    and are requantized as `requantize` does (a double rule applies both its roundings); without one, the
    value is rounded once, by the rule's last step (`tfqat.targets.single_rule`). Without a `rule`, the
    builtin kernels' CONV_2D rule for an accumulator, else one rounding half away from zero. With an
    `average_count` that is not a power of two, the values are a MEAN of inputs at 2**accumulator_exponent,
    requantized as `mean_requantize` does with `mean_arithmetic` (no shift can divide by such a count; the
    float32 arithmetic needs the input's zero point). Gradients stay
    straight-through. The graph handed to the TFLite converter must not carry these extra ops (it reads
    the ranges off FakeQuant alone).
    """
    scale = tf.stop_gradient(scale_from_exponent(exponent))
    if rule is None:
        rule = "half_away_from_zero" if accumulator_exponent is None else TARGETS["builtin"].rule("CONV_2D")
    if litert_rounding:
        if accumulator_exponent is None:
            rounded = round_ties(values / scale, single_rule(rule)) * scale
        elif average_count is not None:
            output_zero_point = -128.0 * tf.cast(unsigned, tf.float32)
            rounded = mean_requantize(
                values, tf.stop_gradient(accumulator_exponent), tf.stop_gradient(exponent), average_count,
                mean_arithmetic, mean_input_zero_point, output_zero_point, rule=single_rule(rule),
            )
        else:
            rounded = requantize(values, tf.stop_gradient(accumulator_exponent), tf.stop_gradient(exponent), rule)
        values = values + tf.stop_gradient(rounded - values)
    qmin, qmax = activation_steps(unsigned)
    return tf.quantization.fake_quant_with_min_max_vars(values, qmin * scale, qmax * scale, num_bits=8, narrow_range=False)


def round_ties(scaled, rule: str):
    """Round real values to integers, ties by a single rule of `tfqat.targets.RULES`; exact for every float
    (floor and the fraction lose nothing)."""
    if rule == "half_away_from_zero":
        return round_half_away_from_zero(scaled)
    whole = tf.floor(scaled)
    fraction = scaled - whole
    if rule == "half_up":
        up = fraction >= 0.5
    elif rule == "half_even":
        up = (fraction > 0.5) | ((fraction == 0.5) & (tf.math.floormod(whole, 2.0) == 1.0))
    else:
        msg = f"round_ties rule={rule!r} is not a single rounding; choose one of half_away_from_zero, half_up, half_even"
        raise ValueError(msg)
    return whole + tf.cast(up, scaled.dtype)


def _shift_round(accumulator, n, rule: str):
    """accumulator / 2**n rounded by `rule` (integers held in floats; n >= 1 where it is used)."""
    if rule in SECOND_STEP:  # halve rounding half up (the Q31 multiplier 0.5), then divide by 2**(n-1)
        halved = tf.floor(accumulator * 0.5 + 0.5)
        return round_ties(halved * tf.pow(2.0, 1.0 - tf.maximum(n, 1.0)), SECOND_STEP[rule])
    return round_ties(accumulator * tf.pow(2.0, -tf.maximum(n, 1.0)), rule)


def requantize(values, accumulator_exponent, exponent, rule: RoundingRule):
    """Round int32 accumulators to the grid 2**exponent as a target's kernel does (`tfqat.targets`).

    `values` are int32 accumulators times 2**accumulator_exponent: a conv/dense's (input scale x
    weight scale, per channel along the last axis), a MUL's product (its two input scales) or a
    MEAN's sum (input scale / count). The runtime divides by 2**n, n = exponent - accumulator_exponent,
    and rounds by `rule`: one rounding, or TFLite's two (the Q31 multiplier 0.5, then a shift), and with a
    `LaneSplit` one rule on the channels a vector loop takes and another on those left over. A double
    rounding differs from a single rounding on about one value in 2**n, often for small n.
    """
    check_rule(rule)
    accumulator = values * tf.pow(2.0, -accumulator_exponent)
    n = exponent - accumulator_exponent
    if isinstance(rule, LaneSplit):
        channels = values.shape[-1]
        vector = tf.range(channels) < (channels // rule.lanes) * rule.lanes
        shifted = tf.where(vector, _shift_round(accumulator, n, rule.rule), _shift_round(accumulator, n, rule.leftover))
    else:
        shifted = _shift_round(accumulator, n, rule)
    steps = tf.where(n >= 1.0, shifted, accumulator * tf.pow(2.0, -n))
    return steps * tf.pow(2.0, exponent)


def mean_requantize(values, input_exponent, exponent, count: int, arithmetic: str = "q31", input_zero_point=0.0,
                    output_zero_point=0.0, rule: str = "half_even"):
    """A MEAN over `count` int8 inputs at 2**input_exponent, to the grid 2**exponent, as a runtime computes it
    when `count` is not a power of two (no shift divides by it).

    arithmetic "q31" (LiteRT's kernels and TFLite Micro): the int32 sum of the inputs less their zero point
    times a Q31 multiplier of (s_in / s_out) / count, made by dividing the multiplier of s_in / s_out (2**30, a
    power of two) shifted left by up to log2(count) bits, with truncation, by the count; then
    MultiplyByQuantizedMultiplier's two roundings, half away from zero. Computed in float64, exact: the sum
    times the multiplier stays below 2**53.
    arithmetic "float32" (XNNPACK): the int32 sum of the raw int8 inputs, converted to float32, times the
    float32 scale (s_in / s_out) * (1 / count), plus the output zero point less count * input zero point *
    scale (each step rounded to float32), rounded half to even. The zero points (0, or -128 for an unsigned
    grid) matter here only.
    arithmetic "espdl_float32" (ESP-DL's global average pool): the int32 sum of the inputs times the float32
    scale (1.0f / count) * 2**(input exponent - exponent), rounded by the chip's `rule`: "half_up" as
    floorf(x + 0.5) (ESP32-S3), "half_even" (ESP32-P4). ESP-DL has no zero points.
    """
    if arithmetic not in set(MEAN_ARITHMETIC.values()):
        msg = f"mean_requantize arithmetic={arithmetic!r} is not one of {sorted(set(MEAN_ARITHMETIC.values()))}"
        raise ValueError(msg)
    values, input_exponent, exponent = (tf.cast(v, tf.float64) for v in (values, input_exponent, exponent))

    def two(power):
        return tf.pow(tf.constant(2.0, tf.float64), power)

    total = round_half_away_from_zero(values * count * two(-input_exponent))
    if arithmetic == "float32":
        steps = _float32_mean(total, input_exponent - exponent, count, input_zero_point, output_zero_point)
        return tf.cast(steps * two(exponent), tf.float32)
    if arithmetic == "espdl_float32":
        steps = _espdl_mean(total, input_exponent - exponent, count, rule)
        return tf.cast(steps * two(exponent), tf.float32)
    shift = input_exponent - exponent + 1.0  # QuantizeMultiplier(2**d) = (2**30, d + 1)
    extra = tf.minimum(tf.constant(float(count.bit_length() - 1), tf.float64), tf.minimum(tf.constant(32.0, tf.float64), 31.0 + shift))
    multiplier = tf.floor(two(30.0 + extra) / count)
    shift = shift - extra
    product = total * two(tf.maximum(shift, 0.0)) * multiplier
    nudge = tf.where(product >= 0, tf.constant(2.0**30, tf.float64), tf.constant(1.0 - 2.0**30, tf.float64))
    nudged = (product + nudge) / 2.0**31
    high = tf.where(nudged >= 0, tf.floor(nudged), tf.math.ceil(nudged))  # SaturatingRoundingDoublingHighMul
    steps = round_half_away_from_zero(high * two(-tf.maximum(-shift, 0.0)))
    return tf.cast(steps * two(exponent), tf.float32)


def _float32_mean(total, exponent_difference, count: int, input_zero_point, output_zero_point):
    """XNNPACK's MEAN of int8 values in output steps (less the output zero point), from the sum of the values
    less their zero point (`total`, exact in float64); float32 arithmetic, one rounding per operation."""
    f32 = tf.float32
    input_zero_point, output_zero_point = (tf.cast(z, f32) for z in (input_zero_point, output_zero_point))
    scale = tf.cast(tf.pow(tf.constant(2.0, tf.float64), exponent_difference), f32) * tf.constant(np.float32(1.0) / np.float32(count), f32)  # 1.0f / count
    zero_points_sum = float(count) * input_zero_point
    raw_sum = tf.cast(total, f32) + zero_points_sum  # an int32 below 2**24: exact
    offset = output_zero_point - zero_points_sum * scale
    steps = tf.round(raw_sum * scale + offset)  # tf.round: half to even, as XNNPACK's nearbyint
    return tf.cast(steps - output_zero_point, tf.float64)


def _espdl_mean(total, exponent_difference, count: int, rule: str):
    """ESP-DL's average of int8 values in output steps: float32(sum) * ((1.0f / count) * 2**difference), one
    float32 rounding per operation, then the chip's rounding of that float32 (`tfqat.targets`)."""
    f32 = tf.float32
    scale = tf.constant(np.float32(1.0) / np.float32(count), f32) * tf.cast(
        tf.pow(tf.constant(2.0, tf.float64), exponent_difference), f32)  # times a power of two: exact
    product = tf.cast(total, f32) * scale  # an int32 below 2**24: exact as a float32
    if rule == "half_up":
        steps = tf.floor(product + tf.constant(0.5, f32))  # floorf(x + 0.5): the sum rounds to float32 first
    elif rule == "half_even":
        steps = tf.round(product)  # fcvt.w.s rne
    else:
        raise ValueError(f"ESP-DL rounds half_up or half_even, not {rule!r}")
    return tf.cast(steps, tf.float64)


# The op kinds whose accumulator a QAT model's quantizers requantize, as TFLite names the op.
REQUANTIZING_OPS = {
    "conv": "CONV_2D", "dense": "FULLY_CONNECTED", "depthwise": "DEPTHWISE_CONV_2D", "mul": "MUL", "mean": "MEAN",
    "mean_keep_dims": MEAN_KEEP_DIMS,
}
REQUANTIZING_KERNELS = tuple(REQUANTIZING_OPS)


def litert_requantize(values, accumulator_exponent, exponent, kernel: str = "conv"):
    """`requantize` with the rule of LiteRT's optimized builtin kernels for this kind of op (the "builtin" target)."""
    if kernel not in REQUANTIZING_OPS:
        msg = f"litert_requantize kernel={kernel!r} is not one of {REQUANTIZING_KERNELS}"
        raise ValueError(msg)
    return requantize(values, accumulator_exponent, exponent, TARGETS["builtin"].rule(REQUANTIZING_OPS[kernel]))


def is_power_of_two(values):
    """True where every value is exactly 2**k for an integer k (numpy or tensors)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    mantissa, _ = np.frexp(values)
    return bool(np.all((values > 0) & (mantissa == 0.5)))
