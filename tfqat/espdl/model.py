"""An ESP-DL model as plain data: the nodes, tensors and value infos an `.espdl` file holds.

ESP-DL's format (Espressif's `espdl.fbs`) is ONNX's graph in a flatbuffer, with an exponent on every
tensor: a value is its int8 (or int32) integer times 2**exponent. Activations are NHWC. The objects
here say what the file means; `tfqat.espdl.flatbuffer` writes them, `tfqat.espdl.convert` makes them
from a shift-only int8 TFLite model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

# TensorDataType of the schema.
FLOAT, INT8, INT16, INT32, INT64 = 1, 3, 5, 6, 7
DATA_TYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.int8): INT8, np.dtype(np.int16): INT16,
              np.dtype(np.int32): INT32, np.dtype(np.int64): INT64}

Attribute = Union[int, float, str, tuple]


@dataclass(frozen=True)
class Tensor:
    """A constant (an initializer, a lookup table) or a test value: `values` in the storage order the
    runtime reads (a conv filter already in its blocked layout), with the logical `dims`."""

    name: str
    dims: tuple[int, ...]
    values: np.ndarray = field(repr=False)
    exponents: tuple[int, ...]
    doc_string: str = ""

    @property
    def data_type(self) -> int:
        return DATA_TYPES[self.values.dtype]


@dataclass(frozen=True)
class ValueInfo:
    """A variable of the graph: its NHWC shape, element type and exponent."""

    name: str
    shape: tuple[int, ...]
    exponents: tuple[int, ...]
    data_type: int = INT8


@dataclass(frozen=True)
class Node:
    """One op; attributes: int -> INT, float -> FLOAT, str -> STRING, a tuple of ints -> INTS (of floats ->
    FLOATS). Written sorted by name, as Espressif's exporter writes them."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict = field(default_factory=dict)


@dataclass
class Model:
    """A whole graph, in topological order, with the values a board checks itself against (`Model::test()`)."""

    name: str
    nodes: list[Node]
    initializers: list[Tensor]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    value_info: list[ValueInfo]
    test_inputs: list[Tensor] = field(default_factory=list)
    test_outputs: list[Tensor] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    doc_string: str = ""
