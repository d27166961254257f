"""Espressif's own tools on a tfqat `.espdl`: esp-ppq writes the file for the same float graph with tfqat's
exponents imposed, runs it in the chip's mode, and its flatbuffer readers (generated from Espressif's
schema, shipped in esp-ppq) decode both files.

The float graph is the ONNX (NCHW) graph of the tfqat ESP-DL model: each filter taken back out of the
chip's blocked layout (an inverse written here, so a layout mistake shows as different bytes), every
value an exact int8 or int32 integer times 2**exponent, so esp-ppq, told the same exponents, quantizes it
to the same integers. Needs esp-ppq, torch (CPU) and onnx: `pytest.importorskip` them first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import struct
import sys
from pathlib import Path

import numpy as np

from tfqat.espdl.model import Model

_ONNX_SHAPE = {4: (0, 3, 1, 2)}  # NHWC -> NCHW


def unblocked_filter(values: np.ndarray, dims, depthwise: bool) -> np.ndarray:
    """[N, H, W, C] filters from the chip's storage order (16 output channels innermost, the rest after)."""
    if depthwise:
        h, w, n, c = dims
    else:
        h, w, c, n = dims
    aligned = n // 16 * 16
    count = n * h * w * c
    head = values[: aligned * h * w * c].reshape(n // 16, h, w, c, 16).transpose(0, 4, 1, 2, 3).reshape(aligned, h, w, c)
    tail = values[aligned * h * w * c: count]
    tail = tail.reshape(h, w, n - aligned).transpose(2, 0, 1)[..., None] if depthwise else tail.reshape(n - aligned, h, w, c)
    return np.concatenate([head, tail])


def _scaled(values, exponents, axis=0) -> np.ndarray:
    e = np.asarray(exponents, np.float64)
    if e.size > 1:
        shape = [1] * values.ndim
        shape[axis] = -1
        e = e.reshape(shape)
    return (values.astype(np.float64) * np.exp2(e)).astype(np.float32)


def float_onnx(model: Model):
    """The float ONNX graph (opset 13, NCHW) whose quantization to `model`'s exponents is `model`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    consts = {t.name: t for t in model.initializers}
    initializers, nodes = {}, []
    alias = {}  # a RequantizeLinear's output -> its input: esp-ppq inserts its own where exponents differ

    def constant(name, array):
        initializers[name] = numpy_helper.from_array(np.asarray(array, np.float32), name)
        return name

    for node in model.nodes:
        a = dict(node.attributes)
        a.pop("quant_type", None)
        a.pop("lut", None)  # esp-ppq makes the tables itself
        out = node.outputs[0]
        if node.op_type == "RequantizeLinear":
            alias[out] = alias.get(node.inputs[0], node.inputs[0])
            continue
        node = dataclasses.replace(node, inputs=tuple(alias.get(i, i) for i in node.inputs))
        if node.op_type in ("Conv", "Gemm"):
            w = consts[node.inputs[1]]
            depthwise = node.op_type == "Conv" and a["group"] > 1
            filters = unblocked_filter(w.values, w.dims, depthwise)  # N, H, W, C
            inputs = [node.inputs[0], constant(w.name, _scaled(filters, w.exponents))]
            if len(node.inputs) > 2:
                b = consts[node.inputs[2]]
                inputs.append(constant(b.name, _scaled(b.values, b.exponents)))
            relu = a.pop("activation") == "Relu"
            raw = f"{out}:linear" if relu else out
            if node.op_type == "Conv":
                initializers[w.name] = numpy_helper.from_array(onnx_filter(initializers[w.name]), w.name)
                nodes.append(helper.make_node("Conv", inputs, [raw], name=node.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in a.items()}))
            else:
                initializers[w.name] = numpy_helper.from_array(
                    numpy_helper.to_array(initializers[w.name]).reshape(filters.shape[0], -1), w.name)
                nodes.append(helper.make_node("Gemm", inputs, [raw], name=node.name, alpha=1.0, beta=1.0, transB=1))
            if relu:
                nodes.append(helper.make_node("Relu", [raw], [out], name=f"{node.name}:relu"))
        elif node.op_type == "Clip":
            low, high = (consts[n] for n in node.inputs[1:])
            inputs = [node.inputs[0], constant(low.name, _scaled(low.values, low.exponents)[0]),
                      constant(high.name, _scaled(high.values, high.exponents)[0])]
            initializers[low.name] = numpy_helper.from_array(np.float32(_scaled(low.values, low.exponents)[0]), low.name)
            initializers[high.name] = numpy_helper.from_array(np.float32(_scaled(high.values, high.exponents)[0]), high.name)
            nodes.append(helper.make_node("Clip", inputs, [out], name=node.name))
        elif node.op_type in ("Add", "Mul"):  # a constant operand: its number, at its exponent
            inputs = [constant(i, _scaled(consts[i].values, consts[i].exponents)[0]) if i in consts else i
                      for i in node.inputs]
            nodes.append(helper.make_node(node.op_type, inputs, [out], name=node.name))
        elif node.op_type in ("GlobalAveragePool", "Flatten", "Relu", "Sigmoid"):
            nodes.append(helper.make_node(node.op_type, list(node.inputs), [out], name=node.name, **a))
        elif node.op_type in ("MaxPool", "AveragePool"):
            nodes.append(helper.make_node(node.op_type, list(node.inputs), [out], name=node.name,
                                          **{k: list(v) for k, v in a.items()}))
        elif node.op_type == "Concat":
            axis = {0: 0, 3: 1, 1: 2, 2: 3}[a["axis"]]  # NHWC -> NCHW
            nodes.append(helper.make_node("Concat", list(node.inputs), [out], name=node.name, axis=axis))
        elif node.op_type == "Reshape":
            shape = consts[node.inputs[1]]
            if len(shape.values) != 2:
                raise NotImplementedError("a reshape to more than [batch, features] in this test")
            initializers[shape.name] = numpy_helper.from_array(shape.values.astype(np.int64), shape.name)
            nodes.append(helper.make_node("Reshape", list(node.inputs), [out], name=node.name))
        else:
            raise NotImplementedError(f"no ONNX form for {node.op_type} in this test")

    def info(v):
        shape = [v.shape[i] for i in _ONNX_SHAPE[len(v.shape)]] if len(v.shape) == 4 else list(v.shape)
        return helper.make_tensor_value_info(v.name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(nodes, model.name, [info(v) for v in model.inputs], [info(v) for v in model.outputs],
                              initializer=list(initializers.values()))
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    return onnx_model


def onnx_filter(proto) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(proto).transpose(0, 3, 1, 2).copy()  # N, H, W, C -> N, C, H, W


def nchw(values: np.ndarray, exponent: int):
    """A test input (int8 NHWC) as esp-ppq's float NCHW tensor."""
    import torch

    return torch.from_numpy(_scaled(values, exponent).transpose(0, 3, 1, 2).copy())


class PPQRun:
    """esp-ppq's quantized graph of `model`'s float ONNX for `chip`, with `model`'s exponents imposed."""

    def __init__(self, model: Model, chip: str, folder: Path):
        import esp_ppq.api.interface as esp_ppq_interface
        import onnx
        import torch
        from esp_ppq.api import espdl_quantize_onnx

        torch.set_num_threads(1)
        # Sigmoid then Mul by its input stays two nodes, as tfqat's model computes it (two roundings)
        esp_ppq_interface.FORMATTER_FUSE_SWISH = False
        self.model, self.chip, self.folder = model, chip, Path(folder)
        path = self.folder / "float.onnx"  # esp-ppq replaces it with its simplified graph
        onnx.save(float_onnx(model), path)
        [info] = model.inputs
        shape = [info.shape[i] for i in _ONNX_SHAPE[4]]
        generator = torch.Generator().manual_seed(0)
        calibration = [torch.randn(shape, generator=generator) for _ in range(2)]
        with contextlib.redirect_stdout(io.StringIO()):
            self.graph = espdl_quantize_onnx(
                onnx_import_file=str(path), espdl_export_file=str(self.folder / "unused.espdl"),
                calib_dataloader=calibration, calib_steps=2, input_shape=shape, inputs=None, target=chip,
                num_of_bits=8, device="cpu", error_report=False, skip_export=True, verbose=0,
            )
        self.exponents = self._impose()

    def _known_exponents(self) -> dict:
        known = {v.name: list(v.exponents) for v in self.model.value_info}
        known.update({t.name: list(t.exponents) for t in self.model.initializers})
        for node in self.model.nodes:
            if node.attributes.get("activation") == "Relu":
                known[f"{node.outputs[0]}:linear"] = known[node.outputs[0]]
        return known

    def _impose(self) -> dict:
        """Every root quantization config of esp-ppq's graph set to tfqat's power of two; biases follow."""
        import torch
        from esp_ppq.core import QuantizationProperty, QuantizationStates
        from esp_ppq.IR.quantize import QuantableOperation

        known = self._known_exponents()
        by_position = {(node.name, i): known[name] for node in self.model.nodes
                       for i, name in enumerate(node.inputs) if name in known}
        rows = []
        for op in self.graph.topological_sort():
            if isinstance(op, QuantableOperation):
                rows += [(op, i, cfg, var) for i, (cfg, var) in enumerate(op.config_with_variable)]
        var_of = {id(cfg): var.name for _, _, cfg, var in rows}
        for op, _, cfg, var in rows:  # a producer esp-ppq aligned to its consumer's exponent, tfqat did not:
            root = var_of.get(id(cfg.dominated_by))  # its own root, so that esp-ppq requantizes between them
            if (cfg.dominated_by is not cfg and var.source_op is op and var.name in known and root in known
                    and known[var.name] != known[root]):
                cfg._dominator = cfg
                cfg.state = QuantizationStates.ACTIVATED
        groups = {}
        for _, _, cfg, var in rows:
            groups.setdefault(id(cfg.dominated_by), set()).add(var.name)
        imposed = {}
        biases = []
        for op, i, cfg, var in rows:
            if cfg.state == QuantizationStates.FP32 or cfg.dominated_by is not cfg:
                continue
            if var.is_parameter and op.type in ("Conv", "Gemm") and i == 2:
                biases.append((op, cfg))
                continue
            names = [var.name] + sorted(groups[id(cfg)] - {var.name})
            found = next((known[n] for n in names if n in known), None)
            if found is None and var.is_parameter:  # a constant esp-ppq renamed: the same input of our node
                found = by_position.get((op.name, i))
            if found is None:
                raise AssertionError(f"no tfqat exponent for esp-ppq's {op.name} {var.name} (group {names})")
            per_channel = cfg.policy.has_property(QuantizationProperty.PER_CHANNEL)
            exponents = np.asarray(found, np.float64)
            if per_channel and exponents.size == 1:
                exponents = np.full(var.value.shape[cfg.channel_axis], exponents[0])
            cfg.scale = torch.tensor(np.exp2(exponents) if per_channel else np.exp2(exponents[0]), dtype=torch.float32)
            cfg.offset = torch.zeros_like(cfg.scale)
            for name in groups[id(cfg)]:
                imposed[name] = exponents.astype(int).tolist()
        for op, cfg in biases:
            x_cfg, w_cfg = op.config.input_quantization_config[:2]
            cfg.scale = (x_cfg.scale * w_cfg.scale).to(torch.float32)
            cfg.offset = torch.zeros_like(cfg.scale)
            cfg.state = QuantizationStates.PASSIVE
        return imposed

    def export(self, test_input: np.ndarray) -> Path:
        import esp_ppq.lib as PFL
        from esp_ppq.api.espdl_interface import generate_test_value, get_target_platform

        path = self.folder / "esp_ppq.espdl"
        x = nchw(test_input, self.model.inputs[0].exponents[0])
        values = generate_test_value(self.graph, "cpu", [x])
        with contextlib.redirect_stdout(io.StringIO()):
            PFL.Exporter(platform=get_target_platform(self.chip, 8)).export(
                file_path=str(path), graph=self.graph, values_for_test=values, export_config=False)
        return path

    def run(self, inputs: np.ndarray) -> list[np.ndarray]:
        """esp-ppq's executor in the chip's mode: each graph output's integers for each int8 NHWC input."""
        from esp_ppq.executor import TorchExecutor

        executor = TorchExecutor(graph=self.graph, device="cpu")
        e_in = self.model.inputs[0].exponents[0]
        results = []
        for x in inputs:
            outputs = executor.forward(inputs=nchw(x[None], e_in), output_names=[v.name for v in self.model.outputs])
            steps = [o.detach().double().numpy() * np.exp2(-v.exponents[0]) for o, v in zip(outputs, self.model.outputs)]
            for s in steps:
                assert np.array_equal(s, np.round(s)), "esp-ppq's output is off its power-of-two grid"
            results.append([np.round(s).astype(np.int64) for s in steps])
        return results


def _readers():
    spec = importlib.util.find_spec("esp_ppq")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "parser", "espdl")
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the generated readers import as the top-level package FlatBuffers
    from FlatBuffers.Dl import Model as ModelReader
    from FlatBuffers.Dl import TensorTypeAndShape

    return ModelReader, TensorTypeAndShape


