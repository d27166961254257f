"""TensorFlow Lite Micro: an int8 .tflite as C source for a firmware build, with the tensor arena it needs.

`export_micro` writes three files for a model named `name`:
  <name>_data.h  C and C++: declares `<name>_tflite` and `<name>_tflite_len`, defines <NAME>_ARENA_SIZE;
  <name>_data.c  the flatbuffer as a 16-byte aligned const byte array (in flash on a microcontroller);
  <name>_ops.h   C++ only: `<name>_register_ops(resolver)`, one MicroMutableOpResolver Add* call per op
                 the model uses, and <NAME>_OP_COUNT for the resolver's template argument.

The text is rendered by `tfqat.tflite.c_source` (which also says how the array is aligned, and why so).

The arena is measured, not estimated: the smallest size with which TFLite Micro's own interpreter (the
Python build of tflite-micro, reference kernels, greedy memory planner as in firmware) allocates and
runs the model, found by bisection, plus ARENA_MARGIN. The probes run in child processes because the
Python build crashes (SIGSEGV) when an arena is too small, instead of raising.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ai_edge_litert import schema_py_generated as schema

from tfqat.files import write_atomic
from tfqat.tflite import c_source
from tfqat.tflite.litert import model_label, read_model_bytes

# The margin over the measured arena. It covers an arena that is not 16-byte aligned (TFLite Micro
# aligns its start up, losing up to 15 bytes) and another TFLite Micro version's bookkeeping structs.
# A 32-bit target needs less than this 64-bit host for the same structs (half-size pointers), and the
# Python build's RecordingMicroAllocator keeps records a firmware MicroAllocator does not, so the
# measurement errs high there. Not covered: optimized kernels (CMSIS-NN, ESP-NN, Xtensa) may request
# scratch buffers the reference kernels do not; measure those on the target (MicroInterpreter's
# arena_used_bytes()).
ARENA_MARGIN = 1024
ALIGNMENT = 16

# TFLite builtin ops with a TFLite Micro kernel (MicroMutableOpResolver, tflite-micro 2026-08). The
# method is "Add" + the op's words capitalized (ADD_N: AddAddN) except for the spellings below.
MICRO_OPS = (
    "ABS", "ADD", "ADD_N", "ARG_MAX", "ARG_MIN", "ASSIGN_VARIABLE", "AVERAGE_POOL_2D", "BATCH_MATMUL",
    "BATCH_TO_SPACE_ND", "BROADCAST_ARGS", "BROADCAST_TO", "CALL_ONCE", "CAST", "CEIL", "CONCATENATION",
    "CONV_2D", "COS", "CUMSUM", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DIV",
    "DYNAMIC_UPDATE_SLICE", "ELU", "EMBEDDING_LOOKUP", "EQUAL", "EXP", "EXPAND_DIMS", "FILL", "FLOOR",
    "FLOOR_DIV", "FLOOR_MOD", "FULLY_CONNECTED", "GATHER", "GATHER_ND", "GREATER", "GREATER_EQUAL",
    "HARD_SWISH", "IF", "L2_NORMALIZATION", "L2_POOL_2D", "LEAKY_RELU", "LESS", "LESS_EQUAL", "LOG",
    "LOGICAL_AND", "LOGICAL_NOT", "LOGICAL_OR", "LOGISTIC", "LOG_SOFTMAX", "MAXIMUM", "MAX_POOL_2D", "MEAN",
    "MINIMUM", "MIRROR_PAD", "MUL", "NEG", "NOT_EQUAL", "PACK", "PAD", "PADV2", "PRELU", "QUANTIZE",
    "READ_VARIABLE", "REDUCE_ALL", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "REVERSE_V2", "ROUND", "RSQRT", "SELECT_V2", "SHAPE", "SIN", "SLICE", "SOFTMAX",
    "SPACE_TO_BATCH_ND", "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQRT", "SQUARE", "SQUARED_DIFFERENCE",
    "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SVDF", "TANH", "TRANSPOSE", "TRANSPOSE_CONV", "UNPACK",
    "UNIDIRECTIONAL_SEQUENCE_LSTM", "VAR_HANDLE", "WHILE", "ZEROS_LIKE",
)
_METHOD_SPELLINGS = {
    "AVERAGE_POOL_2D": "AddAveragePool2D", "BATCH_MATMUL": "AddBatchMatMul", "CONV_2D": "AddConv2D",
    "CUMSUM": "AddCumSum", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "L2_POOL_2D": "AddL2Pool2D",
    "MAX_POOL_2D": "AddMaxPool2D", "PADV2": "AddPadV2", "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
}

_OPERATOR_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
_TYPE_NAMES = {code: name.lower() for name, code in vars(schema.TensorType).items() if not name.startswith("_")}
# Constants may also be int32/int64: biases, and shapes, axes and paddings that are parameters, not data.
_CONSTANT_TYPES = (schema.TensorType.INT8, schema.TensorType.INT32, schema.TensorType.INT64)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class MicroExportError(ValueError):
    """A model TFLite Micro export refuses, explained in one sentence."""


@dataclass(frozen=True)
class MicroExport:
    """What `export_micro` wrote: the files, the array's length, the ops and the arena."""

    header: Path
    source: Path
    ops_header: Path
    length: int
    ops: tuple[str, ...]
    arena_measured: int
    arena_size: int

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return self.header, self.source, self.ops_header

    @property
    def methods(self) -> tuple[str, ...]:
        """The MicroMutableOpResolver methods that register the ops, in the same order."""
        return tuple(resolver_method(op) for op in self.ops)


