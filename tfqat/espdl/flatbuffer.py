"""Writes a `tfqat.espdl.model.Model` as an `.espdl` file: a 16-byte "EDL2" header, then the flatbuffer.

The tables and their field slots follow Espressif's schema (`esp-dl/fbs_loader/espdl.fbs`, namespace
espdl, root table Model); this module builds them with the `flatbuffers` runtime alone, so tfqat carries
no generated code. Every tensor's raw data is a vector of 16-byte aligned rows (the schema's
AlignedBytes): the runtime reads weights in place from flash only when they are 16-byte aligned, which
the 16-byte header keeps true in the file.
"""

from __future__ import annotations

import struct

import flatbuffers
import numpy as np

from tfqat.espdl.model import Model, Node, Tensor, ValueInfo

MAGIC = b"EDL2"
PLAIN = 0  # the header's mode: 0 plain, 1 AES-encrypted (not written by tfqat)
ALIGNMENT = 16

# Field slots of the schema's tables (a union takes two: its type, then its value).
_MODEL = dict(ir_version=0, opset_import=1, producer_name=2, producer_version=3, domain=4, model_version=5,
              doc_string=6, graph=7, metadata_props=8, functions=9)
_GRAPH = dict(node=0, name=1, initializer=2, doc_string=3, input=4, output=5, value_info=6,
              quantization_annotation=7, test_inputs_value=8, test_outputs_value=9)
_NODE = dict(input=0, output=1, name=2, op_type=3, domain=4, attribute=5, doc_string=6)
_ATTRIBUTE = dict(name=0, ref_attr_name=1, doc_string=2, attr_type=3, f=4, i=5, s=6, t=7, g=8, tp=9,
                  floats=10, ints=11, strings=12, tensors=13, graphs=14, type_protos=15)
_TENSOR = dict(dims=0, data_type=1, float_data=2, int32_data=3, string_data=4, int64_data=5, name=6,
               doc_string=7, raw_data=8, external_data=9, data_location=10, double_data=11, uint64_data=12,
               exponents=13)
_VALUE_INFO = dict(name=0, value_info_type=1, doc_string=2, exponents=3)
_TYPE_INFO = dict(value_type=0, value=1, denotation=2)
_TENSOR_TYPE = dict(elem_type=0, shape=1)
_DIMENSION = dict(value=0, denotation=1)
_DIMENSION_VALUE = dict(dim_type=0, dim_value=1, dim_param=2)
_ENTRY = dict(key=0, value=1)
# AttributeType values; the union case of a tensor type; DimensionValueType.VALUE.
_FLOAT, _INT, _STRING, _FLOATS, _INTS = 1, 2, 3, 6, 7
_TENSOR_TYPE_CASE = 1
_DIM_VALUE = 1

IR_VERSION = 7  # what Espressif's exporter writes (ONNX's IR version 7)


def espdl_bytes(model: Model, *, producer: str = "tfqat", version: str = "") -> bytes:
    """The whole file: header and flatbuffer."""
    body = flatbuffer(model, producer=producer, version=version)
    return MAGIC + struct.pack("<III", PLAIN, len(body), 0) + body


def flatbuffer(model: Model, *, producer: str = "tfqat", version: str = "") -> bytes:
    b = flatbuffers.Builder(1 << 20)
    graph = _graph(b, model)
    metadata = _vector(b, [_entry(b, k, v) for k, v in model.metadata.items()])
    names = [b.CreateString(s) for s in (producer, version, model.doc_string)]
    opsets = _vector(b, [])  # present and empty, as Espressif's exporter writes it
    b.StartObject(len(_MODEL))
    b.PrependInt32Slot(_MODEL["ir_version"], IR_VERSION, 0)
    b.PrependUOffsetTRelativeSlot(_MODEL["opset_import"], opsets, 0)
    b.PrependUOffsetTRelativeSlot(_MODEL["producer_name"], names[0], 0)
    b.PrependUOffsetTRelativeSlot(_MODEL["producer_version"], names[1], 0)
    b.PrependUOffsetTRelativeSlot(_MODEL["doc_string"], names[2], 0)
    b.PrependUOffsetTRelativeSlot(_MODEL["graph"], graph, 0)
    b.PrependUOffsetTRelativeSlot(_MODEL["metadata_props"], metadata, 0)
    b.Finish(b.EndObject())
    data = bytes(b.Output())
    return data + bytes(-len(data) % ALIGNMENT)  # a whole number of 16-byte rows, as Espressif's files are


def _graph(b, model: Model) -> int:
    fields = {
        "node": _vector(b, [_node(b, n) for n in model.nodes]),
        "initializer": _vector(b, [_tensor(b, t) for t in model.initializers]),
        "input": _vector(b, [_value_info(b, v) for v in model.inputs]),
        "output": _vector(b, [_value_info(b, v) for v in model.outputs]),
        "value_info": _vector(b, [_value_info(b, v) for v in model.value_info]),
        "test_inputs_value": _vector(b, [_tensor(b, t) for t in model.test_inputs]),
        "test_outputs_value": _vector(b, [_tensor(b, t) for t in model.test_outputs]),
        "name": b.CreateString(model.name),
    }
    b.StartObject(len(_GRAPH))
    for key, offset in fields.items():
        b.PrependUOffsetTRelativeSlot(_GRAPH[key], offset, 0)
    return b.EndObject()


