"""A shift-only int8 TFLite model as an ESP-DL graph (`tfqat.espdl.model.Model`), for one chip.

The TFLite file tfqat exports already has ESP-DL's number format: every scale is 2**exponent, zero points
are 0, biases sit on the accumulator's grid. What changes is the form: NHWC value infos with exponents,
filters in the chip's blocked layout, explicit pads (a zero PAD folded into the conv or pooling after
it), ReLU6 as a Clip with a lookup table (ESP-DL fuses only ReLU into a conv), a mean over height and
width as GlobalAveragePool then Flatten, a dense layer as Gemm. What ESP-DL cannot express is refused, naming the op and the reason: a zero point, a scale that is
not a power of two, per-channel weights on ESP32-S3, a bias wider than the chip keeps, an output grid
finer than its accumulator's, an Add whose inputs have other exponents than its output, an op ESP-DL lacks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tfqat.espdl import layout
from tfqat.espdl.model import Model, Node, Tensor, ValueInfo
from tfqat.integer.kernels import exponent as tflite_exponent
from tfqat.integer.named import SIGMOID_EXPONENT, espdl_sigmoid
from tfqat.integer.model import ExecutorError, Graph, Operator, Tensor as TFLiteTensor
from tfqat.targets import ESPDL_TARGETS as CHIPS, Target, target_named

_RELU, _RELU6 = 1, 3
_SAME = 0


class EspdlExportError(ValueError):
    """A model ESP-DL cannot run as tfqat trained it, explained in one sentence; nothing was written."""


@dataclass
class _Names:
    """Short unique names for the graph's variables and nodes (TFLite's join every fused TF op with ';')."""

    used: set

    def make(self, raw: str, derived: bool = False) -> str:
        """A TFLite tensor's name less the model's own name and tfqat's "quant_" prefixes, or a `derived` name
        as given; made unique with a suffix."""
        name = raw
        if not derived:
            parts = raw.split(";")[0].split("/")
            name = "/".join(parts[1:]) if len(parts) > 1 else parts[0]  # without the model's own name
            name = re.sub(r"(^|/)quant_", r"\1", name) or "tensor"
        unique, k = name, 1
        while unique in self.used:
            k += 1
            unique = f"{name}_{k}"
        self.used.add(unique)
        return unique


def chip_target(chip: str) -> Target:
    if chip not in CHIPS:
        raise ValueError(f"chip={chip!r} is not one of {list(CHIPS)}")
    return target_named(chip)


def to_espdl(graph: Graph, chip: str, name: str = "model") -> Model:
    """The ESP-DL graph of a fully int8, shift-only TFLite graph (`tfqat.integer.model.read_graph`)."""
    return _Converter(graph, chip_target(chip), name).run()


class _Converter:
    def __init__(self, graph: Graph, target: Target, name: str):
        self.graph, self.target, self.name = graph, target, name
        self.names = _Names(set())
        self.variables: dict[int, str] = {}  # TFLite tensor index -> ESP-DL variable name
        self.pads: dict[int, tuple] = {}  # a PAD's output -> (its input's index, (top, left, bottom, right))
        self.tables: dict[tuple, str] = {}  # (op type, exponent, table bytes) -> its initializer's name
        self.absorbed: set[int] = set()  # ops another op's node already computes (a QUANTIZE after LOGISTIC)
        self.model = Model(name, [], [], [], [], [], metadata={"target": target.name})

    def run(self) -> Model:
        for index in self.graph.inputs:
            self.model.inputs.append(self._value_info(index))
        for op in self.graph.operators:
            if op.index in self.absorbed:
                continue
            convert = _OPS.get(op.name)
            if convert is None:
                raise self._error(op, f"ESP-DL export has no rule for {op.name}")
            convert(self, op)
        if self.pads:
            index = next(iter(self.pads))
            raise EspdlExportError(f"{self._tensor(index).label}: a padding no conv or pooling takes")
        for index in self.graph.outputs:
            self.model.outputs.append(next(v for v in self.model.value_info if v.name == self.variables[index]))
        return self.model

    # Values.

    def _tensor(self, index: int) -> TFLiteTensor:
        return self.graph.tensors[index]

    def _exponent(self, tensor: TFLiteTensor) -> np.ndarray:
        """The tensor's exponent(s): log2 of its scale(s), which must be powers of two."""
        try:
            return np.atleast_1d(tflite_exponent(tensor))
        except ExecutorError as error:
            raise EspdlExportError(str(error)) from None

    def _activation_exponent(self, index: int) -> int:
        tensor = self._tensor(index)
        if tensor.dtype != np.int8:
            raise EspdlExportError(f"{tensor.label} is {np.dtype(tensor.dtype).name}: ESP-DL export takes int8 activations")
        if any(tensor.zero_points):
            raise EspdlExportError(
                f"{tensor.label} has zero point {tensor.zero_point}: ESP-DL has no zero points (an unsigned "
                "grid); quantize the model for the chip's target, which keeps every activation signed"
            )
        exponents = self._exponent(tensor)
        if exponents.size != 1:
            raise EspdlExportError(f"{tensor.label} has {exponents.size} scales: an activation has one")
        return int(exponents[0])

    def _value_info(self, index: int, shape: tuple | None = None) -> ValueInfo:
        """The variable of a TFLite activation tensor (its name made once)."""
        info = ValueInfo(self._name(index), tuple(shape or self._tensor(index).shape), (self._activation_exponent(index),))
        if all(v.name != info.name for v in self.model.value_info):
            self.model.value_info.append(info)
        return info

    def _name(self, index: int) -> str:
        """The variable name of a TFLite tensor, made on first use."""
        if index not in self.variables:
            self.variables[index] = self.names.make(self._tensor(index).name)
        return self.variables[index]

    def _variable(self, index: int) -> str:
        if index not in self.variables:
            raise EspdlExportError(f"{self._tensor(index).label} is read before any op writes it (a constant "
                                   "input ESP-DL export does not take)")
        return self.variables[index]

    def _intermediate(self, base: str, shape: tuple, exponent: int) -> str:
        info = ValueInfo(self.names.make(base, derived=True), tuple(shape), (exponent,))
        self.model.value_info.append(info)
        return info.name

    def _initializer(self, name: str, values: np.ndarray, dims: tuple, exponents, doc: str = "") -> str:
        tensor = Tensor(self.names.make(name, derived=True), tuple(int(d) for d in dims), values, tuple(int(e) for e in np.atleast_1d(exponents)), doc)
        self.model.initializers.append(tensor)
        return tensor.name

    def _error(self, op: Operator, why: str) -> EspdlExportError:
        return EspdlExportError(f"{self.graph.op_label(op)}: {why}")

    def _node(self, op: Operator, op_type: str, inputs: list[str], outputs: list[str], **attributes) -> None:
        name = self.names.make(f"{op_type}:{outputs[0]}", derived=True)
        self.model.nodes.append(Node(name, op_type, tuple(inputs), tuple(outputs), {"quant_type": "S8", **attributes}))

    # Ops.

    def _weights(self, op: Operator, filters: np.ndarray, weight: TFLiteTensor, depthwise: bool) -> tuple[str, np.ndarray]:
        exponents = self._exponent(weight)
        if exponents.size > 1 and not self.target.per_channel_weights:
            raise self._error(op, f"per-channel weights ({exponents.size} scales): {self.target.name} takes one "
                                  "weight scale per tensor; quantize with per_channel=False")
        values, dims, name = layout.blocked_filter(filters.astype(np.int8), depthwise)
        return self._initializer(f"{self.variables[op.outputs[0]]}:weight", values, dims, exponents,
                                 f"layout ==> {name}"), exponents

    def _bias(self, op: Operator, index: int, exponents: np.ndarray) -> list[str]:
        if index < 0:
            return []
        bias = self._tensor(index)
        values = bias.data.astype(np.int64)
        limit = 2 ** (self.target.bias_bits - 1)
        wide = np.flatnonzero((values < -limit) | (values >= limit))
        if wide.size:
            c = int(wide[0])
            raise self._error(op, f"bias of channel {c} is {int(values[c])} steps of 2^{int(exponents[c % exponents.size])}, "
                                  f"beyond the {self.target.bias_bits} bits {self.target.name} keeps (|bias| < {limit})")
        return [self._initializer(f"{self.variables[op.outputs[0]]}:bias", values.astype(np.int32),
                                  values.shape, exponents)]

    def _requantize_shift(self, op: Operator, x_exp: int, w_exps: np.ndarray, out_exp: int) -> None:
        shifts = out_exp - x_exp - w_exps
        if np.any(shifts < 0):
            raise self._error(op, f"the output's grid 2^{out_exp} is finer than the accumulator's 2^{int(x_exp + w_exps.min())}: "
                                  "ESP-DL only shifts right")

    def conv(self, op: Operator, depthwise: bool = False) -> None:
        x_i, w_i, b_i = (list(op.inputs) + [-1])[:3]
        x, weight, out = self._tensor(x_i), self._tensor(w_i), self._tensor(op.outputs[0])
        o = op.options
        filters = weight.data
        if depthwise:
            if o.get("depthMultiplier", 1) != 1 or filters.shape[3] != x.shape[3]:
                raise self._error(op, "a depthwise conv with a channel multiplier: ESP-DL takes one filter per channel")
            filters = filters.transpose(3, 1, 2, 0)  # [1, H, W, C] -> [C, H, W, 1]
        kernel = tuple(filters.shape[1:3])
        strides = (o.get("strideH", 1), o.get("strideW", 1))
        dilations = (o.get("dilationHFactor", 1), o.get("dilationWFactor", 1))
        pads = layout.same_pads(x.shape[1:3], kernel, strides, dilations) if o.get("padding") == _SAME else (0, 0, 0, 0)
        x_i, pads = self._padded(op, x_i, pads, zero_only=False)
        x_exp, out_exp = self._activation_exponent(x_i), self._activation_exponent(op.outputs[0])
        self._name(op.outputs[0])
        weight_name, w_exps = self._weights(op, filters, weight, depthwise)
        self._requantize_shift(op, x_exp, w_exps, out_exp)
        inputs = [self._variable(x_i), weight_name] + self._bias(op, b_i, x_exp + w_exps)
        attributes = dict(dilations=dilations, group=int(x.shape[3]) if depthwise else 1, kernel_shape=kernel,
                          pads=pads, strides=strides)
        self._with_activation(op, "Conv", inputs, attributes)

    def depthwise(self, op: Operator) -> None:
        self.conv(op, depthwise=True)

    def _padded(self, op: Operator, x_i: int, pads: tuple, zero_only: bool) -> tuple[int, tuple]:
        """The op's real input and its pads, with a PAD before it folded in (zeros, as the op's own padding
        adds; for a max pool only over non-negative values, where a zero never wins)."""
        if x_i not in self.pads:
            return x_i, pads
        source, extra = self.pads.pop(x_i)
        if zero_only and not self._non_negative(source):
            raise self._error(op, "zero padding before a max pool of values that may be negative: ESP-DL pads a "
                                  "max pool with the lowest value")
        return source, tuple(a + b for a, b in zip(pads, extra))

    def _non_negative(self, index: int) -> bool:
        """Whether a tensor comes out of a fused ReLU or ReLU6 (then it is never negative)."""
        for op in self.graph.operators:
            if index in op.outputs:
                return op.options.get("fusedActivationFunction", 0) in (_RELU, _RELU6) or op.name in ("RELU", "RELU6")
        return False

    def pad(self, op: Operator) -> None:
        """Zero padding of height and width, folded into the conv or pooling that reads it."""
        paddings = np.asarray(self._tensor(op.inputs[1]).data).reshape(-1, 2)
        x_i = op.inputs[0]
        if paddings.shape[0] != 4 or paddings[0].any() or paddings[3].any():
            raise self._error(op, f"padding {paddings.tolist()}: ESP-DL export folds padding of height and width only")
        if self._activation_exponent(x_i) != self._activation_exponent(op.outputs[0]):
            raise self._error(op, "a padding that changes the scale")
        (top, bottom), (left, right) = paddings[1], paddings[2]
        self.pads[op.outputs[0]] = (x_i, (int(top), int(left), int(bottom), int(right)))

    def _pool(self, op: Operator, op_type: str) -> None:
        o = op.options
        x_i = op.inputs[0]
        kernel, strides = (o["filterHeight"], o["filterWidth"]), (o.get("strideH", 1), o.get("strideW", 1))
        x = self._tensor(x_i)
        pads = layout.same_pads(x.shape[1:3], kernel, strides, (1, 1)) if o.get("padding") == _SAME else (0, 0, 0, 0)
        if op_type == "AveragePool" and any(pads):
            raise self._error(op, "an average pool over padding: TFLite divides by the pixels inside, ESP-DL "
                                  "export takes unpadded average pools only")
        x_i, pads = self._padded(op, x_i, pads, zero_only=True)
        if self._activation_exponent(x_i) != self._activation_exponent(op.outputs[0]):
            raise self._error(op, "a pooling that changes the scale")
        if o.get("fusedActivationFunction", 0):
            raise self._error(op, "a pooling with a fused activation")
        out = self._value_info(op.outputs[0])
        self._node(op, op_type, [self._variable(x_i)], [out.name], kernel_shape=kernel, pads=pads, strides=strides)

    def max_pool(self, op: Operator) -> None:
        self._pool(op, "MaxPool")

    def average_pool(self, op: Operator) -> None:
        self._pool(op, "AveragePool")

    def concatenation(self, op: Operator) -> None:
        exponents = {self._activation_exponent(i) for i in (*op.inputs, *op.outputs)}
        if len(exponents) != 1:
            raise self._error(op, f"inputs and output at exponents {sorted(exponents)}: ESP-DL concatenates int8 "
                                  "values as they are, so they must share one")
        if op.options.get("fusedActivationFunction", 0):
            raise self._error(op, "a concatenation with a fused activation")
        rank = len(self._tensor(op.outputs[0]).shape)
        out = self._value_info(op.outputs[0])
        self._node(op, "Concat", [self._variable(i) for i in op.inputs], [out.name],
                   axis=op.options.get("axis", -1) % rank)

    def relu(self, op: Operator) -> None:
        if self._activation_exponent(op.inputs[0]) != self._activation_exponent(op.outputs[0]):
            raise self._error(op, "a ReLU that changes the scale: ESP-DL's Relu keeps its input's exponent")
        self._relu(op, self._variable(op.inputs[0]), self._value_info(op.outputs[0]))

    def dense(self, op: Operator) -> None:
        x_i, w_i, b_i = (list(op.inputs) + [-1])[:3]
        x, weight = self._tensor(x_i), self._tensor(w_i)
        if len(x.shape) != 2:
            raise self._error(op, f"a dense layer on a {len(x.shape)}-D input: ESP-DL export takes [batch, features]")
        x_exp, out_exp = self._activation_exponent(x_i), self._activation_exponent(op.outputs[0])
        self._name(op.outputs[0])
        filters = weight.data.reshape(weight.shape[0], 1, 1, weight.shape[1])  # a 1x1 conv's [N, 1, 1, C]
        weight_name, w_exps = self._weights(op, filters, weight, False)
        self._requantize_shift(op, x_exp, w_exps, out_exp)
        inputs = [self._variable(x_i), weight_name] + self._bias(op, b_i, x_exp + w_exps)
        self._with_activation(op, "Gemm", inputs, dict(alpha=1.0, beta=1.0, transB=0))

    def _with_activation(self, op: Operator, op_type: str, inputs: list[str], attributes: dict) -> None:
        """The node, with a fused ReLU as its `activation`, or a ReLU6 as a Clip after it at the same exponent
        (the clamp at 6 is exact there)."""
        fused = op.options.get("fusedActivationFunction", 0)
        if fused not in (0, _RELU, _RELU6):
            raise self._error(op, f"fused activation {fused}: ESP-DL export takes none, ReLU or ReLU6")
        out_index = op.outputs[0]
        out = self._value_info(out_index)
        clips = fused == _RELU6 and self._six_fits(out_index)
        activation = "Relu" if fused == _RELU or (fused == _RELU6 and not clips) else "Linear"
        if not clips:
            self._node(op, op_type, inputs, [out.name], activation=activation, **attributes)
            return
        before = self._intermediate(f"{out.name}:before_clip", out.shape, out.exponents[0])
        self._node(op, op_type, inputs, [before], activation="Relu", **attributes)
        self._clip(op, before, out)

    def _six_fits(self, index: int) -> bool:
        """Whether 6 lies inside the int8 range of this tensor's grid, so that a ReLU6 clamps there (else it is
        a ReLU)."""
        return 6.0 / self._tensor(index).scales[0] < 127

    def _table(self, op_type: str, table: np.ndarray, exponent: int) -> str:
        """A 256-entry int8 lookup table (entry i: the output for input i - 128) at the output's exponent,
        one initializer per distinct table, named as Espressif's exporter names them."""
        key = (op_type, exponent, table.tobytes())
        if key not in self.tables:
            count = sum(k[0] == op_type for k in self.tables)
            self.tables[key] = self._initializer(f"{op_type}_lut_{count}", table.astype(np.int8), (256,), exponent)
        return self.tables[key]

    def _clip(self, op: Operator, x: str, out: ValueInfo) -> None:
        """ReLU6 at exponent e: a Clip to [0, 6] whose table maps each int8 step to itself, clamped."""
        e = out.exponents[0]
        top = int(round(6.0 * 2.0**-e))
        low = self._initializer(f"{out.name}:clip_min", np.array([0], np.int8), (), e)
        high = self._initializer(f"{out.name}:clip_max", np.array([top], np.int8), (), e)
        lut = self._table("Clip", np.clip(np.arange(-128, 128), 0, top), e)
        self.model.nodes.append(Node(self.names.make(f"Clip:{out.name}", derived=True), "Clip", (x, low, high), (out.name,),
                                     {"quant_type": "S8", "lut": lut}))

    def _relu(self, op: Operator, x: str, out: ValueInfo) -> None:
        """A ReLU that is no conv's: a Relu node with its table (ESP-DL runs int8 activations by table)."""
        lut = self._table("Relu", np.maximum(np.arange(-128, 128), 0), out.exponents[0])
        self._node(op, "Relu", [x], [out.name], lut=lut)

    def add(self, op: Operator) -> None:
        constants = [i for i in op.inputs if self._tensor(i).data is not None]
        if constants:
            self._add_constant(op, constants[0])
            return
        exps = [self._activation_exponent(i) for i in op.inputs] + [self._activation_exponent(op.outputs[0])]
        if len(set(exps)) != 1:
            raise self._error(op, f"inputs at 2^{exps[0]} and 2^{exps[1]}, output at 2^{exps[2]}: ESP-DL adds int8 "
                                  "values as they are, so they must share one exponent; quantize (or tfqat.retarget) "
                                  f"the model for {self.target.name}, whose Add shares it")
        self._then_activation(op, "Add", [self._variable(i) for i in op.inputs])

    def _add_constant(self, op: Operator, constant: int) -> None:
        """x + c (MobileNetV3's hard-sigmoid adds 3): ESP-DL adds c as an int8 scalar at the output's exponent,
        to x requantized there by a RequantizeLinear. Rounding x, then adding the integer c, is TFLite's one
        rounding of x + c, except when ties go to even and c is odd (refused), and except that a left shift
        saturates x before the add (refused unless a ReLU after it clamps both alike)."""
        [x_i] = [i for i in op.inputs if i != constant]
        x_exp, out_exp = self._activation_exponent(x_i), self._activation_exponent(op.outputs[0])
        steps, name = self._scalar(op, constant, out_exp)
        fused = op.options.get("fusedActivationFunction", 0)
        x = self._variable(x_i)
        if x_exp != out_exp:
            if x_exp > out_exp and (fused not in (_RELU, _RELU6) or x_exp - out_exp > 6):
                raise self._error(op, f"x at 2^{x_exp} shifted left to the output's 2^{out_exp}: ESP-DL saturates it "
                                      "before adding, which differs from TFLite unless a ReLU follows (and the shift is "
                                      "at most 6)")
            if x_exp < out_exp and steps % 2 and self.target.rule("ADD") == "half_even":
                raise self._error(op, f"the constant is {steps} (odd) steps of the output: rounding x to even before "
                                      "adding it differs from rounding the sum to even")
            x = self._requantize_linear(x, self._tensor(x_i).shape, x_exp, out_exp)
        inputs = [x if i == x_i else name for i in op.inputs]
        self._then_activation(op, "Add", inputs)

    def _scalar(self, op: Operator, index: int, exponent: int) -> tuple[int, str]:
        """A constant scalar operand's integer at 2**exponent, which must be exact and fit int8, and the int8
        initializer (dims [], at that exponent) that holds it."""
        tensor = self._tensor(index)
        if tensor.data.size != 1 or any(tensor.zero_points):
            raise self._error(op, f"constant operand {tensor.label} of shape {list(tensor.shape)}: ESP-DL export takes "
                                  "one int8 number without a zero point")
        value = int(tensor.data.ravel()[0]) * 2.0 ** (int(self._exponent(tensor)[0]) - exponent)
        if value != round(value) or not -128 <= value <= 127:
            raise self._error(op, f"constant {value:g} steps of 2^{exponent}: ESP-DL adds an int8 integer at the "
                                  "output's exponent")
        steps = int(value)
        return steps, self._initializer(f"{self._name(op.outputs[0])}:constant", np.array([steps], np.int8), (), exponent)

    def _requantize_linear(self, x: str, shape: tuple, x_exp: int, out_exp: int, out: str = "") -> str:
        """A RequantizeLinear to `out_exp` (writing `out`, else a new variable), written as esp-ppq writes it (a
        float scale and a zero point, which the runtime reads from the exponents instead):
        clamp(R(x * 2**(x_exp - out_exp)))."""
        out = out or self._intermediate(f"{x}:requantized", shape, out_exp)
        scale = self._initializer(f"{out}:scale", np.array([2.0 ** (out_exp - x_exp)], np.float32), (), 0)
        zero = self._initializer(f"{out}:zero_point", np.array([0], np.int8), (), 0)
        self.model.nodes.append(Node(self.names.make(f"RequantizeLinear:{out}", derived=True), "RequantizeLinear",
                                     (x, scale, zero), (out,), {"quant_type": "S8"}))
        return out

    def _then_activation(self, op: Operator, op_type: str, inputs: list[str]) -> None:
        """A node ESP-DL fuses no activation into, then its fused ReLU (a Relu table) or ReLU6 (a Clip table at
        the output's exponent, or a Relu where 6 is beyond int8)."""
        fused = op.options.get("fusedActivationFunction", 0)
        out = self._value_info(op.outputs[0])
        if fused == 0:
            self._node(op, op_type, inputs, [out.name])
            return
        if fused not in (_RELU, _RELU6):
            raise self._error(op, f"fused activation {fused} after {op.name}: ESP-DL export takes none, ReLU or ReLU6")
        before = self._intermediate(f"{out.name}:before_{'relu' if fused == _RELU else 'clip'}", out.shape,
                                    out.exponents[0])
        self._node(op, op_type, inputs, [before])
        if fused == _RELU6 and self._six_fits(op.outputs[0]):
            self._clip(op, before, out)
        else:
            self._relu(op, before, out)

    def mul(self, op: Operator) -> None:
        """Mul: sat(R(a * b / 2**(e_out - e_a - e_b))), broadcast over height and width (a squeeze-and-excitation
        gate [1, 1, 1, C]) or by a constant scalar (MobileNetV3's 1/6, stored at its own exponent); the chip
        only shifts right."""
        out_exp = self._activation_exponent(op.outputs[0])
        inputs, exps = [], []
        for i in op.inputs:
            tensor = self._tensor(i)
            if tensor.data is None:
                inputs.append(self._variable(i))
                exps.append(self._activation_exponent(i))
                continue
            exponent = int(self._exponent(tensor)[0])
            inputs.append(self._scalar(op, i, exponent)[1])
            exps.append(exponent)
        if out_exp < sum(exps):
            raise self._error(op, f"the output's grid 2^{out_exp} is finer than the product's 2^{sum(exps)}: ESP-DL "
                                  "only shifts right")
        self._then_activation(op, "Mul", inputs)

    def logistic(self, op: Operator) -> None:
        """Sigmoid as ESP-DL runs it: a table on the grid 2**-7 (`tfqat.integer.named.espdl_sigmoid`). TFLite's
        LOGISTIC writes 1/256 with zero point -128, so a model for the chip requantizes it to 2**-7 at once:
        that QUANTIZE is the same node."""
        users = [other for other in self.graph.operators if op.outputs[0] in other.inputs]
        if len(users) != 1 or users[0].name != "QUANTIZE" or self._activation_exponent(users[0].outputs[0]) != SIGMOID_EXPONENT:
            raise self._error(op, "a sigmoid whose output stays on TFLite's grid (1/256, zero point -128): ESP-DL "
                                  f"holds it at 2^{SIGMOID_EXPONENT} without a zero point; quantize (or tfqat.retarget) "
                                  f"the model for {self.target.name}")
        x_exp = self._activation_exponent(op.inputs[0])
        self.absorbed.add(users[0].index)
        out = self._value_info(users[0].outputs[0])
        table = espdl_sigmoid(np.arange(-128, 128), 2.0**x_exp)
        self._node(op, "Sigmoid", [self._variable(op.inputs[0])], [out.name],
                   lut=self._table("Sigmoid", table, SIGMOID_EXPONENT))

    def quantize(self, op: Operator) -> None:
        """An int8 requantization: RequantizeLinear, shifting right (ESP-DL's left shift multiplies by an int8)."""
        x_exp, out_exp = self._activation_exponent(op.inputs[0]), self._activation_exponent(op.outputs[0])
        if x_exp > out_exp:
            raise self._error(op, f"a requantization from 2^{x_exp} to the finer 2^{out_exp}: ESP-DL export shifts right only")
        out = self._value_info(op.outputs[0])
        self._requantize_linear(self._variable(op.inputs[0]), out.shape, x_exp, out_exp, out.name)

    def mean(self, op: Operator) -> None:
        x = self._tensor(op.inputs[0])
        axes = sorted(int(a) % 4 for a in np.atleast_1d(self._tensor(op.inputs[1]).data))
        if len(x.shape) != 4 or axes != [1, 2]:
            raise self._error(op, f"a mean over axes {axes}: ESP-DL export takes a global average pool (axes 1, 2 of NHWC)")
        out_exp = self._activation_exponent(op.outputs[0])
        pooled_shape = (x.shape[0], 1, 1, x.shape[3])
        if op.options.get("keepDims"):
            out = self._value_info(op.outputs[0], pooled_shape)
            self._node(op, "GlobalAveragePool", [self._variable(op.inputs[0])], [out.name])
            return
        out = self._value_info(op.outputs[0])
        pooled = self._intermediate(f"{out.name}:pooled", pooled_shape, out_exp)
        self._node(op, "GlobalAveragePool", [self._variable(op.inputs[0])], [pooled])
        self._node(op, "Flatten", [pooled], [out.name], axis=1)

    def reshape(self, op: Operator) -> None:
        out = self._value_info(op.outputs[0])
        if self._activation_exponent(op.inputs[0]) != out.exponents[0]:
            raise self._error(op, "a reshape that changes the scale")
        shape = self._initializer(f"{out.name}:shape", np.asarray(out.shape, np.int64), (len(out.shape),), 0)
        self._node(op, "Reshape", [self._variable(op.inputs[0]), shape], [out.name])


_OPS = {
    "CONV_2D": _Converter.conv,
    "DEPTHWISE_CONV_2D": _Converter.depthwise,
    "FULLY_CONNECTED": _Converter.dense,
    "ADD": _Converter.add,
    "MEAN": _Converter.mean,
    "RESHAPE": _Converter.reshape,
    "PAD": _Converter.pad,
    "MAX_POOL_2D": _Converter.max_pool,
    "AVERAGE_POOL_2D": _Converter.average_pool,
    "CONCATENATION": _Converter.concatenation,
    "RELU": _Converter.relu,
    "MUL": _Converter.mul,
    "LOGISTIC": _Converter.logistic,
    "QUANTIZE": _Converter.quantize,
}