def resolver_method(op: str) -> str:
    """TFLite Micro's MicroMutableOpResolver method that registers a builtin op (CONV_2D: AddConv2D)."""
    if op not in MICRO_OPS:
        raise MicroExportError(f"TFLite Micro has no kernel for the op {op}")
    return _METHOD_SPELLINGS.get(op) or "Add" + "".join(word.capitalize() for word in op.split("_"))


def export_micro(model: str | os.PathLike | bytes, out_dir: str | os.PathLike, *, name: str = "model",
                 margin: int = ARENA_MARGIN) -> MicroExport:
    """Write a fully int8 .tflite as C source for TensorFlow Lite Micro, with its measured tensor arena.

    Args:
      model: the .tflite file or its bytes.
      out_dir: folder for <name>_data.h, <name>_data.c and <name>_ops.h (created if missing).
      name: C identifier prefix of the array, its length and the macros.
      margin: bytes added to the measured arena (see ARENA_MARGIN).

    Raises:
      MicroExportError: the model is not fully int8, or uses an op TFLite Micro has no kernel for.
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"name={name!r} is not valid; use a C identifier (letters, digits, '_'; no leading digit)")
    if not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin={margin!r} is not valid; use a whole number of bytes >= 0")
    content = read_model_bytes(model)
    ops = model_ops(content, model_label(model))
    measured = measure_arena(content)
    arena = _round_up(measured + margin, ALIGNMENT)
    out = Path(out_dir)
    texts = {
        out / f"{name}_data.h": c_source.data_header(name, len(content), ops, measured, margin, arena),
        out / f"{name}_data.c": c_source.data_source(name, content),
        out / f"{name}_ops.h": c_source.ops_header(name, {op: resolver_method(op) for op in ops}),
    }
    for path, text in texts.items():  # everything is computed before the first file is written
        write_atomic(path, text)
    return MicroExport(*texts, length=len(content), ops=ops, arena_measured=measured, arena_size=arena)


def model_ops(content: bytes, label: str = "the model") -> tuple[str, ...]:
    """The builtin ops a fully int8 model's operators use, in first-use order; MicroExportError otherwise."""
    try:
        codes = _operator_codes(content, label)
    except MicroExportError:
        raise
    except Exception:  # noqa: BLE001  (a truncated or corrupt flatbuffer fails anywhere inside)
        raise MicroExportError(f"{label} is a corrupt or truncated TFLite flatbuffer") from None
    ops: list[str] = []
    for number, custom in codes:
        op = _OPERATOR_NAMES.get(number, f"builtin {number}")
        if number == schema.BuiltinOperator.CUSTOM:
            op = f"CUSTOM '{custom}'"
        if op not in MICRO_OPS:
            raise MicroExportError(f"{label} uses the op {op}, which TFLite Micro has no kernel for")
        ops += [op] if op not in ops else []
    return tuple(ops)


