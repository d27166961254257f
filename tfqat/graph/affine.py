"""Per-channel affine layers as one 1x1 depthwise convolution.

`Rescaling`, `Normalization` and a `BatchNormalization` with no conv of its own to fold into
(DenseNet's pre-activation blocks, a BN after a concatenation) each compute y = x * scale + offset
on the channels of an image tensor. So does a 1x1 DepthwiseConv2D with a bias: a layer with a
power-of-two kernel like every other, which TFLite runs as one DEPTHWISE_CONV_2D (Vitis AI turns
such BNs into depthwise convs too). A chain of them (EfficientNet's Rescaling -> Normalization)
composes into one, so the int8 model rounds once. The maps are composed in float64.
"""

from typing import Optional, Tuple

import numpy as np

from tfqat._keras import keras
from tfqat.graph import functional

AFFINE_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization, keras.layers.BatchNormalization)
Affine = Tuple[np.ndarray, np.ndarray]  # (scale, offset), each (channels,) float64


def on_channels(axis, rank: int) -> bool:
    """True when `axis` (an int or a list) is only the last axis of a tensor of this rank."""
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return [a % rank for a in axes] == [rank - 1]


def _per_channel(value, channels: int) -> Optional[np.ndarray]:
    """`value` as (channels,) float64 if it is one number or one per channel, else None."""
    array = np.asarray(value, np.float64)
    if array.size not in (1, channels) or (array.size == channels and array.shape[-1:] != (channels,)):
        return None
    return np.broadcast_to(array.reshape(-1), (channels,)).copy()


def bn_affine(gamma, beta, mean, variance, epsilon) -> Affine:
    """BatchNormalization in inference mode: gamma * (x - mean) / sqrt(var + eps) + beta = x * m + beta - mean * m."""
    multiplier = gamma / np.sqrt(variance + epsilon)
    return multiplier, beta - mean * multiplier


def bn_parameters(bn):
    """(gamma, beta, mean, variance) of a BatchNormalization layer, with defaults for off flags."""
    weights = list(bn.get_weights())
    gamma = weights.pop(0) if bn.scale else None
    beta = weights.pop(0) if bn.center else None
    mean, variance = weights
    if gamma is None:
        gamma = np.ones_like(mean)
    if beta is None:
        beta = np.zeros_like(mean)
    return gamma, beta, mean, variance


def _batch_norm_affine(bn) -> Affine:
    gamma, beta, mean, variance = (np.asarray(p, np.float64) for p in bn_parameters(bn))
    return bn_affine(gamma, beta, mean, variance, bn.epsilon)


def _normalization_affine(layer, channels: int) -> Optional[Affine]:
    mean = _per_channel(layer.mean, channels)
    variance = _per_channel(layer.variance, channels)
    if mean is None or variance is None:
        return None
    std = np.maximum(np.sqrt(variance), keras.backend.epsilon())
    if layer.invert:
        return std, mean
    return 1.0 / std, -mean / std


def channel_affine(layer, input_shape) -> Optional[Affine]:
    """(scale, offset) per channel when `layer` is an affine map on the channels of an image tensor, else None."""
    if not isinstance(layer, AFFINE_LAYERS) or input_shape is None or len(input_shape) != 4:
        return None
    channels = input_shape[-1]
    if channels is None:
        return None
    if isinstance(layer, keras.layers.Rescaling):
        scale, offset = _per_channel(layer.scale, channels), _per_channel(layer.offset, channels)
        return None if scale is None or offset is None else (scale, offset)
    if isinstance(layer, keras.layers.Normalization):
        axis = layer.axis if layer.axis else ()
        if axis and not on_channels(axis, 4):
            return None
        return _normalization_affine(layer, channels)
    if not on_channels(layer.axis, 4):
        return None
    return _batch_norm_affine(layer)


def compose(first: Affine, second: Affine) -> Affine:
    """The map `second(first(x))`: (x s1 + o1) s2 + o2."""
    (s1, o1), (s2, o2) = first, second
    return s1 * s2, o1 * s2 + o2


def depthwise_layer(affine: Affine, name: str, dtype):
    """A 1x1 DepthwiseConv2D computing `affine`, and its (kernel, bias) to set once it is built."""
    scale, offset = affine
    kernel = scale.reshape(1, 1, -1, 1).astype(np.float32)
    layer = keras.layers.DepthwiseConv2D(1, use_bias=True, name=name, dtype=dtype)
    return layer, [kernel, offset.astype(np.float32)]


def _input_shape(layer):
    """The shape of `layer`'s one float input, or None (shared by several nodes, or not float: a uint8
    image that Rescaling casts has no int8 form; the int8 model quantizes a float32 input)."""
    try:
        tensor = layer.input
    except (AttributeError, ValueError):
        return None
    return tuple(tensor.shape) if getattr(tensor, "dtype", None) is not None and tensor.dtype.is_floating else None


def depthwise_hook(flat, kinds=AFFINE_LAYERS, skip=frozenset()) -> functional.LayerHook:
    """A rebuild hook turning every affine layer of `kinds` in `flat` into a 1x1 depthwise conv.

    A layer whose output only feeds another such layer is skipped and composed into that one, which
    takes the name of the last layer of the chain. Layers named in `skip` (BNs folded into their conv)
    are left to other hooks.
    """
    affines = {
        layer.name: affine
        for layer in flat.layers
        if isinstance(layer, kinds) and layer.name not in skip
        and (affine := channel_affine(layer, _input_shape(layer))) is not None
    }
    used_by = functional.consumers(flat)
    outputs = {str(id(t)) for t in flat.outputs}
    absorbed = set()  # layers composed into the one affine layer their output feeds
    for layer in flat.layers:
        if layer.name not in affines or str(id(layer.output)) in outputs:
            continue
        users = used_by.get(str(id(layer.output)), [])
        if len(users) == 1 and users[0].name in affines:
            absorbed.add(layer.name)
    chains = {}  # composing layer -> affine maps in call order
    for layer in flat.layers:
        if layer.name in affines and layer.name not in absorbed:
            chain, current = [affines[layer.name]], layer
            while (producer := current._inbound_nodes[-1].inbound_layers) and getattr(producer, "name", None) in absorbed:
                chain.insert(0, affines[producer.name])
                current = producer
            chains[layer.name] = chain

    def hook(layer, args, kwargs):
        if layer.name in absorbed:
            return args[0]  # placeholder: composed into the layer its output feeds
        if layer.name not in chains:
            return None
        affine = chains[layer.name][0]
        for following in chains[layer.name][1:]:
            affine = compose(affine, following)
        new_layer, weights = depthwise_layer(affine, layer.name, layer.dtype)
        outputs = new_layer(args[0])
        new_layer.set_weights(weights)
        return outputs

    return hook