_NUMPY = {1: np.float32, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64}


def decode(path) -> dict:
    """An .espdl file read with the readers esp-ppq generated from Espressif's schema."""
    ModelReader, TensorTypeAndShape = _readers()
    data = Path(path).read_bytes()
    assert data[:4] == b"EDL2", "no EDL2 header"
    mode, size = struct.unpack_from("<II", data, 4)
    assert mode == 0 and len(data) == 16 + size, f"header mode {mode}, size {size}, file {len(data)} bytes"
    root = ModelReader.Model.GetRootAs(data[16:], 0)
    graph = root.Graph()

    def text(b):
        return None if b is None else b.decode()

    def tensor(t):
        rows = t.RawDataLength()
        offset = t.RawData(0)._tab.Pos if rows else None  # from the flatbuffer's start
        payload = bytes(t._tab.Bytes[offset: offset + 16 * rows]) if rows else b""
        dims = tuple(int(t.Dims(i)) for i in range(t.DimsLength()))
        count = int(np.prod(dims)) if dims else 1
        dtype = _NUMPY[t.DataType()]
        values = np.frombuffer(payload, dtype)[:count]
        return dict(name=text(t.Name()), dims=dims, data_type=t.DataType(), values=values, doc=text(t.DocString()),
                    exponents=[int(t.Exponents(i)) for i in range(t.ExponentsLength())], offset=offset)

    def value_info(v):
        type_info = v.ValueInfoType()
        tts = TensorTypeAndShape.TensorTypeAndShape()
        tts.Init(type_info.Value().Bytes, type_info.Value().Pos)
        shape = tts.Shape()
        dims = tuple(int(shape.Dim(i).Value().DimValue()) for i in range(shape.DimLength()))
        return dict(name=text(v.Name()), shape=dims, data_type=tts.ElemType(),
                    exponents=[int(v.Exponents(i)) for i in range(v.ExponentsLength())])

    def attribute(a):
        kind = a.AttrType()
        value = {1: lambda: float(a.F().F()), 2: lambda: int(a.I().I()),
                 3: lambda: bytes(a.S(i) for i in range(a.SLength())).decode(),
                 6: lambda: tuple(float(a.Floats(i)) for i in range(a.FloatsLength())),
                 7: lambda: tuple(int(a.Ints(i)) for i in range(a.IntsLength()))}[kind]()
        return text(a.Name()), value

    def node(n):
        return dict(name=text(n.Name()), op_type=text(n.OpType()),
                    inputs=[text(n.Input(i)) for i in range(n.InputLength())],
                    outputs=[text(n.Output(i)) for i in range(n.OutputLength())],
                    attributes=dict(attribute(n.Attribute(i)) for i in range(n.AttributeLength())))

    return dict(
        ir_version=root.IrVersion(),
        metadata={text(root.MetadataProps(i).Key()): text(root.MetadataProps(i).Value()) for i in range(root.MetadataPropsLength())},
        nodes=[node(graph.Node(i)) for i in range(graph.NodeLength())],
        initializers={t["name"]: t for t in (tensor(graph.Initializer(i)) for i in range(graph.InitializerLength()))},
        inputs=[value_info(graph.Input(i)) for i in range(graph.InputLength())],
        outputs=[value_info(graph.Output(i)) for i in range(graph.OutputLength())],
        value_info={v["name"]: v for v in (value_info(graph.ValueInfo(i)) for i in range(graph.ValueInfoLength()))},
        test_inputs={t["name"]: t for t in (tensor(graph.TestInputsValue(i)) for i in range(graph.TestInputsValueLength()))},
        test_outputs={t["name"]: t for t in (tensor(graph.TestOutputsValue(i)) for i in range(graph.TestOutputsValueLength()))},
    )


