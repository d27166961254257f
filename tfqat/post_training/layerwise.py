"""Run a quantized model and its float twin side by side, one layer at a time, on a whole set of images.

Layer-by-layer methods (AdaRound) change a layer from what reaches it from the
layers before, already changed: its quantized inputs, and the float inputs
the float model gives it on the same images. A plain forward pass per layer
would cost a pass per layer; here each layer runs once on every image, with
the tensors still needed kept in memory and freed after their last consumer.
"""

from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer

from tfqat._keras import keras
from tfqat.graph import functional

# Called before a layer runs with (layer, quantized inputs, float inputs); it may change the layer's weights.
BeforeLayer = Callable[[keras.layers.Layer, tuple, tuple], None]


def float_twins(qat_model, folded_float_model) -> Callable:
    """Map each layer of a QAT model to the layer of the folded float model it quantizes (None: identity).

    `folded_float_model` is `tfqat.graph.canonical.canonical_model` of the model the QAT model was made from.
    """

    def twin(layer):
        name = layer.layer.name if isinstance(layer, keras.layers.Wrapper) else layer.name
        try:
            return folded_float_model.get_layer(name)
        except ValueError:
            if isinstance(layer, quantize_layer.QuantizeLayer):  # the input's quantizer: nothing to do in float
                return None
            msg = f"layer '{layer.name}' of '{qat_model.name}' has no counterpart in float model '{folded_float_model.name}'"
            raise ValueError(msg) from None

    return twin


def run_side_by_side(
    model, images: np.ndarray, twin: Callable, before_layer: Optional[BeforeLayer] = None, batch_size: int = 32,
):
    """Run every layer of `model` on `images` in graph order, and its float twin on the float tensors.

    Returns the model's (quantized output, float output) as numpy arrays.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"model '{model.name}' must have one input and one output")
    remaining = {tensor_id: len(users) for tensor_id, users in functional.consumers(model).items()}
    input_id, output_id = str(id(model.inputs[0])), str(id(model.outputs[0]))
    quantized, floating = {input_id: images}, {input_id: images}
    for node in functional.call_order(model):
        layer = node.layer
        args_q, kwargs_q = functional.node_arguments(node, quantized)
        args_f, kwargs_f = functional.node_arguments(node, floating)
        if before_layer is not None:
            before_layer(layer, args_q, args_f)
        float_layer = twin(layer)
        out_q = _call_in_batches(layer, args_q, kwargs_q, batch_size)
        out_f = args_f[0] if float_layer is None else _call_in_batches(float_layer, args_f, kwargs_f, batch_size)
        for tensor_id in node.flat_input_ids:
            remaining[tensor_id] -= 1
            if remaining[tensor_id] == 0 and tensor_id != output_id:
                del quantized[tensor_id], floating[tensor_id]
        (tensor_id,) = node.flat_output_ids
        quantized[tensor_id], floating[tensor_id] = out_q, out_f
    return quantized[output_id], floating[output_id]


def _call_in_batches(layer, args, kwargs, batch_size):
    arrays = [a for a in tf.nest.flatten(args) if isinstance(a, np.ndarray)]
    count = arrays[0].shape[0]
    outputs = []
    for start in range(0, count, batch_size):
        chunk = tf.nest.map_structure(
            lambda a: a[start : start + batch_size] if isinstance(a, np.ndarray) else a, args
        )
        outputs.append(np.asarray(layer(*chunk, **{"training": False, **kwargs})))
    return np.concatenate(outputs)
