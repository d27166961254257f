"""Folding BatchNormalization into the convolution before it.

The kernel must be quantized *after* BN is folded into it: quantizing first and
letting the TFLite converter fold later rescales every channel by gamma/sigma and
breaks the power-of-two scales. So tfqat folds first and trains the folded conv.
A BN with no conv of its own to fold into (DenseNet's pre-activation blocks, a
BN after a concatenation) is the same per-channel affine map as a 1x1
depthwise convolution, and becomes one: a layer with a power-of-two kernel like
every other (what Vitis AI does with such BNs too).
"""

import numpy as np

from tfqat._keras import keras
from tfqat.graph import affine, functional
from tfqat.quantization.kinds import KINDS, kernel_kind

def fold_bn_arrays(kernel, bias, gamma, beta, mean, variance, epsilon, depthwise=False):
    """Kernel and bias of conv followed by BN in inference mode, as one conv.

    y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta
      = conv_with(kernel * m)(x) + (b - mean) * m + beta,  m = gamma / sqrt(var + eps)
    """
    multiplier, offset = affine.bn_affine(gamma, beta, mean, variance, epsilon)
    kind = KINDS["depthwise" if depthwise else "conv"]
    # One multiplier per output channel, laid out against the kernel's channel axes (depthwise: in * dm + m).
    multiplier_kernel = multiplier.reshape(kind.channel_dims(kernel.shape))
    folded_kernel = kernel * multiplier_kernel
    folded_bias = bias * multiplier + offset
    return folded_kernel.astype(kernel.dtype), folded_bias.astype(kernel.dtype)


def _folded_conv(conv, bn):
    """A conv layer with bias holding `conv` and `bn` folded together, named like `conv`."""
    weights = conv.get_weights()
    kernel = weights[0]
    kind = kernel_kind(conv)
    bias = weights[1] if conv.use_bias else np.zeros(kind.output_channels(kernel.shape), kernel.dtype)
    gamma, beta, mean, variance = affine.bn_parameters(bn)
    folded = fold_bn_arrays(kernel, bias, gamma, beta, mean, variance, bn.epsilon, kind.grouped)
    config = conv.get_config()
    config["use_bias"] = True
    config["bias_initializer"] = "zeros"
    new_conv = conv.__class__.from_config(config)
    return new_conv, folded


def conv_folds(flat) -> dict:
    """BN layer name -> the conv of `flat` it folds into.

    A pair folds when the conv has no activation of its own, its output goes only
    to the BN, and the BN normalizes the channel axis.
    """
    used_by = functional.consumers(flat)
    fold_into = {}
    for layer in flat.layers:
        kind = kernel_kind(layer)
        if kind is None or not kind.folds_batch_norm or layer.activation is not keras.activations.linear:
            continue
        users = used_by.get(str(id(layer.output)), [])
        if len(users) == 1 and isinstance(users[0], keras.layers.BatchNormalization):
            if affine.on_channels(users[0].axis, 4):  # a conv's output: an image tensor
                fold_into[users[0].name] = layer
    return fold_into


def conv_fold_hook(fold_into: dict) -> functional.LayerHook:
    """A rebuild hook applying the folds of `conv_folds`: each conv is called where its BN was."""
    folded_names = {conv.name for conv in fold_into.values()}

    def hook(layer, args, kwargs):
        if layer.name in folded_names:
            return args[0]  # placeholder: the conv is applied when its BN is reached
        if layer.name not in fold_into:
            return None
        new_layer, weights = _folded_conv(fold_into[layer.name], layer)
        outputs = new_layer(args[0])
        new_layer.set_weights(list(weights))
        return outputs

    return hook


def fold_batch_norms(model, standalone_as_depthwise: bool = True):
    """Return a flat copy of `model` with every foldable Conv/DepthwiseConv + BN pair merged.

    See `conv_folds` for which pairs fold. Each BN's own epsilon is used. With
    `standalone_as_depthwise`, every other BN on the channels of an image tensor
    becomes a 1x1 DepthwiseConv2D with the same inference-mode output
    (`tfqat.graph.affine`). Nested models are inlined. The original model
    is left untouched.
    """
    flat = functional.flat_graph(model)
    fold_into = conv_folds(flat)
    hooks = [conv_fold_hook(fold_into)]
    if standalone_as_depthwise:
        hooks.append(affine.depthwise_hook(flat, (keras.layers.BatchNormalization,), skip=set(fold_into)))
    return functional.rebuild(flat, functional.first_of(*hooks))
