"""How close a model's int32 accumulators come to ESP32-S3's 20-bit lanes, on given inputs.

ESP32-S3's vector unit accumulates 16 output channels at a time in 20-bit lanes (QACC), which saturate
at +-2^19 during the sum; nothing in tfqat's or esp-ppq's arithmetic saturates there. The order in which
the chip adds the products is its own, so the bound here does not depend on it: for each output, the
sum of the magnitudes of its products plus its bias's. Where that stays below 2^19, no partial sum can
reach the lanes' limit, in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfqat.integer import kernels
from tfqat.integer.executor import IntegerModel

LANE_LIMIT = 2**19  # ESP32-S3's 20-bit accumulator lanes hold -2^19 .. 2^19 - 1
_LINEAR = {"CONV_2D": kernels.conv_2d, "DEPTHWISE_CONV_2D": kernels.depthwise_conv_2d,
           "FULLY_CONNECTED": kernels.fully_connected}


@dataclass(frozen=True)
class Peak:
    """One conv or dense op: the largest bound on any partial sum of its accumulators over the inputs."""

    op: str  # "op <index> <NAME> ('<layer>')"
    bound: int

    @property
    def headroom_bits(self) -> float:
        """log2(2^19 / bound): below 0, some sum may saturate on ESP32-S3."""
        return float(np.log2(LANE_LIMIT / max(self.bound, 1)))


def accumulator_peaks(program: IntegerModel, inputs: np.ndarray, batch: int = 16) -> tuple[list[Peak], np.ndarray]:
    """Per conv and dense op of `program` (an `IntegerModel` of the int8 file), in graph order, the largest
    sum of |product| + |bias| any of its outputs reaches on `inputs` (int8, the model's input); and the
    model's first output on every input (the same pass)."""
    graph = program.graph
    peaks: dict[int, int] = {}
    outputs = []
    for start in range(0, len(inputs), batch):
        result = program.run(inputs[start: start + batch], keep_tensors=True)
        outputs.append(result.outputs[0])
        for op in graph.operators:
            kernel = _LINEAR.get(op.name)
            if kernel is None:
                continue
            tensors = [graph.tensors[i] for i in op.inputs if i >= 0] + [graph.tensors[i] for i in op.outputs]
            operands = [np.abs(result.tensors[i].astype(np.int64)) if i in result.tensors
                        else np.abs(graph.tensors[i].data.astype(np.int64)) for i in op.inputs if i >= 0]
            bound = kernel(op, tensors, operands, lambda acc, n, out, fused: acc)
            peaks[op.index] = max(peaks.get(op.index, 0), int(np.max(bound)))
    found = [Peak(graph.op_label(graph.operators[i]), b) for i, b in sorted(peaks.items())]
    return found, np.concatenate(outputs)
