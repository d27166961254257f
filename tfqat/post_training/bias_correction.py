"""Empirical bias correction (Nagel et al. 2019): remove the mean output shift that weight rounding causes.

Rounding a kernel W to W_q changes each output channel c by (W_q - W) * x.
Over typical inputs that error has a mean that is not zero (per-tensor rounding
of a small channel is biased by its few levels), and a shifted mean passes
through every following layer. Subtracting E[(W_q - W) * x] from the bias of
channel c removes it: the quantized layer's outputs then have the float
layer's mean on those inputs. The inputs are the ones the quantized model
itself feeds each layer on sample images (no labels), so earlier layers'
quantization is accounted for.
"""

from typing import Optional

import numpy as np
import tensorflow as tf

from tfqat._keras import keras
from tfqat.quantization.configs import KernelQuantizeConfig
from tfqat.quantization.kinds import kernel_kind
from tfqat.quantization.tensors import BIAS, KERNEL, layer_tensors
from tfqat.data.batches import image_batches

def kernel_layers(qat_model) -> list:
    """(wrapper, kernel variable, kernel quantizer, its variables, bias variable) of every quantized conv/dense."""
    found = []
    for layer in qat_model.layers:
        weights = {t.role: t for t in layer_tensors(layer) if t.role in (KERNEL, BIAS)}
        if KERNEL in weights and BIAS in weights and isinstance(layer.quantize_config, KernelQuantizeConfig):
            kernel = weights[KERNEL]
            found.append((layer, kernel.weight, kernel.quantizer, kernel.variables, weights[BIAS].weight))
    return found


def layer_response(layer, inputs, kernel):
    """The linear part of a Conv2D, DepthwiseConv2D or Dense `layer` applied to `inputs` with another `kernel`."""
    op = kernel_kind(layer).tflite_op
    if op == "DEPTHWISE_CONV_2D":
        strides = (1, *layer.strides, 1)
        return tf.nn.depthwise_conv2d(
            inputs, kernel, strides, layer.padding.upper(), dilations=layer.dilation_rate
        )
    if op == "CONV_2D":
        return tf.nn.conv2d(inputs, kernel, layer.strides, layer.padding.upper(), dilations=layer.dilation_rate)
    return tf.tensordot(inputs, kernel, axes=1)


def correct_biases(qat_model, images, steps: Optional[int] = None) -> dict:
    """Subtract from every quantized conv/dense bias the mean shift its kernel's rounding causes on `images`.

    Args:
      qat_model: a calibrated model from `tfqat.quantize_model`.
      images: sample inputs, in any form `tfqat.calibrate` takes (labels are ignored).
      steps: how many batches to use (default: all).
    Returns:
      Layer name -> the per-channel shift that was removed (numpy).
    """
    layers = kernel_layers(qat_model)
    if not layers:
        msg = f"model '{qat_model.name}' has no quantized conv/dense layer with a bias; pass a model from quantize_model"
        raise ValueError(msg)
    probe = keras.Model(qat_model.input, [wrapper.input for wrapper, *_ in layers])

    @tf.function
    def channel_sums(batch):
        inputs = probe(batch, training=False)
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        sums = []
        for (wrapper, kernel, quantizer, variables, _), x in zip(layers, inputs):
            error = quantizer(kernel, False, variables) - kernel
            response = layer_response(wrapper.layer, x, error)
            sums.append(tf.reduce_sum(tf.cast(tf.reshape(response, [-1, response.shape[-1]]), tf.float64), axis=0))
        return sums

    totals, used = None, 0
    for batch in image_batches(images, steps):
        sums = channel_sums(tf.convert_to_tensor(batch, tf.float32))
        totals = sums if totals is None else [t + s for t, s in zip(totals, sums)]
        used += int(np.shape(batch)[0])
    if used == 0:
        raise ValueError("correct_biases got no images")
    shifts = {}
    for (wrapper, *_, bias), total in zip(layers, totals):
        positions = used * int(np.prod(wrapper.output_shape[1:-1]))  # output positions per image (1 for Dense)
        shift = (total.numpy() / positions).astype(np.float32)
        bias.assign(bias - shift)
        shifts[wrapper.name] = shift
    return shifts