def _operator_codes(content: bytes, label: str) -> list[tuple[int, str]]:
    """(builtin number, custom name) of every operator of every subgraph, after checking its tensors."""
    root = schema.Model.GetRootAs(content, 0)
    codes = []
    for g in range(root.SubgraphsLength()):
        graph = root.Subgraphs(g)
        _check_int8(root, graph, label)
        for i in range(graph.OperatorsLength()):
            code = root.OperatorCodes(graph.Operators(i).OpcodeIndex())
            codes.append((max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), (code.CustomCode() or b"").decode()))
    return codes


def _check_int8(root, graph, label: str) -> None:
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        buffer = root.Buffers(tensor.Buffer()) if tensor.Buffer() else None
        constant = buffer is not None and (buffer.DataLength() > 0 or buffer.Offset() > 1)
        if tensor.Type() == schema.TensorType.INT8 or (constant and tensor.Type() in _CONSTANT_TYPES):
            continue
        kind = "constant" if constant else "activation"
        raise MicroExportError(
            f"{label} is not fully int8: {kind} tensor {i} '{(tensor.Name() or b'').decode().split(';')[0]}' is "
            f"{_TYPE_NAMES.get(tensor.Type(), tensor.Type())}; export the model with tfqat.export_tflite"
        )


# A child process: allocate a TFLite Micro interpreter with the given arena and run it once on zeros.
_PROBE = """
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
interpreter = runtime.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2]))
for i in range(int(sys.argv[3])):
    details = interpreter.get_input_details(i)
    interpreter.set_input(np.zeros(details["shape"], details["dtype"]), i)
interpreter.invoke()
print("ok")
"""


def arena_fits(path: str | os.PathLike, size: int, inputs: int = 1) -> bool:
    """Whether TFLite Micro's interpreter allocates and runs the model in an arena of `size` bytes.

    Raises:
      MicroExportError: TFLite Micro fails for another reason than the arena's size (its last line).
    """
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, os.fspath(path), str(size), str(inputs)],
        capture_output=True, text=True, timeout=600,
    )
    if result.returncode == 0 and result.stdout.strip() == "ok":
        return True
    # Too small an arena: TFLM reports "Failed to allocate ..." and then raises or crashes.
    if "failed to allocate" in result.stderr.lower():
        return False
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    raise MicroExportError(f"TFLite Micro cannot run the model: {lines[-1] if lines else f'exit code {result.returncode}'}")


def measure_arena(content: bytes, limit: int = 1 << 30) -> int:
    """The smallest arena, to the byte, with which TFLite Micro's interpreter allocates and runs the model."""
    inputs = schema.Model.GetRootAs(content, 0).Subgraphs(0).InputsLength()
    with tempfile.TemporaryDirectory(prefix="tfqat-micro-") as folder:
        path = Path(folder) / "model.tflite"
        path.write_bytes(content)
        low, high = 0, 16 * 1024  # low never fits, high fits
        while not arena_fits(path, high, inputs):
            if high >= limit:
                raise MicroExportError(f"TFLite Micro cannot allocate the model in an arena of {limit} bytes")
            low, high = high, min(high * 4, limit)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if arena_fits(path, middle, inputs) else (middle, high)
    return high


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step