def _resolve_identities(decoded: dict) -> dict:
    """esp-ppq puts a Transpose to NCHW before a Flatten; over a 1x1 image it moves no data: drop it, and read
    its output as its input."""
    alias, nodes = {}, []
    for node in decoded["nodes"]:
        source = node["inputs"][0] if node["inputs"] else None
        shape = decoded["value_info"].get(source, {}).get("shape", ())
        if node["op_type"] == "Transpose" and len(shape) == 4 and shape[1] == shape[2] == 1:
            alias[node["outputs"][0]] = alias.get(source, source)
            continue
        nodes.append({**node, "inputs": [alias.get(i, i) for i in node["inputs"]]})
    return {**decoded, "nodes": nodes, "value_info": {k: v for k, v in decoded["value_info"].items() if k not in alias}}


def _align_requantizations(ours: dict, theirs: dict) -> dict:
    """esp-ppq names the RequantizeLinear it inserts (and its output) its own way: give each the name of
    tfqat's RequantizeLinear output in the same place (the same input of the node writing the same variable)."""
    ours_by_output = {n["outputs"][0]: n for n in ours["nodes"]}
    requantized = {n["outputs"][0] for n in theirs["nodes"] if n["op_type"] == "RequantizeLinear"}
    rename = {}
    for node in theirs["nodes"]:
        mine = ours_by_output.get(node["outputs"][0])
        for position, name in enumerate(node["inputs"]):
            if name in requantized and mine is not None and position < len(mine["inputs"]):
                rename[name] = mine["inputs"][position]
    if not rename:
        return theirs

    def renamed(names):
        return [rename.get(n, n) for n in names]

    nodes = [{**n, "inputs": renamed(n["inputs"]), "outputs": renamed(n["outputs"])} for n in theirs["nodes"]]
    value_info = {rename.get(k, k): {**v, "name": rename.get(k, k)} for k, v in theirs["value_info"].items()}
    return {**theirs, "nodes": nodes, "value_info": value_info}


