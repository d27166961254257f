"""TFMOT QuantizeConfigs: which weights and outputs of a layer get which quantizer.

The placement mirrors the int8 TFLite graph: a conv's output is quantized after
its fused ReLU/ReLU6 (never between them), an Add's output likewise, ops that
keep their input's scale (padding, pooling by max, reshapes, dropout) get no
quantizer of their own, and the outputs of softmax/sigmoid/tanh get the fixed
power-of-two ranges that TFLite's int8 kernels require.
"""

from tfqat._keras import keras

import tensorflow_model_optimization as tfmot

from tfqat.quantization.quantizers import ConfigEquality, Pow2ActivationQuantizer, Pow2BiasQuantizer, Pow2WeightQuantizer
from tfqat.quantization.thresholds import TQTActivationQuantizer, TQTWeightQuantizer

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
# Activations TFLite fuses into conv/dense/add: the output is quantized after them.
FUSED_ACTIVATIONS = ("linear", "relu")


def activation_name(activation) -> str:
    return getattr(activation, "__name__", type(activation).__name__)


def activation_quantizer(ema_decay: float, trained_thresholds: bool, unsigned: bool = False):
    """The power-of-two activation quantizer: ranges from data, or trained thresholds (TQT); signed or unsigned."""
    if trained_thresholds:
        return TQTActivationQuantizer(ema_decay, unsigned=unsigned)
    return Pow2ActivationQuantizer(ema_decay, unsigned=unsigned)


def fixed_output_quantizer(activation_name: str):
    low, high = FIXED_OUTPUT_RANGES[activation_name]
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


@_register
class KernelQuantizeConfig(_Pow2Config):
    """Conv2D, DepthwiseConv2D (BN already folded in) and Dense.

    The kernel gets a power-of-two weight quantizer; the bias is rounded to the
    int32 grid s_input * s_weight on which TFLite stores it. The
    output is quantized after the layer's own activation, unless a ReLU that
    TFLite fuses follows (then `quantize_output=False` and the ReLU quantizes).

    Args:
      per_channel: one weight scale per output channel (Conv2D and
        DepthwiseConv2D; Dense kernels stay per tensor, see below).
      quantize_output: quantize the layer's output.
      trained_thresholds: kernel and output scales from trained log2-thresholds (TQT).
      unsigned_activations: an output after the layer's own ReLU is unsigned ([0, 255] * 2**k).
    """

    def __init__(
        self, per_channel: bool = False, quantize_output: bool = True, ema_decay: float = 0.99,
        trained_thresholds: bool = False, unsigned_activations: bool = False,
    ):
        self.per_channel = bool(per_channel)
        self.quantize_output = bool(quantize_output)
        self.ema_decay = float(ema_decay)
        self.trained_thresholds = bool(trained_thresholds)
        self.unsigned_activations = bool(unsigned_activations)

    def get_config(self):
        return {
            "per_channel": self.per_channel, "quantize_output": self.quantize_output, "ema_decay": self.ema_decay,
            "trained_thresholds": self.trained_thresholds, "unsigned_activations": self.unsigned_activations,
        }

    @staticmethod
    def _kernel_attribute(layer):
        return "depthwise_kernel" if isinstance(layer, keras.layers.DepthwiseConv2D) else "kernel"

    @staticmethod
    def _kind(layer):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            return "depthwise"
        return "dense" if isinstance(layer, keras.layers.Dense) else "conv"

    def get_weights_and_quantizers(self, layer):
        kind = self._kind(layer)
        # The converter transposes Dense kernels to (out, in) and cannot move a
        # per-channel axis through that transpose, so Dense stays per tensor.
        per_channel = self.per_channel and kind != "dense"
        weight_quantizer = TQTWeightQuantizer if self.trained_thresholds else Pow2WeightQuantizer
        quantizer = weight_quantizer(per_channel=per_channel, kind=kind)
        pairs = [(getattr(layer, self._kernel_attribute(layer)), quantizer)]
        if layer.use_bias:
            pairs.append((layer.bias, Pow2BiasQuantizer()))
        return pairs

    def get_activations_and_quantizers(self, layer):
        # Wrapped by TFMOT's QuantizeAwareActivation: after linear/relu, before
        # softmax/sigmoid/tanh (whose outputs get fixed ranges below).
        if not self.quantize_output:
            return []
        unsigned = self.unsigned_activations and activation_name(layer.activation) == "relu"
        return [(layer.activation, activation_quantizer(self.ema_decay, self.trained_thresholds, unsigned))]

    def set_quantize_weights(self, layer, quantize_weights):
        setattr(layer, self._kernel_attribute(layer), quantize_weights[0])
        if layer.use_bias:
            layer.bias = quantize_weights[1]

    def set_quantize_activations(self, layer, quantize_activations):
        if quantize_activations:
            layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        name = activation_name(layer.activation)
        if self.quantize_output and name in FIXED_OUTPUT_RANGES:
            return [fixed_output_quantizer(name)]
        return []


@_register
class OutputQuantizeConfig(_Pow2Config):
    """Layers without weights whose output TFLite requantizes: Add, ReLU, pooling by mean, the input."""

    def __init__(self, ema_decay: float = 0.99, trained_thresholds: bool = False, unsigned: bool = False):
        self.ema_decay = float(ema_decay)
        self.trained_thresholds = bool(trained_thresholds)
        self.unsigned = bool(unsigned)  # the layer's output is non-negative by construction (a ReLU)

    def get_config(self):
        return {"ema_decay": self.ema_decay, "trained_thresholds": self.trained_thresholds, "unsigned": self.unsigned}

    def get_output_quantizers(self, layer):
        return [activation_quantizer(self.ema_decay, self.trained_thresholds, self.unsigned)]


@_register
class FixedOutputQuantizeConfig(_Pow2Config):
    """Softmax/sigmoid/tanh as layers: the fixed output range of TFLite's int8 kernel."""

    def __init__(self, activation: str):
        if activation not in FIXED_OUTPUT_RANGES:
            msg = f"FixedOutputQuantizeConfig activation={activation!r} is not one of {sorted(FIXED_OUTPUT_RANGES)}"
            raise ValueError(msg)
        self.activation = activation

    def get_config(self):
        return {"activation": self.activation}

    def get_output_quantizers(self, layer):
        return [fixed_output_quantizer(self.activation)]


@_register
class PassThroughQuantizeConfig(_Pow2Config):
    """Layers whose int8 output keeps its input's scale (pad, max-pool, reshape, dropout): no quantizer."""
