"""The power-of-two quantize scheme: a registry (layer class -> config) and layout transforms."""

from typing import Optional

from tfqat._keras import keras

import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import utils as tfmot_utils
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (
    model_transformer,
    transforms,
)

from tfqat.quantization import configs
from tfqat.quantization.quantizers import Pow2ActivationQuantizer, Pow2InputQuantizer
from tfqat.quantization.thresholds import TQTActivationQuantizer
from tfqat.quantization.layers import ScalarOp, Sigmoid

layers = keras.layers
LayerPattern = transforms.LayerPattern
LayerNode = transforms.LayerNode

KERNEL_LAYERS = (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)
# Concatenate: TFLite's int8 CONCATENATION needs one scale for every input and its output (the converter gives
# the inputs the output's); tfqat.quantization.linking makes them share it in the Keras model too.
OUTPUT_LAYERS = (
    layers.Add, layers.GlobalAveragePooling2D, layers.AveragePooling2D, layers.Multiply, layers.Concatenate,
)
PASS_THROUGH_LAYERS = (layers.ZeroPadding2D, layers.MaxPooling2D, layers.Dropout, layers.Reshape, layers.Flatten)
KERNEL_ACTIVATIONS = configs.FUSED_ACTIVATIONS + tuple(configs.FIXED_OUTPUT_RANGES)


def _is_fusable_relu(layer) -> bool:
    """ReLU or ReLU6 that TFLite fuses into the op before it."""
    if isinstance(layer, layers.Activation):
        return configs.activation_name(layer.activation) == "relu"
    if not isinstance(layer, layers.ReLU):
        return False
    max_value = None if layer.max_value is None else float(layer.max_value)
    return float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0 and max_value in (None, 6.0)


def _is_non_negative(layer) -> bool:
    """A ReLU (or ReLU6) layer, whose output is never negative."""
    if isinstance(layer, layers.Activation):
        return configs.activation_name(layer.activation) == "relu"
    return isinstance(layer, layers.ReLU) and float(layer.negative_slope) == 0.0 and float(layer.threshold) >= 0.0


class _SchemeOptions:
    """The options the scheme and its registry share (documented on Pow2QuantizeScheme)."""

    def __init__(
        self, per_channel: bool = False, ema_decay: float = 0.99, trained_thresholds: bool = False,
        unsigned_activations: bool = False,
    ):
        self.per_channel = per_channel
        self.ema_decay = ema_decay
        self.trained_thresholds = trained_thresholds
        self.unsigned_activations = unsigned_activations


class Pow2QuantizeRegistry(_SchemeOptions, tfmot.quantization.keras.QuantizeRegistry):
    """Which config quantizes which layer; `unsupported_reason` explains the rest."""

    def unsupported_reason(self, layer) -> Optional[str]:
        """None when the layer is supported, else why not (one sentence)."""
        if type(layer) in KERNEL_LAYERS:
            name = configs.activation_name(layer.activation)
            if name not in KERNEL_ACTIVATIONS:
                return f"its activation '{name}' has no int8 TFLite form; supported: {KERNEL_ACTIVATIONS}"
            return None
        if isinstance(layer, layers.BatchNormalization):
            return (
                "a BatchNormalization that neither follows a Conv2D/DepthwiseConv2D nor normalizes the channels of "
                "an image tensor (which becomes a 1x1 depthwise conv) cannot be folded"
            )
        if type(layer) in OUTPUT_LAYERS + PASS_THROUGH_LAYERS or isinstance(layer, (layers.InputLayer, ScalarOp)):
            return None
        if type(layer).__name__ == "TFOpLambda":
            return (
                f"'{layer.symbol}' is not one of the TensorFlow ops the scheme quantizes: adding, subtracting, "
                "multiplying or dividing a float tensor by a number (the number second in a subtraction or "
                "division; a product or sum of two tensors is a layers.Multiply or layers.Add)"
            )
        if isinstance(layer, (layers.Rescaling, layers.Normalization)):
            return (
                "only a Rescaling or Normalization of the channels of a float image tensor (a 1x1 depthwise conv) "
                "is supported; give the model a float32 input (the int8 model quantizes it)"
            )
        if isinstance(layer, layers.ReLU):
            return None if _is_fusable_relu(layer) or layer.negative_slope == 0 else "leaky ReLU is not supported"
        if isinstance(layer, (layers.Softmax, Sigmoid)):
            return None
        if isinstance(layer, layers.Activation):
            name = configs.activation_name(layer.activation)
            if name in ("relu", "linear") or name in configs.FIXED_OUTPUT_RANGES:
                return None
            return f"activation '{name}' is not supported"
        return "the power-of-two scheme has no quantize config for this layer class"

    def supports(self, layer) -> bool:
        return self.unsupported_reason(layer) is None

    def get_quantize_config(self, layer):
        reason = self.unsupported_reason(layer)
        if reason:
            msg = f"layer '{layer.name}' ({type(layer).__name__}) cannot be quantized: {reason}."
            raise ValueError(msg)
        if type(layer) in KERNEL_LAYERS:
            return configs.KernelQuantizeConfig(
                self.per_channel, True, self.ema_decay, self.trained_thresholds, self.unsigned_activations
            )
        if isinstance(layer, layers.Softmax):
            return configs.FixedOutputQuantizeConfig("softmax")
        if isinstance(layer, Sigmoid):
            return configs.FixedOutputQuantizeConfig("sigmoid")
        if isinstance(layer, layers.Activation):
            name = configs.activation_name(layer.activation)
            if name in configs.FIXED_OUTPUT_RANGES:
                return configs.FixedOutputQuantizeConfig(name)
            if name == "linear":
                return configs.PassThroughQuantizeConfig()
        if type(layer) in PASS_THROUGH_LAYERS:
            return configs.PassThroughQuantizeConfig()
        unsigned = self.unsigned_activations and _is_non_negative(layer)
        return configs.OutputQuantizeConfig(self.ema_decay, self.trained_thresholds, unsigned)


