"""Checks the integer executor against a runtime on every tensor: LiteRT's kernels or TFLite Micro.

Two ways to compare: "chained" runs both on the same input and compares each tensor (a difference
propagates, as on the device); "local" feeds each of the executor's ops the runtime's own input
tensors, so every op is judged alone (how the rounding rule of each op in each runtime is measured).
XNNPACK fuses the graph into one delegate node whose intermediate tensors LiteRT does not expose: with
it only the model's outputs are real, and only they are compared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tfqat.integer.executor import IntegerModel
from tfqat.integer.model import model_bytes

Runtime = Literal["reference", "builtin", "xnnpack", "micro"]
RUNTIMES: tuple[str, ...] = ("reference", "builtin", "xnnpack", "micro")


class RuntimeTensors:
    """One runtime loaded once; `run(x)` returns every op output it exposes (tensor index -> array)."""

    def __init__(self, model: str | os.PathLike | bytes, runtime: str):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime={runtime!r} is not valid; choose one of {list(RUNTIMES)}")
        self.runtime = runtime
        content, _ = model_bytes(model)
        if runtime == "micro":
            from tflite_micro.python.tflite_micro import runtime as micro

            self._micro = micro.Interpreter.from_bytes(
                content, intrepreter_config=micro.InterpreterConfig.kPreserveAllTensors
            )
        else:
            from tfqat.tflite.litert import load_interpreter

            self._litert = load_interpreter(content, kernels=runtime, num_threads=1, preserve_all_tensors=True)
            self._litert.allocate_tensors()
            self._outputs = [d["index"] for d in self._litert.get_output_details()]

    def run(self, inputs: list[np.ndarray], indices: list[int]) -> dict[int, np.ndarray]:
        if self.runtime == "micro":
            for position, x in enumerate(inputs):
                self._micro.set_input(x, position)
            self._micro.invoke()
            return {i: np.array(self._micro.GetTensor(i, 0)["tensor_data"]) for i in indices}
        details = self._litert.get_input_details()
        for detail, x in zip(details, inputs):
            self._litert.set_tensor(detail["index"], x)
        self._litert.invoke()
        exposed = set(self._outputs) if self.runtime == "xnnpack" else set(indices)
        return {i: self._litert.get_tensor(i).copy() for i in indices if i in exposed}


@dataclass(frozen=True)
class TensorAgreement:
    """One op output over all compared inputs."""

    index: int
    name: str
    op: str
    elements: int
    mismatched: int
    ties: int


@dataclass(frozen=True)
class Agreement:
    """The executor against one runtime, per tensor."""

    runtime: str
    mode: str
    images: int
    tensors: tuple[TensorAgreement, ...]

    @property
    def mismatched(self) -> int:
        return sum(t.mismatched for t in self.tensors)

    @property
    def elements(self) -> int:
        return sum(t.elements for t in self.tensors)

    def by_op(self) -> dict[str, tuple[int, int, int]]:
        """op name -> (elements, mismatched, ties) summed over its tensors."""
        totals: dict[str, tuple[int, int, int]] = {}
        for t in self.tensors:
            e, m, k = totals.get(t.op, (0, 0, 0))
            totals[t.op] = (e + t.elements, m + t.mismatched, k + t.ties)
        return totals

    def summary(self, verbose: bool = False) -> str:
        bad = [t for t in self.tensors if t.mismatched]
        lines = [
            f"{self.runtime} ({self.mode}, {self.images} input(s)): {self.mismatched} of {self.elements} elements "
            f"differ in {len(bad)} of {len(self.tensors)} tensors"
        ]
        for t in self.tensors if verbose else bad:
            lines.append(f"  tensor {t.index:>4} {t.op:<18} {t.name[:48]:<48} {t.mismatched:>8} of {t.elements:<9} "
                         f"ties {t.ties}")
        return "\n".join(lines)


def compare(
    model: IntegerModel | str | os.PathLike | bytes,
    inputs: np.ndarray,
    runtime: str = "reference",
    *,
    local: bool = False,
) -> Agreement:
    """Runs each input (one batch-of-one at a time) through the executor and a runtime and counts, per op
    output, the elements that differ.

    Args:
      model: an IntegerModel (its tie rule and named flavour are used), or a path/bytes (then the
        runtime's own measured row of tfqat.targets is used).
      inputs: integer inputs [N, ...] for a single-input model.
      runtime: "reference", "builtin", "xnnpack" (outputs only) or "micro".
      local: feed every op the runtime's own inputs instead of the executor's.
    """
    program = model if isinstance(model, IntegerModel) else IntegerModel(model, ties=runtime)
    target = RuntimeTensors(program.content, runtime)
    graph = program.graph
    ops = graph.operators
    wanted = [op.outputs[0] for op in ops]
    counts = {i: [0, 0, 0] for i in wanted}
    for k in range(len(inputs)):
        x = np.asarray(inputs[k : k + 1])
        theirs = target.run([x], wanted + list(graph.inputs))
        if local:
            ours, ties = run_local(program, theirs, x)
        else:
            result = program.run(x)
            ours, ties = result.tensors, result.ties
        for op in ops:
            i = op.outputs[0]
            if i not in theirs or local and not fed(program, op, theirs):
                continue
            a, b = theirs[i].reshape(-1).astype(np.int64), ours[i].reshape(-1).astype(np.int64)
            counts[i][0] += a.size
            counts[i][1] += int(np.count_nonzero(a != b))
            counts[i][2] += ties.get(i, 0)
    tensors = tuple(
        TensorAgreement(op.outputs[0], graph.tensors[op.outputs[0]].name.split(";")[0], op.name, *counts[op.outputs[0]])
        for op in ops
        if counts[op.outputs[0]][0]
    )
    return Agreement(runtime, "local" if local else "chained", len(inputs), tensors)


def fed(program: IntegerModel, op, theirs: dict[int, np.ndarray]) -> bool:
    """Whether the runtime exposed every input of the op (XNNPACK shows only the model's outputs): only such
    an op is judged alone."""
    graph = program.graph
    return all(i in theirs or i in graph.inputs or graph.tensors[i].data is not None for i in op.inputs if i >= 0)


def run_local(program: IntegerModel, theirs: dict[int, np.ndarray], x: np.ndarray):
    """Every op of the executor on the runtime's tensors as inputs: (outputs by tensor, ties by tensor).
    An op whose input the runtime does not expose gets the executor's own value (XNNPACK)."""
    graph = program.graph
    ops = graph.operators
    known = {graph.inputs[0]: x, **theirs}
    ours: dict[int, np.ndarray] = {}
    ties: dict[int, int] = {}
    for op in ops:
        operands = []
        for i in op.inputs:
            if i < 0:
                continue
            value = graph.tensors[i].data if graph.tensors[i].data is not None else known.get(i, ours.get(i))
            operands.append(value)
        ours[op.outputs[0]] = program.run_op(op.index, operands, ties)
    return ours, ties
