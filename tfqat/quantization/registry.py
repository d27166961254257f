"""The quantize registry as a table: one row per layer type, read both for "is it supported, and if not why"
and for "which config".

A row names the layer type, its role (what the int8 TFLite graph does with the
layer's output), an optional check that refuses some layers of the type with a
reason, and whether TFLite fuses a following ReLU into it. Types are matched
exactly, except rows marked `subclasses` (a user's ReLU or Activation subclass
computes the same op). Rows with a `refusal` name types the scheme never
quantizes and say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from tfqat._keras import keras

import tensorflow_model_optimization as tfmot
from tf_keras.src.layers.core.tf_op_layer import TFOpLambda  # not exported by tf_keras.layers

from tfqat.quantization import configs
from tfqat.quantization.kinds import KERNEL_KINDS
from tfqat.quantization.layers import ScalarOp, Sigmoid
from tfqat.quantization.options import QuantizeOptions

layers = keras.layers

# What the int8 graph does with a layer's output:
KERNEL = "kernel"  # weights and an int32 accumulator, requantized (KernelQuantizeConfig)
OUTPUT = "output"  # requantized to a scale of its own (OutputQuantizeConfig)
FIXED = "fixed"  # a fixed power-of-two output scale of TFLite's kernel (softmax, sigmoid)
PASS = "pass"  # keeps its input's scale: no quantizer
ACTIVATION = "activation"  # an Activation layer: one of the above by its function

KERNEL_ACTIVATIONS = configs.FUSED_ACTIVATIONS + tuple(configs.FIXED_OUTPUT_RANGES)


@dataclass(frozen=True)
class Row:
    """How the scheme treats one layer type."""

    layer_type: type
    role: Optional[str] = None  # None: refused
    check: Optional[Callable] = None  # layer -> why this one is not supported, or None
    refusal: Optional[Callable] = None  # layer -> why the type is never quantized
    fuses_relu: bool = False  # TFLite fuses a following ReLU/ReLU6 into its op
    subclasses: bool = False  # subclasses of the type match this row too
    non_negative: Optional[Callable] = None  # layer -> whether its output is never negative
    fixed_output: Optional[str] = None  # the FIXED_OUTPUT_RANGES entry of a FIXED row


def fusable_relu(layer) -> bool:
    """ReLU or ReLU6 that TFLite fuses into the op before it."""
    if isinstance(layer, layers.Activation):
        return configs.activation_name(layer.activation) == "relu"
    if not isinstance(layer, layers.ReLU):
        return False
    max_value = None if layer.max_value is None else float(layer.max_value)
    return float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0 and max_value in (None, 6.0)


def _kernel_check(layer) -> Optional[str]:
    name = configs.activation_name(layer.activation)
    if name not in KERNEL_ACTIVATIONS:
        return f"its activation '{name}' has no int8 TFLite form; supported: {KERNEL_ACTIVATIONS}"
    return None


def _relu_check(layer) -> Optional[str]:
    return None if fusable_relu(layer) or layer.negative_slope == 0 else "leaky ReLU is not supported"


def _relu_non_negative(layer) -> bool:
    return float(layer.negative_slope) == 0.0 and float(layer.threshold) >= 0.0


def _activation_check(layer) -> Optional[str]:
    name = configs.activation_name(layer.activation)
    if name in ("relu", "linear") or name in configs.FIXED_OUTPUT_RANGES:
        return None
    return f"activation '{name}' is not supported"


def _tf_op_refusal(layer) -> str:
    return (
        f"'{layer.symbol}' is not one of the TensorFlow ops the scheme quantizes: adding, subtracting, "
        "multiplying or dividing a float tensor by a number (the number second in a subtraction or "
        "division; a product or sum of two tensors is a layers.Multiply or layers.Add)"
    )


def _fixed_reason(text: str) -> Callable:
    return lambda layer: text


_AFFINE_REFUSAL = _fixed_reason(
    "only a Rescaling or Normalization of the channels of a float image tensor (a 1x1 depthwise conv) "
    "is supported; give the model a float32 input (the int8 model quantizes it)"
)

ROWS = (
    *(Row(kind.layer_type, KERNEL, check=_kernel_check, fuses_relu=True) for kind in KERNEL_KINDS),
    Row(layers.Add, OUTPUT, fuses_relu=True),
    Row(layers.GlobalAveragePooling2D, OUTPUT),
    Row(layers.AveragePooling2D, OUTPUT),
    Row(layers.Multiply, OUTPUT),
    # TFLite's int8 CONCATENATION needs one scale for every input and its output (the converter gives
    # the inputs the output's); tfqat.quantization.linking makes them share it in the Keras model too.
    Row(layers.Concatenate, OUTPUT),
    Row(layers.ZeroPadding2D, PASS),
    Row(layers.MaxPooling2D, PASS),
    Row(layers.Dropout, PASS),
    Row(layers.Reshape, PASS),
    Row(layers.Flatten, PASS),
    Row(layers.InputLayer, OUTPUT, subclasses=True),
    Row(ScalarOp, OUTPUT, fuses_relu=True, subclasses=True),
    Row(layers.ReLU, OUTPUT, check=_relu_check, subclasses=True, non_negative=_relu_non_negative),
    Row(layers.Softmax, FIXED, subclasses=True, fixed_output="softmax"),
    Row(Sigmoid, FIXED, subclasses=True, fixed_output="sigmoid"),
    Row(layers.Activation, ACTIVATION, check=_activation_check, subclasses=True),
    Row(layers.BatchNormalization, subclasses=True, refusal=_fixed_reason(
        "a BatchNormalization that neither follows a Conv2D/DepthwiseConv2D nor normalizes the channels of "
        "an image tensor (which becomes a 1x1 depthwise conv) cannot be folded"
    )),
    Row(TFOpLambda, subclasses=True, refusal=_tf_op_refusal),
    Row(layers.Rescaling, subclasses=True, refusal=_AFFINE_REFUSAL),
    Row(layers.Normalization, subclasses=True, refusal=_AFFINE_REFUSAL),
)
_BY_TYPE = {row.layer_type: row for row in ROWS}
_BY_NAME = {keras.utils.get_registered_name(row.layer_type): row for row in ROWS}
NO_CONFIG = "the power-of-two scheme has no quantize config for this layer class"


def row_of(layer) -> Optional[Row]:
    """The row of the layer's type: its exact type's, else the nearest base type's that admits subclasses."""
    for cls in type(layer).__mro__:
        row = _BY_TYPE.get(cls)
        if row is not None and (cls is type(layer) or row.subclasses):
            return row
    return None