def _node(b, node: Node) -> int:
    fields = {
        "input": _vector(b, [b.CreateString(s) for s in node.inputs]),
        "output": _vector(b, [b.CreateString(s) for s in node.outputs]),
        "name": b.CreateString(node.name),
        "op_type": b.CreateString(node.op_type),
        "attribute": _vector(b, [_attribute(b, k, node.attributes[k]) for k in sorted(node.attributes)]),
    }
    b.StartObject(len(_NODE))
    for key, offset in fields.items():
        b.PrependUOffsetTRelativeSlot(_NODE[key], offset, 0)
    return b.EndObject()


def _attribute(b, name: str, value) -> int:
    name_offset = b.CreateString(name)
    payload = None
    if isinstance(value, bool) or not isinstance(value, (int, float, str, tuple, list)):
        raise TypeError(f"attribute {name}={value!r}: use an int, a float, a string or a tuple of numbers")
    if isinstance(value, str):
        kind, payload = _STRING, b.CreateByteVector(value.encode())
    elif isinstance(value, (tuple, list)):
        floats = any(isinstance(v, float) for v in value)
        kind = _FLOATS if floats else _INTS
        payload = b.CreateNumpyVector(np.asarray(value, np.float32 if floats else np.int64))
    else:
        kind = _FLOAT if isinstance(value, float) else _INT
    b.StartObject(len(_ATTRIBUTE))
    b.PrependUOffsetTRelativeSlot(_ATTRIBUTE["name"], name_offset, 0)
    b.PrependInt32Slot(_ATTRIBUTE["attr_type"], kind, 0)
    if kind == _FLOAT:
        b.Prep(4, 0)
        b.PrependFloat32(value)
        b.PrependStructSlot(_ATTRIBUTE["f"], b.Offset(), 0)
    elif kind == _INT:
        b.Prep(8, 0)
        b.PrependInt64(value)
        b.PrependStructSlot(_ATTRIBUTE["i"], b.Offset(), 0)
    else:
        slot = {_STRING: "s", _FLOATS: "floats", _INTS: "ints"}[kind]
        b.PrependUOffsetTRelativeSlot(_ATTRIBUTE[slot], payload, 0)
    return b.EndObject()


def _tensor(b, tensor: Tensor) -> int:
    fields = {
        "dims": b.CreateNumpyVector(np.asarray(tensor.dims, np.int64)),
        "name": b.CreateString(tensor.name),
        "doc_string": b.CreateString(tensor.doc_string) if tensor.doc_string else 0,
        "raw_data": _aligned_rows(b, np.ascontiguousarray(tensor.values, tensor.values.dtype.newbyteorder("<")).tobytes()),
        "exponents": b.CreateNumpyVector(np.asarray(tensor.exponents, np.int64)),
    }
    b.StartObject(len(_TENSOR))
    b.PrependInt32Slot(_TENSOR["data_type"], tensor.data_type, 0)
    for key, offset in fields.items():
        if offset:
            b.PrependUOffsetTRelativeSlot(_TENSOR[key], offset, 0)
    return b.EndObject()


def _aligned_rows(b, data: bytes) -> int:
    """A vector of 16-byte rows aligned to 16 bytes, the data zero-padded to whole rows."""
    data += bytes(-len(data) % ALIGNMENT)
    b.StartVector(ALIGNMENT, len(data) // ALIGNMENT, ALIGNMENT)
    b.head -= len(data)
    b.Bytes[b.head: b.head + len(data)] = data
    b.vectorNumElems = len(data) // ALIGNMENT
    return b.EndVector()


def _value_info(b, info: ValueInfo) -> int:
    name = b.CreateString(info.name)
    dims = []
    for size in info.shape:
        b.StartObject(len(_DIMENSION_VALUE))
        b.PrependInt8Slot(_DIMENSION_VALUE["dim_type"], _DIM_VALUE, 0)
        b.PrependInt64Slot(_DIMENSION_VALUE["dim_value"], int(size), 0)
        value = b.EndObject()
        b.StartObject(len(_DIMENSION))
        b.PrependUOffsetTRelativeSlot(_DIMENSION["value"], value, 0)
        dims.append(b.EndObject())
    dim_vector = _vector(b, dims)
    b.StartObject(1)  # TensorShape
    b.PrependUOffsetTRelativeSlot(0, dim_vector, 0)
    shape = b.EndObject()
    b.StartObject(len(_TENSOR_TYPE))
    b.PrependInt32Slot(_TENSOR_TYPE["elem_type"], info.data_type, 0)
    b.PrependUOffsetTRelativeSlot(_TENSOR_TYPE["shape"], shape, 0)
    tensor_type = b.EndObject()
    b.StartObject(len(_TYPE_INFO))
    b.PrependUint8Slot(_TYPE_INFO["value_type"], _TENSOR_TYPE_CASE, 0)
    b.PrependUOffsetTRelativeSlot(_TYPE_INFO["value"], tensor_type, 0)
    type_info = b.EndObject()
    exponents = b.CreateNumpyVector(np.asarray(info.exponents, np.int64))
    b.StartObject(len(_VALUE_INFO))
    b.PrependUOffsetTRelativeSlot(_VALUE_INFO["name"], name, 0)
    b.PrependUOffsetTRelativeSlot(_VALUE_INFO["value_info_type"], type_info, 0)
    b.PrependUOffsetTRelativeSlot(_VALUE_INFO["exponents"], exponents, 0)
    return b.EndObject()


def _entry(b, key: str, value: str) -> int:
    key_offset, value_offset = b.CreateString(key), b.CreateString(value)
    b.StartObject(len(_ENTRY))
    b.PrependUOffsetTRelativeSlot(_ENTRY["key"], key_offset, 0)
    b.PrependUOffsetTRelativeSlot(_ENTRY["value"], value_offset, 0)
    return b.EndObject()


def _vector(b, offsets: list[int]) -> int:
    """A vector of tables or strings (offsets made before it)."""
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()
