"""Rebuilding functional Keras graphs: inlining nested models and rewriting layers.

TFMOT's `quantize_apply` only sees top-level layers, and transfer-learning code
nests MobileNetV2 inside a classifier; so graphs are replayed node by node into
one flat functional model, with a hook to replace or drop layers on the way.
"""

import contextlib
import copy
from typing import Callable, Optional

from tfqat._keras import keras

import tensorflow as tf

# A hook gets (layer, node args, node kwargs) and returns output tensors, or None
# to have the layer cloned and called as it was.
LayerHook = Callable[[keras.layers.Layer, tuple, dict], Optional[object]]


def check_functional(model) -> None:
    """Raise a clear error unless `model` is a built tf_keras functional or Sequential model."""
    if not isinstance(model, keras.Model):
        if type(model).__module__.startswith("keras"):
            msg = (
                f"{type(model).__name__} is a Keras 3 model; tfqat (like TFMOT) needs a tf_keras "
                "model: build it with `import tf_keras` or set TF_USE_LEGACY_KERAS=1 first."
            )
        else:
            msg = f"expected a tf_keras Model, got {type(model).__name__}."
        raise TypeError(msg)
    if not getattr(model, "_is_graph_network", False):
        msg = (
            f"model '{model.name}' is a subclassed model; tfqat needs a functional or Sequential "
            "model whose layer graph it can read."
        )
        raise ValueError(msg)


def clone_layer(layer):
    """A fresh copy of `layer` with its configuration (weights are set after it is built)."""
    return layer.__class__.from_config(layer.get_config())


def autograph_off():
    """A block in which Keras calls layers as they are, not converted by AutoGraph.

    Keras converts every layer call of a functional graph with AutoGraph; Keras' own layers (and tfqat's
    quantizers) have no tensor-dependent Python control flow and do not need it, and skipping it makes
    rebuilding or quantizing MobileNetV2 20-40 % faster. A user's custom layer may need it: call those outside.
    """
    try:
        from tensorflow.python.autograph.core import ag_ctx
    except ImportError:  # a TensorFlow that moved its private module: convert as Keras does by default
        return contextlib.nullcontext()
    return ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED)


def _is_keras_layer(layer) -> bool:
    return type(layer).__module__.startswith("tf_keras.")


def call_cloned(layer, args, kwargs):
    """Clone `layer`, call it on new tensors and copy its weights across."""
    new_layer = clone_layer(layer)
    with autograph_off() if _is_keras_layer(layer) else contextlib.nullcontext():
        outputs = new_layer(*args, **kwargs)
    new_layer.set_weights(layer.get_weights())
    return outputs


def consumers(model) -> dict:
    """Map each tensor id of `model` to the layers that consume it."""
    used_by = {}
    for node in call_order(model):
        for tensor_id in node.flat_input_ids:
            used_by.setdefault(tensor_id, []).append(node.layer)
    return used_by


def node_arguments(node, tensors: dict):
    flat = copy.copy(node._flat_arguments)
    for tensor_id, index in node._keras_inputs_ids_and_indices:
        flat[index] = tensors[tensor_id]
    args, kwargs = tf.nest.pack_sequence_as((node.call_args, node.call_kwargs.values()), flat)
    return tuple(args), dict(zip(node.call_kwargs.keys(), kwargs))


def _is_nested_model(layer) -> bool:
    return isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False)


def call_order(model):
    """The nodes of `model` that call a layer, in an order where every node's inputs come first."""
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if not node.is_input:
                yield node


def replay(model, inputs, hook: Optional[LayerHook] = None):
    """Call every layer of `model` on `inputs` in graph order, inlining nested models.

    Returns the new outputs in the structure of `model.outputs`.
    """
    tensors = {str(id(ref)): new for ref, new in zip(model.inputs, tf.nest.flatten(inputs))}
    for node in call_order(model):
        args, kwargs = node_arguments(node, tensors)
        layer = node.layer
        if _is_nested_model(layer):
            # The nested model's call kwargs (e.g. training=False) are dropped:
            # the flat graph is called as a whole.
            outputs = replay(layer, args[0], hook)
        else:
            outputs = hook(layer, args, kwargs) if hook else None
            if outputs is None:
                outputs = call_cloned(layer, args, kwargs)
        for tensor_id, new in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
            tensors[tensor_id] = new
    new_outputs = [tensors[str(id(ref))] for ref in model.outputs]
    return new_outputs[0] if len(new_outputs) == 1 else new_outputs


def rebuild(model, hook: Optional[LayerHook] = None, name: Optional[str] = None):
    """A new flat functional model equal to `model`, with `hook` applied to each layer."""
    check_functional(model)
    inputs = [
        keras.Input(
            batch_shape=ref.shape, dtype=ref.dtype, name=layer.name
        )
        for ref, layer in zip(model.inputs, model._input_layers)
    ]
    outputs = replay(model, inputs if len(inputs) > 1 else inputs[0], hook)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=name or model.name)


def flatten(model):
    """Inline every nested functional model so that all layers sit at the top level."""
    return rebuild(model)


def is_flat(model) -> bool:
    """Whether `model` is a functional (not Sequential) model with no nested model among its layers.

    Each layer must also be called once, by this graph: a layer called again elsewhere has more than one
    node, and rewrites read a layer's single output.
    """
    check_functional(model)
    if isinstance(model, keras.Sequential):
        return False
    return all(not _is_nested_model(layer) and len(layer._inbound_nodes) == 1 for layer in model.layers)


def flat_graph(model):
    """`model` itself when it is already flat, else its flattened copy: a graph for rewrites to read.

    Rewrites read the graph and rebuild it with fresh layers, so a flat model needs no copy first;
    that copy was most of the time a rewrite of MobileNetV2 took.
    """
    return model if is_flat(model) else flatten(model)


def first_of(*hooks: LayerHook) -> LayerHook:
    """A hook that asks each of `hooks` in turn and returns the first answer that is not None."""

    def hook(layer, args, kwargs):
        for each in hooks:
            outputs = each(layer, args, kwargs)
            if outputs is not None:
                return outputs
        return None

    return hook
