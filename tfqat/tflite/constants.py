"""Constants the converter merged, quantized again at the power-of-two scale they trained with.

The converter unites equal constants (MobileNetV3 adds the same 3.0 in every hard-sigmoid), and a
constant with more than one user loses its FakeQuant's range: it is quantized by its own min/max
instead (3.0 at scale 3/255, zero point -128), not at a power of two. The value it holds is the
FakeQuant's output, which lies on the power-of-two grid of the Keras model, so quantizing it again
with the weights' rule (the smallest 2**k with max|c| <= 127 * 2**k, zero point 0) gives back the
int8 constant every one of its users had in training.

Kernels are merged the same way when two layers hold equal ones: an untrained DenseNet's
batch normalizations before ReLU (1x1 depthwise convolutions after folding, each kernel
1/sqrt(1 + eps), which rounds to exactly 1.0) are equal wherever their channel counts are, and
the shared kernel comes out per-channel at max/127. Its values and its users' biases go back
to the power-of-two grid (`requantize_shared_kernels`).
"""

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from tfqat.quantization import pow2

_ELEMENTWISE = {schema_fb.BuiltinOperator.ADD, schema_fb.BuiltinOperator.SUB, schema_fb.BuiltinOperator.MUL}
# op -> (kernel input, bias input)
_WEIGHTED = {
    schema_fb.BuiltinOperator.CONV_2D: (1, 2),
    schema_fb.BuiltinOperator.DEPTHWISE_CONV_2D: (1, 2),
    schema_fb.BuiltinOperator.FULLY_CONNECTED: (1, 2),
}


def pow2_steps(values: np.ndarray, old_scale: float):
    """(int8 steps, exponent) of `values` on the weights' power-of-two grid, or None if they are not on it.

    `values` were dequantized from a grid of step `old_scale` (float32), so a point within a
    millionth of that step of the new grid is taken as on it.
    """
    exponent = int(pow2.weight_exponent(float(np.max(np.abs(values), initial=0.0))).numpy())
    steps = np.round(values / 2.0**exponent)
    if np.max(np.abs(steps * 2.0**exponent - values), initial=0.0) > 1e-6 * old_scale * 255:
        return None
    return steps.astype(np.int8), exponent


