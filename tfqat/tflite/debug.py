"""Per-layer quantization debugger: where an int8 model departs from the float model it came from.

Runs the fully int8 TFLite model with every intermediate tensor kept, and the
BN-folded float Keras model, on the same images; pairs each int8 tensor with
the Keras layer whose output it holds; and measures per tensor how much of the
float signal survives (SQNR), how much clips and how much rounds to zero. An
activation's SQNR includes the error carried in from every layer before it, so
the layer where it drops is the one to look at; a weight's SQNR is its
rounding alone.

Pairing reads the converter's tensor names: an op's output is named after the
TF ops fused into it, joined by ';', the first being the op whose result the
tensor holds, and TFMOT's wrappers prefix layer scopes with 'quant_'. So
'model/quant_block_1_expand_relu/Relu6;model/quant_block_1_expand/Conv2D' is
the conv with its ReLU6 fused: the output of layer 'block_1_expand_relu'.

The float reference is the model before quantization: after QAT fine-tuning the
int8 model's weights have moved, and that drift counts as error here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from tfqat._keras import keras
from tfqat.tflite.debug_report import DebugReport
from tfqat.tflite.litert import (
    TFLiteModelError, TensorSpec, _checked_images, describe, load_interpreter, model_label, quantize, target_kernels,
)
from tfqat.quantization.kinds import kind_of_op
from tfqat.tflite.ops import op_kind
from tfqat.tflite.quant_error import ACTIVATION_RANGE, WEIGHT_RANGE, Tally, fraction, scale_exponents, sqnr_from_energies


# Pairing TFLite tensors with Keras layers.


@dataclass(frozen=True)
class _Pair:
    """An int8 tensor of the TFLite model and the float Keras layer output (or kernel) it holds."""

    kind: str  # "activation" or "weight"
    op_index: int
    op: str
    tensor_index: int
    tensor: str
    layer: str
    scales: tuple[float, ...]
    zero_point: int
    axis: int  # quantized dimension of per-channel scales

    def scale(self, ndim: int) -> np.ndarray:
        """The scales shaped to broadcast over a tensor of `ndim` dimensions."""
        if len(self.scales) == 1:
            return np.float32(self.scales[0])
        shape = [1] * ndim
        shape[self.axis] = len(self.scales)
        return np.asarray(self.scales, np.float32).reshape(shape)


def keras_layer_name(tensor_name: str, layer_names) -> str | None:
    """The Keras layer whose output (or kernel) a TFLite tensor holds, read from its name; None if none.

    Tries each ';'-joined part in order and each scope from the innermost,
    without TFMOT's 'quant_' prefix first.
    """
    match = _layer_scope(tensor_name, layer_names)
    return match[0] if match else None


def _layer_scope(tensor_name: str, layer_names) -> tuple[str, str] | None:
    """(layer name, TF op name) of the first part of the tensor name that names a layer."""
    for part in tensor_name.split(";"):
        segments = part.split("/")
        for scope in reversed(segments[:-1]):  # the last segment names the TF op
            if scope.startswith("quant_") and scope[len("quant_"):] in layer_names:
                return scope[len("quant_"):], segments[-1]
            if scope in layer_names:
                return scope, segments[-1]
    return None


def _holds_output(layer, tf_op: str) -> bool:
    """False for a tensor before a layer's own activation (Dense(activation='softmax') becomes
    FULLY_CONNECTED then SOFTMAX): the TF op then does not name the activation. Fused ReLUs do."""
    activation = getattr(layer, "activation", None)
    if activation is None or activation is keras.activations.linear:
        return True
    return getattr(activation, "__name__", "").lower() in tf_op.lower()


def _short(name: str) -> str:
    return name.split(";")[0]


def _quantization(details: dict) -> tuple[tuple[float, ...], int, int]:
    """(scales, zero point, quantized dimension); zero points are 0, or one per tensor, in int8 models."""
    params = details["quantization_parameters"]
    zero_point = int(params["zero_points"][0]) if len(params["zero_points"]) else 0
    return tuple(float(s) for s in params["scales"]), zero_point, int(params["quantized_dimension"])


def _pairs(interpreter: Interpreter, folded) -> tuple[list[_Pair], list[str]]:
    """Every int8 op output and kernel that has a Keras counterpart, in execution order; and the rest's names."""
    tensors = {int(d["index"]): d for d in interpreter.get_tensor_details()}
    layers = {layer.name: layer for layer in folded.layers}
    (input_details,) = interpreter.get_input_details()
    scales, zero_point, axis = _quantization(input_details)
    pairs = [_Pair("activation", -1, "INPUT", int(input_details["index"]), _short(input_details["name"]),
                   folded.input_names[0], scales, zero_point, axis)]
    unmatched = []
    for op in interpreter._get_ops_details():  # noqa: SLF001  (LiteRT's only op listing, in execution order)
        index, name = int(op["index"]), str(op["op_name"])
        if kind_of_op(name) is not None:  # the op of a layer with a kernel: pair the kernel too
            weight = tensors[int(op["inputs"][op_kind(name).weights])]
            layer = keras_layer_name(str(weight["name"]), layers)
            kernel = _kernel(layers[layer], name) if layer else None
            if kernel is not None and kernel.shape == tuple(weight["shape"]) and weight["dtype"] == np.int8:
                pairs.append(_Pair("weight", index, name, int(weight["index"]), _short(weight["name"]), layer,
                                   *_quantization(weight)))
            else:
                unmatched.append(_short(weight["name"]))
        for output in op["outputs"]:
            details = tensors[int(output)]
            layer, tf_op = _layer_scope(str(details["name"]), layers) or (None, "")
            if layer and details["dtype"] == np.int8 and _output_fits(layers[layer], details, tf_op):
                pairs.append(_Pair("activation", index, name, int(output), _short(details["name"]), layer,
                                   *_quantization(details)))
            else:
                unmatched.append(_short(details["name"]))
    return pairs, unmatched


