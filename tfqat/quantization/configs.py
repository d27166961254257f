"""TFMOT QuantizeConfigs: which weights and outputs of a layer get which quantizer.

The placement mirrors the int8 TFLite graph: a conv's output is quantized after
its fused ReLU/ReLU6 (never between them), an Add's output likewise, ops that
keep their input's scale (padding, pooling by max, reshapes, dropout) get no
quantizer of their own, and the outputs of softmax/sigmoid/tanh get the fixed
power-of-two ranges that TFLite's int8 kernels require.
"""

from tfqat._keras import keras

import tensorflow_model_optimization as tfmot

from tfqat.quantization.kinds import kernel_kind
from tfqat.quantization.options import QuantizeOptions
from tfqat.quantization.quantizers import ConfigEquality, Pow2BiasQuantizer
from tfqat.targets import DEFAULT_TARGET, SIGNED_SIGMOID_EXPONENT, target_named

_QuantizeConfig = tfmot.quantization.keras.QuantizeConfig
_FixedQuantizer = tfmot.quantization.keras.quantizers.FixedQuantizer
_register = keras.utils.register_keras_serializable(package="tfqat")

# TFLite int8 kernels fix these outputs: scale 1/256 with zero point -128, and
# 1/128 with zero point 0. Both are powers of two.
FIXED_OUTPUT_RANGES = {
    "softmax": (0.0, 255.0 / 256.0),
    "sigmoid": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),
}
# A runtime without zero points (ESP-DL) holds a sigmoid on the signed grid 2**-7 (`targets`); the converter
# requantizes TFLite's LOGISTIC to it (exactly: the integer reference computes the chip's sigmoid on
# LOGISTIC's even steps, `tfqat.integer.named.logistic`).
SIGNED_SIGMOID_RANGE = (-128 * 2.0**SIGNED_SIGMOID_EXPONENT, 127 * 2.0**SIGNED_SIGMOID_EXPONENT)


def fixed_output_range(activation_name: str, target: str = DEFAULT_TARGET) -> tuple[float, float]:
    """The fixed (min, max) of an activation's int8 output on `target`."""
    if activation_name == "sigmoid" and not target_named(target).zero_points:
        return SIGNED_SIGMOID_RANGE
    return FIXED_OUTPUT_RANGES[activation_name]


# Activations TFLite fuses into conv/dense/add: the output is quantized after them.
FUSED_ACTIVATIONS = ("linear", "relu")


def activation_name(activation) -> str:
    return getattr(activation, "__name__", type(activation).__name__)


def fixed_output_quantizer(activation_name: str, target: str = DEFAULT_TARGET):
    low, high = fixed_output_range(activation_name, target)
    return _FixedQuantizer(num_bits=8, init_min=low, init_max=high, narrow_range=False)


