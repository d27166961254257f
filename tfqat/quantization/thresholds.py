"""Quantizers with trained power-of-two thresholds (TQT), and setting their thresholds from data.

`TQTWeightQuantizer` and `TQTActivationQuantizer` are the power-of-two
quantizers of `tfqat.quantization.quantizers` with one trainable log2-threshold
per tensor (per channel for per-channel weights), trained by `model.fit` with
the gradients of `tfqat.quantization.tqt`. Everything that reads a scale
(linking, export, inference) reads it from the threshold, so the exported model
is exactly what was trained and stays shift-only.

The threshold variable holds log2(threshold) / gain: Adam moves every variable
by about the learning rate per step whatever its gradient's size, so the gain
gives thresholds a learning rate `gain` times the weights' (the TQT paper trains
thresholds at 1e-2 beside weights at 1e-6 or so; here 100 x the QAT rate).
"""

from typing import Optional

from tfqat._keras import keras

import tensorflow as tf

from tfqat.preprocessing import check_name as check_preprocessing
from tfqat.quantization import pow2, tqt
from tfqat.quantization.kinds import kind_named
from tfqat.quantization.modes import COLLECTING_RANGES, EXPORTING, is_in
from tfqat.quantization.quantizers import Pow2ActivationQuantizer, Pow2WeightQuantizer, per_channel_max
from tfqat.quantization.quantizers import with_preprocessing
from tfqat.quantization.tensors import KERNEL, quantized_tensors
from tfqat.targets import DEFAULT_TARGET

_register = keras.utils.register_keras_serializable(package="tfqat")

THRESHOLD_GAIN = 100.0
_PLACEHOLDER_RANGE = (-6.0, 6.0)  # until calibration, as Pow2ActivationQuantizer: ReLU6's range


def _check_gain(owner: str, gain) -> float:
    if not float(gain) > 0:
        raise ValueError(f"{owner} threshold_gain={gain!r} must be positive")
    return float(gain)


def _threshold_variable(layer, name, shape, log2_threshold, gain):
    """A trainable threshold of `layer` (a TFMOT wrapper), listed after the weights of the layer it wraps.

    A wrapper around a built layer (quantize_apply) lists the layer's kernel and bias first; one rebuilt from a
    saved config builds the layer later and would list this variable first, so .h5 weights, which load by
    position, would land in the wrong variables. Listing the wrapped weights first gives both the same order.
    """
    wrapped = getattr(layer, "layer", None)
    own = getattr(layer, "_trainable_weights", None)
    if wrapped is not None and own is not None:
        own.extend(w for w in wrapped.trainable_weights if not any(w is o for o in own))
    return layer.add_weight(
        f"{name}_log2_threshold", shape=shape, trainable=True,
        initializer=keras.initializers.Constant(float(log2_threshold) / gain),
    )


@_register
class TQTWeightQuantizer(Pow2WeightQuantizer):
    """Symmetric int8 weights in [-127, 127] * 2**k with k = ceil(t) - 7 from a trained log2-threshold t.

    Args:
      per_channel, kind: as Pow2WeightQuantizer (one threshold per output channel, or one per tensor).
      threshold_gain: how much faster than the weights the threshold learns (see the module docstring).
    """

    def __init__(self, per_channel: bool = False, kind: str = "conv", threshold_gain: float = THRESHOLD_GAIN):
        super().__init__(per_channel=per_channel, kind=kind)
        self.threshold_gain = _check_gain("TQTWeightQuantizer", threshold_gain)

    def _channels(self, tensor_shape):
        return [kind_named(self.kind).output_channels(tensor_shape)] if self.per_channel else []

    def build(self, tensor_shape, name, layer):
        # A placeholder until init_thresholds reads the weights (quantize_model does, right after building).
        return {"log2_threshold": _threshold_variable(layer, name, self._channels(tensor_shape), 0.0, self.threshold_gain)}

    def log2_threshold(self, variables):
        return variables["log2_threshold"] * self.threshold_gain

    def kernel_exponent(self, kernel, variables):
        return tqt.exponent_from_log2_threshold(self.log2_threshold(variables))

    def __call__(self, inputs, training, weights, **kwargs):
        if not training or is_in(self, EXPORTING):
            return self.fake_quant(inputs, tf.stop_gradient(self.kernel_exponent(inputs, weights)))
        shape = tf.shape(inputs)
        channels = self._channels(inputs.shape)
        flat = tf.reshape(inputs, [-1, channels[0]]) if channels else inputs
        quantized = tqt.tqt_fake_quant(flat, self.log2_threshold(weights), pow2.WEIGHT_QMIN, pow2.WEIGHT_QMAX)
        return tf.reshape(quantized, shape)

    def initial_log2_threshold(self, kernel):
        """The threshold whose scale is the plain power-of-two scale of these weights."""
        max_abs = per_channel_max(kernel, self.kind) if self.per_channel else tf.reduce_max(tf.abs(kernel))
        return tqt.weight_log2_threshold(max_abs)

    def get_config(self):
        return {**super().get_config(), "threshold_gain": self.threshold_gain}


