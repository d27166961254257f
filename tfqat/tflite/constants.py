"""Constants the converter merged, quantized again at the power-of-two scale they trained with.

The converter unites equal constants (MobileNetV3 adds the same 3.0 in every hard-sigmoid), and a
constant with more than one user loses its FakeQuant's range: it is quantized by its own min/max
instead (3.0 at scale 3/255, zero point -128), not at a power of two. The value it holds is the
FakeQuant's output, which lies on the power-of-two grid of the Keras model, so quantizing it again
with the weights' rule (the smallest 2**k with max|c| <= 127 * 2**k, zero point 0) gives back the
int8 constant every one of its users had in training.
"""

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from tfqat.quantization import pow2

_ELEMENTWISE = {schema_fb.BuiltinOperator.ADD, schema_fb.BuiltinOperator.SUB, schema_fb.BuiltinOperator.MUL}


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
    """TFLite bytes with every int8 constant operand of ADD/SUB/MUL that is not at a power-of-two scale
    quantized again at one (see the module's docstring), and how many constants were changed."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    changed = 0
    for subgraph in model.subgraphs:
        operands = {i for op in subgraph.operators if _opcode(model, op) in _ELEMENTWISE for i in op.inputs}
        for index in sorted(operands):
            tensor = subgraph.tensors[index]
            data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            q = tensor.quantization
            if data is None or len(data) == 0 or tensor.type != schema_fb.TensorType.INT8 or q is None:
                continue
            if q.scale is None or len(q.scale) != 1:
                continue
            scale, zero_point = float(q.scale[0]), int(q.zeroPoint[0])
            if zero_point == 0 and pow2.is_power_of_two(scale):
                continue  # already a power of two
            values = (np.asarray(data, np.uint8).view(np.int8).astype(np.float64) - zero_point) * scale
            found = pow2_steps(values, scale)
            if found is None:
                continue  # not on a power-of-two grid: left for the verifier to name
            steps, exponent = found
            # A new buffer: the converter shares one between equal int8 data (3.0 and 1/6 both stored as 127).
            buffer = schema_fb.BufferT()
            buffer.data = steps.view(np.uint8)
            model.buffers.append(buffer)
            tensor.buffer = len(model.buffers) - 1
            q.scale, q.zeroPoint = [2.0**exponent], [0]
            q.min, q.max = None, None
            changed += 1
    if not changed:
        return tflite_bytes, 0
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), changed
