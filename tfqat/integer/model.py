"""Reads a .tflite flatbuffer into plain tensors and ops, with the schema's generated Python only.

`ai_edge_litert.schema_py_generated` needs the `flatbuffers` package and nothing native: importing it
loads neither LiteRT's interpreter nor TensorFlow, so the executor runs where neither is installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

# A TFLite flatbuffer carries this file identifier at bytes 4..8.
_IDENTIFIER = b"TFL3"
_OPERATOR_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
_DTYPES = {
    schema.TensorType.INT8: np.int8,
    schema.TensorType.UINT8: np.uint8,
    schema.TensorType.INT16: np.int16,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.INT64: np.int64,
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.BOOL: np.bool_,
}


class ExecutorError(ValueError):
    """A model the integer executor cannot run, explained in one sentence."""


@dataclass(frozen=True)
class Tensor:
    """One tensor: dtype, shape, quantization (empty scales: not quantized) and constant data, if any."""

    index: int
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    quantized_dimension: int
    data: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        # Converter names join every fused TF op with ';'; the first names the layer.
        return f"tensor {self.index} '{self.name.split(';')[0]}'"

    @property
    def zero_point(self) -> int:
        return self.zero_points[0] if self.zero_points else 0


@dataclass(frozen=True)
class Operator:
    """One op: its builtin name, input and output tensor indices (-1: omitted) and options."""

    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict


@dataclass(frozen=True)
class Graph:
    """The single subgraph of a model."""

    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def op_label(self, op: Operator) -> str:
        """How messages and tables name an op: its index, builtin name and the layer of its first output."""
        return f"op {op.index} {op.name} ('{self.tensors[op.outputs[0]].name.split(';')[0]}')"


def model_bytes(model: str | os.PathLike | bytes) -> tuple[bytes, str]:
    """The flatbuffer bytes of a path or buffer and how messages name it, or ExecutorError."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        content, label = bytes(model), "the model buffer"
    else:
        path = Path(model)
        if not path.is_file():
            raise ExecutorError(f"TFLite model not found: {path}" if not path.exists() else f"{path} is not a file")
        content, label = path.read_bytes(), str(path)
    if content[4:8] != _IDENTIFIER:
        raise ExecutorError(f"{label} is not a TFLite flatbuffer (no 'TFL3' file identifier)")
    return content, label


def read_graph(model: str | os.PathLike | bytes, label: str | None = None) -> Graph:
    """Parses a .tflite file or buffer; raises ExecutorError for anything that is not a one-graph model."""
    content, default_label = model_bytes(model)
    label = label or default_label
    try:
        root = schema.ModelT.InitFromPackedBuf(content, 0)
    except Exception as error:  # noqa: BLE001  (a truncated or corrupt flatbuffer fails anywhere inside)
        raise ExecutorError(f"{label} is a corrupt or truncated TFLite flatbuffer") from None
    if not root.subgraphs or len(root.subgraphs) != 1:
        count = len(root.subgraphs or ())
        raise ExecutorError(f"{label} has {count} subgraphs; the executor runs single-graph models")
    graph = root.subgraphs[0]
    tensors = tuple(_tensor(i, t, root, content) for i, t in enumerate(graph.tensors or ()))
    operators = tuple(_operator(i, op, root) for i, op in enumerate(graph.operators or ()))
    return Graph(tensors, operators, _indices(graph.inputs), _indices(graph.outputs))


def _indices(values) -> tuple[int, ...]:
    return tuple(int(v) for v in (values if values is not None else ()))


def _tensor(index: int, tensor, root, content: bytes) -> Tensor:
    if tensor.type not in _DTYPES:
        raise ExecutorError(f"tensor {index} has TFLite type {tensor.type}, which the executor does not handle")
    dtype = np.dtype(_DTYPES[tensor.type])
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
    q = tensor.quantization
    scales = tuple(float(s) for s in q.scale) if q is not None and q.scale is not None else ()
    zero_points = tuple(int(z) for z in q.zeroPoint) if q is not None and q.zeroPoint is not None else ()
    return Tensor(
        index=index,
        name=tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name or ""),
        dtype=dtype,
        shape=shape,
        scales=scales,
        zero_points=zero_points,
        quantized_dimension=int(q.quantizedDimension) if q is not None else 0,
        data=_buffer(root.buffers[tensor.buffer] if tensor.buffer else None, content, dtype, shape),
    )


def _buffer(buffer, content: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray | None:
    if buffer is None:
        return None
    if buffer.offset > 1:  # large models keep buffers after the flatbuffer
        raw = np.frombuffer(content, np.uint8, count=buffer.size, offset=buffer.offset)
    elif buffer.data is not None and len(buffer.data):
        raw = np.asarray(buffer.data, np.uint8)
    else:
        return None
    return raw.view(dtype).reshape(shape)


def _operator(index: int, op, root) -> Operator:
    code = root.operatorCodes[op.opcodeIndex]
    number = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    name = _OPERATOR_NAMES.get(number, f"builtin {number}")
    if number == schema.BuiltinOperator.CUSTOM:
        name = f"CUSTOM '{code.customCode.decode() if code.customCode else ''}'"
    options = dict(vars(op.builtinOptions)) if op.builtinOptions is not None else {}
    return Operator(index, name, _indices(op.inputs), _indices(op.outputs), options)