@_register
class TQTActivationQuantizer(Pow2ActivationQuantizer):
    """int8 activations in [-128, 127] * 2**k, zero point 0, with k = ceil(t) - 7 from a trained log2-threshold t.

    Calibration (`tfqat.calibrate`) still collects the min/max range, and then
    sets the threshold to that range's power-of-two scale (TQT's start from
    calibrated thresholds); training moves the threshold, not the range.
    """

    def __init__(
        self, ema_decay: float = 0.99, threshold_gain: float = THRESHOLD_GAIN, unsigned: bool = False,
        target: str = DEFAULT_TARGET,
    ):
        super().__init__(ema_decay=ema_decay, unsigned=unsigned, target=target)
        self.threshold_gain = _check_gain("TQTActivationQuantizer", threshold_gain)

    def build(self, tensor_shape, name, layer):
        variables = super().build(tensor_shape, name, layer)
        start = float(tqt.activation_log2_threshold(*_PLACEHOLDER_RANGE, self.unsigned))
        variables["log2_threshold"] = _threshold_variable(layer, name, [], start, self.threshold_gain)
        return variables

    def log2_threshold(self, variables):
        """The trained threshold; in a scale group (a concatenation), the group's largest."""
        if self.scale_group is not None:
            return self.scale_group.largest("log2_threshold", lambda q, v: q.own_log2_threshold(v))
        return self.own_log2_threshold(variables)

    def own_log2_threshold(self, variables):
        return variables["log2_threshold"] * self.threshold_gain

    def own_exponent(self, weights):
        if is_in(self, COLLECTING_RANGES):  # calibration: the range seen so far, as plain PTQ
            return super().own_exponent(weights)
        return tqt.exponent_from_log2_threshold(self.own_log2_threshold(weights), self.unsigned)

    def __call__(self, inputs, training, weights, **kwargs):
        if training and not is_in(self, COLLECTING_RANGES) and not is_in(self, EXPORTING):
            return tqt.tqt_fake_quant(inputs, self.log2_threshold(weights), *pow2.activation_steps(self.unsigned))
        return super().__call__(inputs, False if not is_in(self, COLLECTING_RANGES) else training, weights)

    def initial_log2_threshold(self, variables):
        """The threshold whose scale is the plain power-of-two scale of the calibrated range."""
        return tqt.activation_log2_threshold(variables["min_var"], variables["max_var"], self.unsigned)

    def get_config(self):
        return {**super().get_config(), "threshold_gain": self.threshold_gain}


@_register
class TQTInputQuantizer(TQTActivationQuantizer):
    """The model input's trained-threshold quantizer, which also records the preprocessing of its float inputs."""

    def __init__(
        self, ema_decay: float = 0.99, threshold_gain: float = THRESHOLD_GAIN, unsigned: bool = False,
        target: str = DEFAULT_TARGET, preprocessing: Optional[str] = None,
    ):
        super().__init__(ema_decay=ema_decay, threshold_gain=threshold_gain, unsigned=unsigned, target=target)
        self.preprocessing = check_preprocessing(preprocessing)

    def get_config(self):
        return with_preprocessing(super().get_config(), self.preprocessing)


def init_thresholds(model, *, weights: bool = True, activations: bool = True) -> int:
    """Set every trained threshold of a QAT model to the plain power-of-two scale of its weights or range.

    `quantize_model(..., trained_thresholds=True)` sets the weights' thresholds;
    `calibrate` sets the activations' from the ranges it collects. Returns how many were set.
    """
    count = 0
    for tensor in quantized_tensors(model):
        quantizer, variables = tensor.quantizer, tensor.variables
        if not hasattr(quantizer, "initial_log2_threshold"):
            continue  # not a trained-threshold quantizer
        if tensor.role == KERNEL and weights:
            value = quantizer.initial_log2_threshold(tensor.weight)
        elif tensor.role != KERNEL and activations:
            value = quantizer.initial_log2_threshold(variables)
        else:
            continue
        variables["log2_threshold"].assign(tf.reshape(value, variables["log2_threshold"].shape) / quantizer.threshold_gain)
        count += 1
    return count