def _kernel(layer, op: str) -> np.ndarray | None:
    """The layer's float kernel in the layout of TFLite op `op`, or None if the layer has no such kernel."""
    kind = kind_of_op(op)
    kernel = getattr(layer, kind.weight_attribute, None)
    return None if kernel is None else kind.to_tflite(np.asarray(kernel.numpy(), np.float32))


def _output_fits(layer, details: dict, tf_op: str) -> bool:
    if not _holds_output(layer, tf_op):
        return False
    try:
        shape = tuple(layer.output.shape[1:])
    except (AttributeError, RuntimeError):  # a shared or multi-output layer has no single output
        return False
    return shape == tuple(int(d) for d in details["shape"][1:])


# Running both models.


def _debug_interpreter(model, num_threads: int | None) -> Interpreter:
    # XNNPACK (a file made for it, or none) hides every tensor inside its delegate: the builtin kernels show them.
    kernels = None if isinstance(model, Interpreter) else target_kernels(model)
    kernels = "builtin" if kernels == "xnnpack" else kernels
    interpreter = load_interpreter(model, num_threads=num_threads, kernels=kernels, preserve_all_tensors=True)
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise TFLiteModelError(f"LiteRT cannot load {model_label(model)}: {str(error).strip().splitlines()[0]}") from None
    return interpreter


def _int8_input(interpreter: Interpreter, model) -> TensorSpec:
    io = describe(interpreter)
    if len(io.inputs) != 1:
        raise ValueError(f"{model_label(model)} has {len(io.inputs)} inputs; debug_models needs a single-input model")
    spec = io.inputs[0]
    if spec.dtype != "int8" or not spec.quantized:
        raise ValueError(
            f"{model_label(model)} has a {spec.dtype} input, so it is not a fully int8 model; "
            "debug_models needs the int8 export of tfqat.export_tflite"
        )
    return spec


def _check_float_model(float_model, input_spec: TensorSpec) -> None:
    if not isinstance(float_model, keras.Model):
        raise TypeError(f"float_model must be a tf_keras Model, got {type(float_model).__name__}")
    wrappers = [layer.name for layer in float_model.layers if type(layer).__name__.startswith("Quantize")]
    if wrappers:
        raise ValueError(
            f"float_model '{float_model.name}' is a quantized model (layer '{wrappers[0]}'); "
            "pass the float model it was made from"
        )
    shape, expected = tuple(float_model.inputs[0].shape[1:]), input_spec.shape[1:]
    if len(shape) != len(expected) or any(d not in (None, e) for d, e in zip(shape, expected)):
        raise ValueError(
            f"float_model '{float_model.name}' takes inputs of shape {[None, *shape]} but the TFLite model "
            f"takes {list(input_spec.shape)}; pass the float model the int8 model was made from"
        )