def _same_exponents(a, b) -> bool:
    """Equal exponents, a per-tensor one equal to a per-channel list of that one value."""
    a, b = np.asarray(a), np.asarray(b)
    return a.size > 0 and b.size > 0 and np.array_equal(np.broadcast_to(a, max(a.shape, b.shape)), np.broadcast_to(b, max(a.shape, b.shape)))


def _tensor_differences(where: str, ours: dict, theirs: dict) -> list[str]:
    found = []
    for key in ("dims", "data_type"):
        if ours[key] != theirs[key]:
            found.append(f"{where}: {key} {ours[key]} != esp-ppq's {theirs[key]}")
    if not _same_exponents(ours["exponents"], theirs["exponents"]):
        found.append(f"{where}: exponents {ours['exponents']} != esp-ppq's {theirs['exponents']}")
    if ours["values"].shape != theirs["values"].shape or not np.array_equal(ours["values"], theirs["values"]):
        differ = np.count_nonzero(ours["values"] != theirs["values"]) if ours["values"].shape == theirs["values"].shape else "all"
        found.append(f"{where}: values differ ({differ} of {ours['values'].size})")
    if "layout" in (ours["doc"] or "") + (theirs["doc"] or "") and "UNK" not in (theirs["doc"] or "") and ours["doc"] != theirs["doc"]:
        found.append(f"{where}: layout {ours['doc']!r} != esp-ppq's {theirs['doc']!r}")
    for side, t in (("ours", ours), ("esp-ppq's", theirs)):
        if t["offset"] is not None and t["offset"] % 16:
            found.append(f"{where}: {side} raw data at offset {t['offset']}, not 16-byte aligned")
    return found