def row_named(class_name: str) -> Optional[Row]:
    """The row of a layer type by its serialized class name ("Conv2D", "tfqat>ScalarOp")."""
    return _BY_NAME.get(class_name)


def relu_producers() -> str:
    """The serialized class names of the types TFLite fuses a ReLU into, as a TFMOT layer pattern (grouped:
    TFMOT anchors it as ^...$, which would otherwise bind to the first and last names only)."""
    return "(?:" + "|".join(name for name, row in _BY_NAME.items() if row.fuses_relu) + ")"


def unsupported_reason(layer) -> Optional[str]:
    """None when the scheme quantizes the layer, else why not (one sentence)."""
    row = row_of(layer)
    if row is None:
        return NO_CONFIG
    if row.refusal is not None:
        return row.refusal(layer)
    return row.check(layer) if row.check is not None else None


def quantize_config(layer, options: QuantizeOptions):
    """The config of a supported layer under `options`."""
    row = row_of(layer)
    role = row.role
    name = configs.activation_name(getattr(layer, "activation", None))
    if role == ACTIVATION:
        role = FIXED if name in configs.FIXED_OUTPUT_RANGES else PASS if name == "linear" else OUTPUT
    if role == KERNEL:
        return configs.KernelQuantizeConfig(options, quantize_output=True)
    if role == FIXED:
        return configs.FixedOutputQuantizeConfig(row.fixed_output or name, options.target)
    if role == PASS:
        return configs.PassThroughQuantizeConfig()
    non_negative = row.non_negative(layer) if row.non_negative else name == "relu"
    return configs.OutputQuantizeConfig.for_options(options, non_negative)


class Pow2QuantizeRegistry(tfmot.quantization.keras.QuantizeRegistry):
    """TFMOT's view of the table: which config quantizes which layer; `unsupported_reason` explains the rest.

    Args:
      options: the scheme's `QuantizeOptions`, or its fields as keywords (`per_channel=True`, ...).
    """

    def __init__(self, options: QuantizeOptions = None, **fields):
        self.options = QuantizeOptions.from_fields(options, **fields)

    @staticmethod
    def unsupported_reason(layer) -> Optional[str]:
        return unsupported_reason(layer)

    def supports(self, layer) -> bool:
        return unsupported_reason(layer) is None

    def get_quantize_config(self, layer):
        reason = unsupported_reason(layer)
        if reason:
            msg = f"layer '{layer.name}' ({type(layer).__name__}) cannot be quantized: {reason}."
            raise ValueError(msg)
        return quantize_config(layer, self.options)