def debug_models(
    float_model,
    int8_tflite_path: str | os.PathLike | bytes,
    images: np.ndarray,
    *,
    max_images: int = 64,
    batch_size: int = 8,
    num_threads: int | None = None,
) -> DebugReport:
    """Compares every int8 tensor of a TFLite model with the float model's layer output it holds.

    Args:
      float_model: the float tf_keras model the int8 model was made from (the
        model given to tfqat.quantize_model); its BatchNormalization layers are
        folded here, as tfqat folds them, so conv outputs line up.
      int8_tflite_path: the fully int8 .tflite (tfqat.export_tflite), or its bytes.
      images: float images [N, H, W, C] as both models take them.
      max_images: use the first this many images.
      batch_size: images per float-model call (LiteRT runs one per invoke);
        bounds the memory of the float layer outputs held at once.
      num_threads: LiteRT CPU threads; None lets LiteRT choose.

    Returns:
      A DebugReport: per matched tensor, in execution order, its scale exponent,
      clipped and zeroed fractions and SQNR (inf for an exact tensor).

    Raises:
      ValueError: a float or missing TFLite model, images that do not fit it,
        or a float model none of whose layers match the TFLite tensors.
    """
    from tfqat.graph.canonical import canonical_model

    if max_images < 1 or batch_size < 1:
        raise ValueError(f"max_images={max_images} and batch_size={batch_size} must be integers >= 1")
    interpreter = _debug_interpreter(int8_tflite_path, num_threads)
    input_spec = _int8_input(interpreter, int8_tflite_path)
    images = _checked_images(images, input_spec)[:max_images]
    if len(images) == 0:
        raise ValueError("images is empty; debug_models needs at least one image")
    _check_float_model(float_model, input_spec)
    folded = canonical_model(float_model)
    pairs, unmatched = _pairs(interpreter, folded)
    activations = [p for p in pairs if p.kind == "activation" and p.op_index >= 0]
    if not activations:
        raise ValueError(
            f"no tensor of {model_label(int8_tflite_path)} matches a layer of float model '{float_model.name}' "
            f"(e.g. '{unmatched[0] if unmatched else ''}'); pass the float model the int8 model was made from"
        )
    tallies = _activation_tallies(interpreter, input_spec, folded, [p for p in pairs if p.kind == "activation"],
                                  images, batch_size)
    rows = [_row(p, tallies[p] if p in tallies else _weight_tally(p, interpreter, folded)) for p in pairs]
    return DebugReport(rows=rows, images=len(images), unmatched=tuple(unmatched), source=model_label(int8_tflite_path))


def _activation_tallies(interpreter, input_spec, folded, pairs: list[_Pair], images, batch_size) -> dict[_Pair, Tally]:
    """Both models batch by batch: the float layer outputs of a batch are all held, the sums only are kept."""
    import tensorflow as tf

    layer_names = list(dict.fromkeys(p.layer for p in pairs if p.op != "INPUT"))
    probe = keras.Model(folded.inputs, [folded.get_layer(name).output for name in layer_names])
    run_probe = tf.function(lambda x: probe(x, training=False), reduce_retracing=True)
    tallies = {p: Tally() for p in pairs}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        outputs = run_probe(tf.constant(batch))
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        floats = {name: np.asarray(out) for name, out in zip(layer_names, outputs)}
        floats[folded.input_names[0]] = batch
        ints = _invoke_each(interpreter, quantize(batch, input_spec), input_spec, [p.tensor_index for p in pairs])
        for pair, tally in tallies.items():
            reference = floats[pair.layer]
            tally.add(reference, ints[pair.tensor_index], pair.scale(reference.ndim), pair.zero_point, ACTIVATION_RANGE)
    return tallies


def _invoke_each(interpreter: Interpreter, feed: np.ndarray, input_spec: TensorSpec, indices) -> dict[int, np.ndarray]:
    """The int8 tensors `indices` for each image of `feed`, stacked [N, ...]; one invoke per image."""
    stacked = {}
    for i, image in enumerate(feed):
        interpreter.set_tensor(input_spec.index, image[None])
        interpreter.invoke()
        for index in indices:
            value = interpreter.get_tensor(index)
            if index not in stacked:
                stacked[index] = np.empty((len(feed), *value.shape[1:]), value.dtype)
            stacked[index][i] = value[0]
    return stacked


def _weight_tally(pair: _Pair, interpreter: Interpreter, folded) -> Tally:
    kernel = _kernel(folded.get_layer(pair.layer), pair.op)
    tally = Tally()
    tally.add(kernel, interpreter.get_tensor(pair.tensor_index), pair.scale(kernel.ndim), pair.zero_point, WEIGHT_RANGE)
    return tally


def _row(pair: _Pair, tally: Tally) -> dict:
    low, high, exact = scale_exponents(pair.scales)
    return {
        "kind": pair.kind,
        "op_index": pair.op_index,
        "op": pair.op,
        "layer": pair.layer,
        "tensor": pair.tensor,
        "scale_exp": low,
        "scale_exp_max": high,
        "channels": len(pair.scales),
        "power_of_two": exact,
        "zero_point": pair.zero_point,
        "clipped": fraction(tally.clipped, tally.count),
        "zeroed": fraction(tally.zeroed, tally.nonzero),
        "sqnr_db": sqnr_from_energies(tally.signal, tally.noise),
    }
