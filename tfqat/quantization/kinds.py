"""The layers that carry a kernel, as data: one row per layer type that every part of the library reads.

Folding, equalization, AdaRound, bias correction, the weight-range report, the
debugger, the quantize configs and the quantizers all need to know the same few
facts about a Conv2D, a DepthwiseConv2D or a Dense layer: where its kernel is,
how the kernel's axes make output channels, which TFLite op it becomes and how
that op rounds. They read them here instead of testing the layer's class.

A kernel's output channels are its last `channel_axes` axes flattened: a
DepthwiseConv2D kernel (h, w, in, depth_multiplier) has output channel
in * depth_multiplier + m, the order of the layer's outputs and of TFLite's
DEPTHWISE_CONV_2D kernel (1, h, w, in * depth_multiplier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from tfqat._keras import keras


@dataclass(frozen=True)
class KernelKind:
    """What the library needs to know about one layer type with a kernel.

    Attributes:
      name: the kind as the weight quantizers' configs name it.
      layer_type: the Keras class (matched exactly: a subclass may lay its kernel out otherwise).
      weight_attribute: the layer attribute holding the kernel.
      tflite_op: the int8 TFLite op the layer becomes.
      channel_axes: how many trailing kernel axes, flattened, index an output channel.
      grouped: each output channel sees one input channel (depthwise): AdaRound and equalization treat
        the kernel as one small matrix per channel.
      per_channel: per-output-channel weight scales apply (the converter cannot move a Dense kernel's
        channel axis through the transpose to TFLite's (out, in) layout).
      folds_batch_norm: a BatchNormalization after the layer folds into its kernel and bias.
      equalizable: the layer may be either side of a cross-layer equalization pair (with one filter
        per input channel, for a depthwise one).
      requantize: the kind of accumulator its output quantizer requantizes (`tfqat.quantization.pow2.REQUANTIZING_OPS`:
        the TFLite op whose rounding rule a target gives).
      to_tflite: the float kernel laid out as the TFLite op stores it.
    """

    name: str
    layer_type: type
    weight_attribute: str
    tflite_op: str
    channel_axes: int
    grouped: bool
    per_channel: bool
    folds_batch_norm: bool
    equalizable: bool
    requantize: str
    to_tflite: Callable

    def kernel(self, layer):
        """The layer's kernel variable."""
        return getattr(layer, self.weight_attribute)

    def channel_dims(self, kernel_shape) -> tuple:
        """The kernel's trailing axes that index its output channels: (out,), or (in, depth_multiplier)."""
        return tuple(int(size) for size in tuple(kernel_shape)[-self.channel_axes:])

    def output_channels(self, kernel_shape) -> int:
        """The number of output channels of a kernel of this shape."""
        count = 1
        for size in self.channel_dims(kernel_shape):
            count *= size
        return count

    def channel_shape(self, kernel_shape) -> tuple:
        """The shape that puts one value per output channel against a kernel of this shape (for broadcasting)."""
        return (1,) * (len(tuple(kernel_shape)) - self.channel_axes) + self.channel_dims(kernel_shape)


KERNEL_KINDS = (
    KernelKind(
        "dense", keras.layers.Dense, "kernel", "FULLY_CONNECTED", channel_axes=1, grouped=False, per_channel=False,
        folds_batch_norm=False, equalizable=False, requantize="dense", to_tflite=lambda k: k.T,  # (out, in)
    ),
    KernelKind(
        "conv", keras.layers.Conv2D, "kernel", "CONV_2D", channel_axes=1, grouped=False, per_channel=True,
        folds_batch_norm=True, equalizable=True, requantize="conv", to_tflite=lambda k: k.transpose(3, 0, 1, 2),  # (out, h, w, in)
    ),
    KernelKind(
        "depthwise", keras.layers.DepthwiseConv2D, "depthwise_kernel", "DEPTHWISE_CONV_2D", channel_axes=2,
        grouped=True, per_channel=True, folds_batch_norm=True, equalizable=True, requantize="depthwise",
        to_tflite=lambda k: k.reshape(1, *k.shape[:2], -1),  # (1, h, w, in * m)
    ),
)
KINDS = {kind.name: kind for kind in KERNEL_KINDS}
_BY_TYPE = {kind.layer_type: kind for kind in KERNEL_KINDS}
_BY_OP = {kind.tflite_op: kind for kind in KERNEL_KINDS}


def kernel_kind(layer) -> Optional[KernelKind]:
    """The kind of a layer with a kernel, or None for any other layer (a wrapper included: unwrap it first)."""
    return _BY_TYPE.get(type(layer))


def kind_named(name: str) -> KernelKind:
    """The kind of this name; a ValueError lists the valid names."""
    if name not in KINDS:
        msg = f"kernel kind {name!r} is not one of {tuple(KINDS)}"
        raise ValueError(msg)
    return KINDS[name]


def kind_of_op(op: str) -> Optional[KernelKind]:
    """The kind whose layers become this TFLite op, or None."""
    return _BY_OP.get(op)
