"""The integer reference executor: runs a shift-only int8 .tflite file op by op in numpy.

Every shift-only op requantizes with integer adds and arithmetic shifts (tfqat.integer.rounding) under a
stated tie rule; the ops the verifier names as not shifts are computed as the runtimes compute them
(tfqat.integer.named) and listed in the result. Neither TensorFlow nor LiteRT's interpreter is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from tfqat.integer import kernels, named
from tfqat.integer.kernels import activation_range, exponent
from tfqat.integer.model import ExecutorError, Graph, Operator, Tensor, model_bytes, read_graph
from tfqat.integer.rounding import count_ties, shift_round
from tfqat.targets import MEAN_KEEP_DIMS, NAMED_FLAVOURS, RULES, TARGETS, LaneSplit, Target, check_rule, single_rule
from tfqat.tflite.ops import op_kind

Ties = Union[str, LaneSplit, Mapping[str, Union[str, LaneSplit]]]

SHIFT_KERNELS = {
    "CONV_2D": kernels.conv_2d,
    "DEPTHWISE_CONV_2D": kernels.depthwise_conv_2d,
    "FULLY_CONNECTED": kernels.fully_connected,
    "ADD": kernels.add_or_sub,
    "SUB": kernels.add_or_sub,
    "MUL": kernels.mul,
    "MEAN": kernels.mean_power_of_two,
    "QUANTIZE": kernels.requantize_op,
    "MAX_POOL_2D": kernels.max_pool_2d,
    "PAD": kernels.pad,
    "PADV2": kernels.pad,
    "RESHAPE": kernels.reshape,
    "SQUEEZE": kernels.reshape,
    "CONCATENATION": kernels.concatenation,
}
NAMED_KERNELS = {
    "SOFTMAX": named.softmax,
    "LOGISTIC": named.logistic,
    "MEAN": named.mean,
    "AVERAGE_POOL_2D": named.average_pool_2d,
}
DEFAULT_TIES = "reference"


@dataclass(frozen=True)
class Result:
    """One run: the outputs, every tensor (when kept) and, per requantized tensor, how many values were ties.

    ties: tensor index -> how many accumulators lay exactly halfway between two output steps (where
      runtimes with other tie rules can disagree); shift-only ops only.
    named: one line per op computed as the runtime does rather than by a shift.
    """

    outputs: tuple[np.ndarray, ...]
    tensors: dict[int, np.ndarray] = field(repr=False)
    ties: dict[int, int]
    named: tuple[str, ...]


class IntegerModel:
    """A parsed, checked model ready to run many inputs.

    Args:
      model: path to a .tflite file or its bytes.
      ties: a target's rounding (tfqat.targets.TARGETS: "reference", "builtin", "xnnpack", "micro" as
        measured, "half_up", "half_even", the ESP-DL chips "esp32s3", "esp32p4"), one tie rule for every
        shift (tfqat.targets.RULES), or a mapping op name -> rule ("*" for the other ops; default
        "tflite_double").
      named: how the ops that are not shifts are computed: "litert" (LiteRT's kernels), "xnnpack" (its MEAN
        over a count that is not a power of two), "micro" (TFLite Micro's LOGISTIC) or "espdl" (ESP-DL's global
        average pool). Default: the target's, else "litert".

    Raises:
      ExecutorError: junk bytes, a float or non-power-of-two tensor (named), or an op the executor lacks.
    """

    def __init__(self, model: str | os.PathLike | bytes, *, ties: Ties = DEFAULT_TIES, named: str | None = None):
        self.target = _target(ties)
        named = self.target.named if named is None else named
        if named not in NAMED_FLAVOURS:
            raise ValueError(f"named={named!r} is not valid; choose one of {list(NAMED_FLAVOURS)}")
        self.flavour = named
        self.content, self.source = model_bytes(model)
        self.graph: Graph = read_graph(self.content, self.source)
        self.steps = [self._plan(op) for op in self.graph.operators]
        self.named = tuple(line for _, line in self.steps if line)

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        return tuple(self.graph.tensors[i] for i in self.graph.inputs)

    @property
    def outputs(self) -> tuple[Tensor, ...]:
        return tuple(self.graph.tensors[i] for i in self.graph.outputs)

    def _plan(self, op: Operator):
        tensors = [self.graph.tensors[i] for i in op.inputs if i >= 0] + [self.graph.tensors[i] for i in op.outputs]
        kind = op_kind(op.name)
        label = f"op {op.index} {op.name} ('{tensors[-1].name.split(';')[0]}')"
        count = _mean_count(op, self.graph) if op.name == "MEAN" else 0
        if op.name in NAMED_KERNELS and not (op.name == "MEAN" and _power_of_two(count)):
            why = f"divides by {count} averaged elements" if count else "a nonlinear function"
            why = "divides by its window size" if op.name == "AVERAGE_POOL_2D" else why
            how = named.HOW.get((op.name, self.flavour))
            if how is None:
                raise ExecutorError(f"{label}: the executor does not compute {op.name} as {self.flavour} does")
            for t in tensors:
                if np.issubdtype(t.dtype, np.floating):
                    raise ExecutorError(f"{t.label} is {t.dtype}: the executor runs fully integer models")
            return NAMED_KERNELS[op.name], f"{label}: {why}, not a shift; computed as {self.flavour} does: {how}"
        if op.name not in SHIFT_KERNELS:
            known = "not a shift" if kind is not None and kind.arithmetic == "named" else "not implemented"
            raise ExecutorError(f"{label}: the executor has no kernel for {op.name} ({known})")
        for position, index in enumerate(op.inputs):
            if index >= 0 and not (kind is not None and position in kind.parameters):
                _check_shift_only(self.graph.tensors[index])
        for index in op.outputs:
            _check_shift_only(self.graph.tensors[index])
        return SHIFT_KERNELS[op.name], ""

    def run(self, inputs: np.ndarray | Sequence[np.ndarray], *, keep_tensors: bool = True) -> Result:
        """Runs integer inputs (the model's own dtype, any batch size) through every op."""
        arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
        values: dict[int, np.ndarray] = {}
        for tensor, array in zip(self.inputs, arrays, strict=True):
            values[tensor.index] = _checked_input(tensor, np.asarray(array)).astype(np.int64)
        ties: dict[int, int] = {}
        for op in self.graph.operators:
            operands = [self._value(i, values) for i in op.inputs if i >= 0]
            values[op.outputs[0]] = self.run_op(op.index, operands, ties)
        activations = [i for i in values if self.graph.tensors[i].data is None]
        kept = {i: values[i].astype(self.graph.tensors[i].dtype) for i in activations} if keep_tensors else {}
        outputs = tuple(values[i].astype(self.graph.tensors[i].dtype) for i in self.graph.outputs)
        return Result(outputs, kept, ties, self.named)

    def run_op(self, index: int, operands: Sequence[np.ndarray], ties: dict[int, int] | None = None) -> np.ndarray:
        """One op on given operand values (int64 arrays; constants included), e.g. a runtime's own inputs."""
        op = self.graph.operators[index]
        kernel, note = self.steps[index]
        tensors = [self.graph.tensors[i] for i in op.inputs if i >= 0] + [self.graph.tensors[i] for i in op.outputs]
        operands = [np.asarray(v, np.int64) if not np.issubdtype(np.asarray(v).dtype, np.floating) else v
                    for v in operands]
        if note:
            rule = single_rule(self.target.rule(op.name))
            return np.asarray(kernel(op, tensors, operands, self.flavour, rule), np.int64)
        return np.asarray(kernel(op, tensors, operands, self._requantizer(op, {} if ties is None else ties)), np.int64)

    def _value(self, index: int, values: dict[int, np.ndarray]) -> np.ndarray:
        if index not in values:
            data = self.graph.tensors[index].data
            if data is None:
                raise ExecutorError(f"{self.graph.tensors[index].label} is read before any op writes it")
            values[index] = data.astype(np.int64) if not np.issubdtype(data.dtype, np.floating) else data
        return values[index]

    def _requantizer(self, op: Operator, ties: dict[int, int]):
        # LiteRT's optimized MEAN runs only for a 4-D MEAN over axes 1 and 2 that keeps its dimensions, a row of
        # its own in the targets (measured: benchmarks/executor.py).
        rule = self.target.rule(MEAN_KEEP_DIMS if op.name == "MEAN" and _optimized_mean(op, self.graph) else op.name)

        def requantize(acc: np.ndarray, n, out: Tensor, fused: int) -> np.ndarray:
            ties[out.index] = ties.get(out.index, 0) + count_ties(acc, n)
            low, high = activation_range(out, fused)
            return np.clip(shift_round(acc, n, rule) + out.zero_point, low, high)

        return requantize


def execute_tflite(model, inputs, *, ties: Ties = DEFAULT_TIES, named: str | None = None, keep_tensors: bool = True) -> Result:
    """Runs a shift-only int8 .tflite model on integer inputs with integer arithmetic only.

    Args:
      model: path, bytes or an IntegerModel (parsed once; reuse it for many inputs).
      inputs: one array per model input, in its integer dtype (int8), any batch size.
      ties: a target's rounding, one tie rule for every shift, or a mapping op name -> rule (see IntegerModel).
      named: "litert" or "micro": how the ops that are not shifts are computed.
      keep_tensors: keep every intermediate tensor in the result (for comparing with a runtime).

    Returns:
      Result: outputs, tensors, tie counts per tensor, and the ops computed as named exceptions.
    """
    program = model if isinstance(model, IntegerModel) else IntegerModel(model, ties=ties, named=named)
    return program.run(inputs, keep_tensors=keep_tensors)


def _target(ties: Ties) -> Target:
    if isinstance(ties, str) and ties in TARGETS:
        return TARGETS[ties]
    if isinstance(ties, (str, LaneSplit)):
        if isinstance(ties, str) and ties not in RULES:
            msg = f"ties={ties!r} is neither a target ({sorted(TARGETS)}) nor a rounding rule ({sorted(RULES)})"
            raise ValueError(msg)
        return Target("custom", {"*": check_rule(ties)})
    return Target("custom", {"*": "tflite_double", **{op: check_rule(rule) for op, rule in ties.items()}})


def _optimized_mean(op: Operator, graph: Graph) -> bool:
    axes = {int(a) % 4 for a in np.ravel(graph.tensors[op.inputs[1]].data)}
    return bool(op.options.get("keepDims")) and len(graph.tensors[op.inputs[0]].shape) == 4 and axes == {1, 2}


def _power_of_two(count: int) -> bool:
    return count > 0 and count & (count - 1) == 0


def _mean_count(op: Operator, graph: Graph) -> int:
    x = graph.tensors[op.inputs[0]]
    axes = graph.tensors[op.inputs[1]].data
    return int(np.prod([x.shape[int(a) % len(x.shape)] for a in np.ravel(axes)]))


def _check_shift_only(tensor: Tensor) -> None:
    if np.issubdtype(tensor.dtype, np.floating):
        raise ExecutorError(f"{tensor.label} is {tensor.dtype}: the executor runs fully integer models")
    exponent(tensor)  # raises naming the tensor when a scale is missing or not a power of two


def _checked_input(tensor: Tensor, array: np.ndarray) -> np.ndarray:
    if array.dtype != tensor.dtype:
        raise ValueError(f"input {tensor.label} is {tensor.dtype}; got {array.dtype} (quantize the values first)")
    if array.ndim != len(tensor.shape) or tuple(array.shape[1:]) != tuple(tensor.shape[1:]):
        raise ValueError(f"input {tensor.label} has shape [N, {', '.join(map(str, tensor.shape[1:]))}]; got {array.shape}")
    return array