def _opcode(model, op) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def requantize_shared_constants(tflite_bytes: bytes):
    """TFLite bytes with every merged constant back at its power-of-two scale, and how many were changed:
    int8 operands of ADD/SUB/MUL (see the module's docstring) and kernels of convolutions and dense layers
    (`requantize_shared_kernels`)."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    changed = sum(_requantize_operands(model, subgraph) + requantize_shared_kernels(model, subgraph)
                  for subgraph in model.subgraphs)
    if not changed:
        return tflite_bytes, 0
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), changed


def _new_buffer(model, data: np.ndarray) -> int:
    """A buffer of its own: the converter shares one between equal data (3.0 and 1/6 both stored as 127)."""
    buffer = schema_fb.BufferT()
    buffer.data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def _constant(model, tensor):
    data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
    return None if data is None or len(data) == 0 else np.asarray(data, np.uint8)


def _requantize_operands(model, subgraph) -> int:
    operands = {i for op in subgraph.operators if _opcode(model, op) in _ELEMENTWISE for i in op.inputs}
    changed = 0
    for index in sorted(operands):
        tensor = subgraph.tensors[index]
        data = _constant(model, tensor)
        q = tensor.quantization
        if data is None or tensor.type != schema_fb.TensorType.INT8 or q is None:
            continue
        if q.scale is None or len(q.scale) != 1:
            continue
        scale, zero_point = float(q.scale[0]), int(q.zeroPoint[0])
        if zero_point == 0 and pow2.is_power_of_two(scale):
            continue  # already a power of two
        values = (data.view(np.int8).astype(np.float64) - zero_point) * scale
        found = pow2_steps(values, scale)
        if found is None:
            continue  # not on a power-of-two grid: left for the verifier to name
        steps, exponent = found
        tensor.buffer = _new_buffer(model, steps)
        q.scale, q.zeroPoint = [2.0**exponent], [0]
        q.min, q.max = None, None
        changed += 1
    return changed


def kernel_steps(values: np.ndarray, scales: np.ndarray, axis: int):
    """(int8 steps, exponents) of a kernel the converter quantized at `scales` along `axis`, on power-of-two grids.

    Its values are a FakeQuant's outputs (steps * 2**k of the Keras model), stored at scales no coarser
    than 2**k, so rounding them to the grid of the smallest 2**k that holds each channel gives them back.
    One exponent when every channel lies on the grid of the whole kernel's (a per-tensor model), else one
    per channel (a per-channel model); a channel of zeros takes the kernel's.
    """
    channels = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    channel_max = np.max(np.abs(channels), axis=1)
    tensor_exponent = float(pow2.weight_exponent(float(np.max(channel_max, initial=0.0))).numpy())
    per_channel = pow2.weight_exponent(channel_max.astype(np.float32)).numpy().astype(np.float64)
    per_channel = np.where(channel_max > 0, per_channel, tensor_exponent)
    whole = channels / 2.0**tensor_exponent
    off_grid = np.abs(np.round(whole) - whole) * 2.0**tensor_exponent > 0.5 * scales[:, None] * (1 + 1e-6)
    exponents = np.array([tensor_exponent]) if not off_grid.any() else per_channel
    steps = np.round(channels / 2.0 ** exponents[:, None] if len(exponents) > 1 else whole)
    steps = np.moveaxis(steps.reshape(np.moveaxis(values, axis, 0).shape), 0, axis)
    return np.clip(steps, pow2.WEIGHT_QMIN, pow2.WEIGHT_QMAX).astype(np.int8), exponents.astype(int)


def requantize_shared_kernels(model, subgraph) -> int:
    """Kernels used by more than one convolution or dense layer whose scales are not powers of two, put back
    on their power-of-two grid (`kernel_steps`), each user's bias rescaled to input scale x kernel scale.

    The Keras bias lies on that grid too (the bias quantizer rounds it at the accumulator's scale), and the
    converter's bias scale is no coarser, so rounding the converter's bias gives it back exactly.
    """
    users = {}
    for position, op in enumerate(subgraph.operators):
        if (inputs := _WEIGHTED.get(_opcode(model, op))) is not None and len(op.inputs) > inputs[0]:
            users.setdefault(int(op.inputs[inputs[0]]), []).append(position)
    changed = 0
    for index, positions in sorted(users.items()):
        tensor = subgraph.tensors[index]
        data, q = _constant(model, tensor), tensor.quantization
        if len(positions) < 2 or data is None or tensor.type != schema_fb.TensorType.INT8 or q is None:
            continue
        scales = np.asarray(q.scale if q.scale is not None else [], np.float64)
        if not len(scales) or all(pow2.is_power_of_two(float(s)) for s in scales) or np.any(np.asarray(q.zeroPoint)):
            continue
        axis = int(q.quantizedDimension) if len(scales) > 1 else 0
        shape = tuple(int(d) for d in tensor.shape)
        per_axis = np.broadcast_to(scales, (shape[axis],)) if len(scales) == 1 else scales
        values = data.view(np.int8).reshape(shape).astype(np.float64)
        values = values * np.expand_dims(per_axis, tuple(d for d in range(len(shape)) if d != axis))
        steps, exponents = kernel_steps(values, per_axis, axis)
        tensor.buffer = _new_buffer(model, steps)
        q.scale, q.zeroPoint = [2.0 ** float(e) for e in exponents], [0] * len(exponents)
        q.quantizedDimension = axis if len(exponents) > 1 else 0
        q.min, q.max = None, None
        for position in positions:
            _rescale_bias(model, subgraph, subgraph.operators[position], exponents)
        changed += 1
    return changed


def _rescale_bias(model, subgraph, op, kernel_exponents: np.ndarray) -> None:
    """The op's int32 bias at its input's scale x the new kernel scales (in a tensor of its own if shared)."""
    bias_input = _WEIGHTED[_opcode(model, op)][1]
    if len(op.inputs) <= bias_input or op.inputs[bias_input] < 0:
        return
    index = int(op.inputs[bias_input])
    bias = subgraph.tensors[index]
    data = _constant(model, bias)
    if data is None or bias.type != schema_fb.TensorType.INT32:
        return
    input_scale = float(subgraph.tensors[op.inputs[0]].quantization.scale[0])
    new_scales = input_scale * 2.0 ** kernel_exponents.astype(np.float64)
    old = data.view(np.int32).astype(np.float64) * np.asarray(bias.quantization.scale, np.float64)
    if sum(index in other.inputs for other in subgraph.operators) > 1:
        bias = schema_fb.TensorT()
        original = subgraph.tensors[index]
        bias.shape, bias.type, bias.name = original.shape, original.type, original.name
        subgraph.tensors.append(bias)
        op.inputs[bias_input] = len(subgraph.tensors) - 1
    bias.buffer = _new_buffer(model, np.round(old / new_scales).astype(np.int32))
    bias.quantization = schema_fb.QuantizationParametersT()
    bias.quantization.scale = [float(s) for s in new_scales]
    bias.quantization.zeroPoint = [0] * len(new_scales)