class InputQuantize(transforms.Transform):
    """InputLayer => InputLayer -> QuantizeLayer(power-of-two): the int8 model input (unsigned for raw pixels)."""

    def __init__(self, ema_decay: float, trained_thresholds: bool = False):
        self.ema_decay = ema_decay
        self.trained_thresholds = trained_thresholds

    def pattern(self):
        return LayerPattern("InputLayer")

    def replacement(self, match_layer):
        if self.trained_thresholds:
            quantizer = configs.activation_quantizer(self.ema_decay, self.trained_thresholds)
        else:  # unsigned when calibrated on non-negative inputs (raw pixels)
            quantizer = Pow2InputQuantizer(self.ema_decay)
        quant = quantize_layer.QuantizeLayer(quantizer)
        config = tfmot_utils.serialize_layer(quant, use_legacy_format=True)
        config["name"] = quant.name
        return LayerNode(config, input_layers=[match_layer])

    def custom_objects(self):
        return {
            "QuantizeLayer": quantize_layer.QuantizeLayer,
            "Pow2ActivationQuantizer": Pow2ActivationQuantizer,
            "Pow2InputQuantizer": Pow2InputQuantizer,
            "TQTActivationQuantizer": TQTActivationQuantizer,
        }


class FuseReLU(transforms.Transform):
    """Conv/Dense/Add/ScalarOp -> ReLU(6): no quantizer between them, as TFLite fuses the ReLU."""

    def __init__(self, per_channel: bool, ema_decay: float, trained_thresholds: bool = False):
        self.per_channel = per_channel
        self.ema_decay = ema_decay
        self.trained_thresholds = trained_thresholds

    def pattern(self):
        return LayerPattern("ReLU|Activation", inputs=[LayerPattern("Conv2D|DepthwiseConv2D|Dense|Add|tfqat>ScalarOp")])

    def replacement(self, match_layer):
        relu = keras.layers.deserialize(match_layer.layer)
        producer = match_layer.input_layers[0]
        activation = producer.layer["config"].get("activation", "linear")
        if not _is_fusable_relu(relu) or activation not in ("linear", None):
            return match_layer
        if producer.layer["class_name"] in ("Add", "tfqat>ScalarOp"):
            producer.metadata["quantize_config"] = configs.PassThroughQuantizeConfig()
        else:
            producer.metadata["quantize_config"] = configs.KernelQuantizeConfig(
                self.per_channel, quantize_output=False, ema_decay=self.ema_decay,
                trained_thresholds=self.trained_thresholds,
            )
        return match_layer

    def custom_objects(self):
        return {}


class QuantizedForm(transforms.Transform):
    """A tfqat layer => the same with its int8 behaviour switched on (a flag in its config): a QAT model's
    Sigmoid rounds as LiteRT's LOGISTIC table, its ScalarOp computes with the power-of-two constant."""

    def __init__(self, class_name: str, flag: str):
        self.class_name = class_name
        self.flag = flag

    def pattern(self):
        return LayerPattern(self.class_name)

    def replacement(self, match_layer):
        match_layer.layer["config"][self.flag] = True
        return match_layer

    def custom_objects(self):
        return {}


class Pow2LayoutTransform(tfmot.quantization.keras.QuantizeLayoutTransform):
    def __init__(self, per_channel: bool, ema_decay: float, trained_thresholds: bool = False):
        self.per_channel = per_channel
        self.ema_decay = ema_decay
        self.trained_thresholds = trained_thresholds

    def apply(self, model, layer_quantize_map):
        steps = [
            InputQuantize(self.ema_decay, self.trained_thresholds),
            FuseReLU(self.per_channel, self.ema_decay, self.trained_thresholds),
            QuantizedForm("tfqat>Sigmoid", "litert_table"),
            QuantizedForm("tfqat>ScalarOp", "pow2_constant"),
        ]
        return model_transformer.ModelTransformer(
            model, steps, set(layer_quantize_map.keys()), layer_quantize_map
        ).transform()


class Pow2QuantizeScheme(_SchemeOptions, tfmot.quantization.keras.QuantizeScheme):
    """Power-of-two int8 scheme, for `tfmot.quantization.keras.quantize_apply`.

    Args:
      per_channel: per-output-channel weight scales (default: per tensor).
      ema_decay: moving-average decay of activation ranges during training.
      trained_thresholds: every weight and activation scale comes from a trainable log2-threshold, trained
        with the model (TQT, Jain et al. 2020); still a power of two, so the export stays shift-only.
      unsigned_activations: ReLU outputs are quantized to [0, 255] * 2**k (int8 zero point -128) instead of
        [-128, 127] * 2**k: twice the resolution for tensors that are never negative.
    """

    def get_layout_transformer(self):
        return Pow2LayoutTransform(self.per_channel, self.ema_decay, self.trained_thresholds)

    def get_quantize_registry(self):
        return Pow2QuantizeRegistry(self.per_channel, self.ema_decay, self.trained_thresholds, self.unsigned_activations)