class _Pow2Config(ConfigEquality, _QuantizeConfig):
    """A config quantizing nothing unless a subclass says otherwise."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        if quantize_weights:
            msg = f"{type(self).__name__} quantizes no weights of layer '{layer.name}'"
            raise ValueError(msg)

    def set_quantize_activations(self, layer, quantize_activations):
        if quantize_activations:
            msg = f"{type(self).__name__} quantizes no activations of layer '{layer.name}'"
            raise ValueError(msg)

    def get_output_quantizers(self, layer):
        return []


def _kind(layer):
    kind = kernel_kind(layer)
    if kind is None:
        msg = f"KernelQuantizeConfig quantizes Conv2D, DepthwiseConv2D and Dense layers, not '{layer.name}' ({type(layer).__name__})"
        raise ValueError(msg)
    return kind


@_register
class KernelQuantizeConfig(_Pow2Config):
    """Conv2D, DepthwiseConv2D (BN already folded in) and Dense.

    The kernel gets the options' power-of-two weight quantizer; the bias is rounded to the
    int32 grid s_input * s_weight on which TFLite stores it. The
    output is quantized after the layer's own activation, unless a ReLU that
    TFLite fuses follows (then `quantize_output=False` and the ReLU quantizes).

    Args:
      options: the scheme's `QuantizeOptions`, or its fields as keywords (`per_channel=True`, ...).
      quantize_output: quantize the layer's output.
    """

    records_target = True

    def __init__(self, options: QuantizeOptions = None, quantize_output: bool = True, **fields):
        self.options = QuantizeOptions.from_fields(options, **fields)
        self.quantize_output = bool(quantize_output)

    def get_config(self):
        return {"quantize_output": self.quantize_output, **self.options.as_dict()}

    def get_weights_and_quantizers(self, layer):
        kind = _kind(layer)
        pairs = [(kind.kernel(layer), self.options.weight_quantizer(kind))]
        if layer.use_bias:
            pairs.append((layer.bias, Pow2BiasQuantizer()))
        return pairs

    def get_activations_and_quantizers(self, layer):
        # Wrapped by TFMOT's QuantizeAwareActivation: after linear/relu, before
        # softmax/sigmoid/tanh (whose outputs get fixed ranges below).
        if not self.quantize_output:
            return []
        relu = activation_name(layer.activation) == "relu"
        return [(layer.activation, self.options.activation_quantizer(non_negative=relu))]

    def set_quantize_weights(self, layer, quantize_weights):
        setattr(layer, _kind(layer).weight_attribute, quantize_weights[0])
        if layer.use_bias:
            layer.bias = quantize_weights[1]

    def set_quantize_activations(self, layer, quantize_activations):
        if quantize_activations:
            layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        name = activation_name(layer.activation)
        if self.quantize_output and name in FIXED_OUTPUT_RANGES:
            return [fixed_output_quantizer(name, self.options.target)]
        return []


@_register
class OutputQuantizeConfig(_Pow2Config):
    """Layers without weights whose output TFLite requantizes: Add, ReLU, pooling by mean, the input.

    Args:
      ema_decay, thresholds: the `QuantizeOptions` fields an output quantizer reads.
      unsigned: the layer's output is non-negative by construction (a ReLU) and goes on the unsigned grid.
    """

    records_target = True

    def __init__(self, ema_decay: float = 0.99, thresholds: str = None, unsigned: bool = False,
                 trained_thresholds: bool = False, target: str = DEFAULT_TARGET):
        if thresholds is None:  # `trained_thresholds`: the key of configs saved before `thresholds` existed
            thresholds = "trained" if trained_thresholds else "ranges"
        # Only the fields an output reads, so equal outputs compare equal whatever the kernels' granularity.
        self.options = QuantizeOptions(
            ema_decay=ema_decay, thresholds=thresholds, unsigned_activations=bool(unsigned), target=target,
        )

    @classmethod
    def for_options(cls, options: QuantizeOptions, non_negative: bool = False):
        """The config of an output under `options`; unsigned when the option is on and the output is never negative."""
        unsigned = options.unsigned_activations and non_negative
        return cls(ema_decay=options.ema_decay, thresholds=options.thresholds, unsigned=unsigned, target=options.target)

    def get_config(self):
        o = self.options
        return {
            "ema_decay": o.ema_decay, "thresholds": o.thresholds, "unsigned": o.unsigned_activations,
            "target": o.target,
        }

    def get_output_quantizers(self, layer):
        return [self.options.activation_quantizer(non_negative=True)]


@_register
class FixedOutputQuantizeConfig(_Pow2Config):
    """Softmax/sigmoid/tanh as layers: the fixed output range of the target's int8 kernel."""

    records_target = True

    def __init__(self, activation: str, target: str = DEFAULT_TARGET):
        if activation not in FIXED_OUTPUT_RANGES:
            msg = f"FixedOutputQuantizeConfig activation={activation!r} is not one of {sorted(FIXED_OUTPUT_RANGES)}"
            raise ValueError(msg)
        self.activation = activation
        self.target = target_named(target).name

    def get_config(self):
        return {"activation": self.activation, "target": self.target}

    def get_output_quantizers(self, layer):
        return [fixed_output_quantizer(self.activation, self.target)]


@_register
class PassThroughQuantizeConfig(_Pow2Config):
    """Layers whose int8 output keeps its input's scale (pad, max-pool, reshape, dropout): no quantizer."""