def differences(ours: dict, theirs: dict) -> list[str]:
    """What differs in meaning between two decoded .espdl files of one graph: node types, attributes and
    inputs matched through the graph (by the variables they write), every initializer's shape, type,
    exponents and bytes, every variable's shape and exponent, the graph's inputs, outputs and test values."""
    theirs = _align_requantizations(ours, _resolve_identities(theirs))
    found = []
    by_output = {n["outputs"][0]: n for n in theirs["nodes"]}
    variables = set(ours["value_info"]) | {v["name"] for v in ours["inputs"]}
    for node in ours["nodes"]:
        other = by_output.pop(node["outputs"][0], None)
        where = f"node {node['name']} ({node['op_type']})"
        if other is None:
            found.append(f"{where}: esp-ppq has no node writing {node['outputs'][0]}")
            continue
        if (node["op_type"], node["outputs"]) != (other["op_type"], other["outputs"]):
            found.append(f"{where}: esp-ppq has {other['op_type']} writing {other['outputs']}")
        mine = {k: v for k, v in node["attributes"].items() if k != "lut"}
        if mine != {k: v for k, v in other["attributes"].items() if k != "lut"}:
            found.append(f"{where}: attributes {mine} != esp-ppq's {other['attributes']}")
        if ("lut" in node["attributes"]) != ("lut" in other["attributes"]):
            found.append(f"{where}: lookup table {node['attributes'].get('lut')} != esp-ppq's {other['attributes'].get('lut')}")
        elif "lut" in node["attributes"]:
            found += _tensor_differences(f"{where} table", ours["initializers"][node["attributes"]["lut"]],
                                         theirs["initializers"][other["attributes"]["lut"]])
        if len(node["inputs"]) != len(other["inputs"]):
            found.append(f"{where}: inputs {node['inputs']} != esp-ppq's {other['inputs']}")
            continue
        for position, (a, b) in enumerate(zip(node["inputs"], other["inputs"])):
            if a in variables or b not in theirs["initializers"]:
                if a != b:
                    found.append(f"{where}: input {position} is {a}, esp-ppq's {b}")
            else:
                found += _tensor_differences(f"{where} input {position} ({a})", ours["initializers"][a], theirs["initializers"][b])
    found += [f"esp-ppq's extra node {n['name']} ({n['op_type']})" for n in by_output.values()]
    for name, info in ours["value_info"].items():
        other = theirs["value_info"].get(name)
        if other is None:
            found.append(f"variable {name}: not in esp-ppq's value_info")
        elif (info["shape"], info["data_type"]) != (other["shape"], other["data_type"]) or not _same_exponents(info["exponents"], other["exponents"]):
            found.append(f"variable {name}: {info} != esp-ppq's {other}")
    for key in ("inputs", "outputs"):
        if ours[key] != theirs[key]:
            found.append(f"graph {key}: {ours[key]} != esp-ppq's {theirs[key]}")
    for key in ("test_inputs", "test_outputs"):
        if set(ours[key]) != set(theirs[key]):
            found.append(f"{key}: {sorted(ours[key])} != esp-ppq's {sorted(theirs[key])}")
        for name in set(ours[key]) & set(theirs[key]):
            found += _tensor_differences(f"{key} {name}", ours[key][name], theirs[key][name])
    return found
