"""Checks that a TFLite model is fully int8 with power-of-two scales, so every requantization is a shift.

An integer kernel rescales its int32 accumulator by a real multiplier such as
input_scale * weight_scale / output_scale; when every scale is an exact power
of two that multiplier is 2**k and the rescale is a shift. The checks read
only the flatbuffer's tensors and ops (no inference), so they take well under a
second even for a 224-px MobileNetV2.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Iterable, Literal

import numpy as np

from tfqat.tflite.litert import load_interpreter
from tfqat.tflite.ops import OpKind, op_kind
from tfqat.quantization.pow2 import is_power_of_two  # exact: frexp mantissa == 0.5

Role = Literal["input", "output", "activation", "weight", "bias", "other"]

# An int8 activation is signed fixed point, [-128, 127] * 2**k with zero point 0, or unsigned,
# [0, 255] * 2**k with zero point -128 (ReLU outputs with unsigned_activations, softmax/sigmoid
# outputs). Either offset is an integer, so requantization stays a shift.
ACTIVATION_ZERO_POINTS = (0, -128)

_SUMMARY_FAILURE_LIMIT = 25


@dataclass(frozen=True)
class TensorReport:
    """One tensor: its role in the graph and its quantization (empty scales: not quantized)."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    role: Role
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    quantized_dimension: int


@dataclass(frozen=True)
class OpReport:
    """One op: its requantization multipliers (per channel for conv-like ops) and verdict.

    status is "shift", "not a shift", "exception" (named, inherently not a
    shift), "unknown op" or "not quantized" (a float operand, reported per tensor).
    """

    index: int
    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    multipliers: tuple[float, ...]
    status: str
    note: str


@dataclass(frozen=True)
class VerificationReport:
    """The verdict on one model.

    failures: one line per failed check; the model passes when there are none.
    exceptions: one line per op that is inherently not a shift (MEAN over a
      non-power-of-two count, lookup-table activations); listed, not failures.
    """

    source: str
    tensors: tuple[TensorReport, ...]
    ops: tuple[OpReport, ...]
    failures: tuple[str, ...]
    exceptions: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self, verbose: bool = False) -> str:
        """Readable text: verdict, counts, named exceptions, failures (and the op table if verbose)."""
        return _summary(self, verbose)

    def to_dict(self) -> dict:
        return {"source": self.source, "passed": self.passed, **asdict(self)}


def verify_tflite(model: str | os.PathLike | bytes) -> VerificationReport:
    """Checks every tensor and op of a TFLite model for shift-only int8 arithmetic.

    Raises:
      TFLiteModelError: the file is missing or is not a TFLite model.
    """
    source = "<bytes>" if isinstance(model, (bytes, bytearray, memoryview)) else os.fspath(model)
    interpreter = load_interpreter(model)
    report = report_from_details(
        interpreter.get_tensor_details(),
        interpreter._get_ops_details(),  # noqa: SLF001  (LiteRT's only op listing)
        [d["index"] for d in interpreter.get_input_details()],
        [d["index"] for d in interpreter.get_output_details()],
        source=source,
    )
    if interpreter.num_subgraphs() > 1:
        line = f"the model has {interpreter.num_subgraphs()} subgraphs; only single-graph models can be verified"
        report = VerificationReport(source, report.tensors, report.ops, (line, *report.failures), report.exceptions)
    return report


def report_from_details(
    tensor_details: list[dict],
    op_details: list[dict],
    input_indices: Iterable[int],
    output_indices: Iterable[int],
    *,
    source: str = "",
) -> VerificationReport:
    """Builds the report from LiteRT's tensor and op detail dicts (testable without a model)."""
    ops = [_Op(int(d["index"]), str(d["op_name"]), _indices(d["inputs"]), _indices(d["outputs"])) for d in op_details]
    roles = _roles(tensor_details, ops, set(input_indices), set(output_indices))
    tensors = {int(d["index"]): _tensor_report(d, roles.get(int(d["index"]), "other")) for d in tensor_details}
    failures = [line for t in tensors.values() for line in _tensor_failures(t)]
    exceptions, op_reports = [], []
    for op in ops:
        op_report, op_failures, exception = _check_op(op, tensors)
        op_reports.append(op_report)
        failures += op_failures
        exceptions += [exception] if exception else []
    return VerificationReport(source, tuple(tensors.values()), tuple(op_reports), tuple(failures), tuple(exceptions))


@dataclass(frozen=True)
class _Op:
    index: int
    name: str
    inputs: tuple[int, ...]  # -1 marks an omitted optional input (e.g. no bias)
    outputs: tuple[int, ...]


def _indices(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _roles(tensor_details, ops: list[_Op], inputs: set[int], outputs: set[int]) -> dict[int, Role]:
    dtypes = {int(d["index"]): np.dtype(d["dtype"]).name for d in tensor_details}
    quantized = {int(d["index"]) for d in tensor_details if len(d["quantization_parameters"]["scales"])}
    produced = {i for op in ops for i in op.outputs}
    roles: dict[int, Role] = {}
    for op in ops:
        for position, index in enumerate(op.inputs):
            if index >= 0 and index not in produced and index not in inputs and index not in roles:
                roles[index] = _constant_role(op.name, position, dtypes.get(index, ""), index in quantized)
    roles.update({i: "activation" for i in produced})
    roles.update({i: "input" for i in inputs})
    roles.update({i: "output" for i in outputs})
    return roles


def _constant_role(op: str, position: int, dtype: str, quantized: bool) -> Role:
    kind = op_kind(op)
    if kind is not None and position == kind.weights:
        return "weight"
    if kind is not None and position == kind.bias:
        return "bias"
    if kind is not None and position in kind.parameters:
        return "other"
    # An unquantized integer constant of an op not in the table is a shape or
    # axis parameter, not data.
    if dtype in ("int32", "int64", "bool") and not quantized:
        return "other"
    return "weight"


def _tensor_report(details: dict, role: Role) -> TensorReport:
    params = details["quantization_parameters"]
    return TensorReport(
        index=int(details["index"]),
        name=str(details["name"]),
        dtype=np.dtype(details["dtype"]).name,
        shape=tuple(int(d) for d in details["shape_signature"]),
        role=role,
        scales=tuple(float(s) for s in params["scales"]),
        zero_points=tuple(int(z) for z in params["zero_points"]),
        quantized_dimension=int(params["quantized_dimension"]),
    )


def _short(name: str, width: int = 48) -> str:
    # Converter names join every fused TF op with ';'; the first names the layer.
    first = name.split(";")[0]
    return first if len(first) <= width else "..." + first[-(width - 3):]


def _label(t: TensorReport) -> str:
    return f"tensor {t.index} '{_short(t.name)}' ({t.role})"


def _log2(value: float) -> str:
    return f"2^{math.log2(value):.3f}" if value > 0 else "non-positive"


def _tensor_failures(t: TensorReport) -> list[str]:
    if t.role == "other":
        return []
    expected = "int32" if t.role == "bias" else "int8"
    if t.dtype != expected:
        why = "biases must be int32" if t.role == "bias" else "the model is not fully int8"
        return [f"{_label(t)} is {t.dtype}: {why}"]
    if not t.scales:
        return [f"{_label(t)} is {t.dtype} but has no quantization parameters"]
    failures = []
    bad = [c for c, s in enumerate(t.scales) if not is_power_of_two(s)]
    if len(t.scales) == 1 and bad:
        failures.append(f"{_label(t)} has scale {t.scales[0]:.6g} = {_log2(t.scales[0])}, not a power of two")
    elif bad:
        c = bad[0]
        failures.append(
            f"{_label(t)} has {len(bad)} of {len(t.scales)} per-channel scales that are not powers of two "
            f"(channel {c}: {t.scales[c]:.6g} = {_log2(t.scales[c])})"
        )
    nonzero = sorted({z for z in t.zero_points if z != 0})
    if t.role in ("weight", "bias") and nonzero:
        failures.append(f"{_label(t)} has zero point(s) {nonzero[:4]}: {t.role}s must have zero point 0")
    other = sorted({z for z in t.zero_points if z not in ACTIVATION_ZERO_POINTS})
    if t.role in ("input", "output", "activation") and other:
        failures.append(
            f"{_label(t)} has zero point(s) {other[:4]}: fixed-point activations have zero point 0 "
            "(signed, [-128, 127] * 2^k) or -128 (unsigned, [0, 255] * 2^k)"
        )
    return failures


def _check_op(op: _Op, tensors: dict[int, TensorReport]) -> tuple[OpReport, list[str], str | None]:
    """Returns the op's report, its failure lines and its named exception (if any)."""
    out = tensors[op.outputs[0]] if op.outputs else None
    label = f"op {op.index} {op.name} ('{_short(out.name) if out else ''}')"

    def report(multipliers=(), status="shift", note=""):
        return OpReport(op.index, op.name, op.inputs, op.outputs, tuple(multipliers), status, note)

    kind = op_kind(op.name)
    if kind is not None and kind.arithmetic == "named":
        return report(status="exception", note=kind.reason), [], f"{label}: {kind.reason}, not a shift"
    if kind is not None and kind.operands:
        x, w, b = (op.inputs[p] if p < len(op.inputs) else -1 for p in kind.operands)
        data = [tensors[x], tensors[w]]
    else:
        skip = kind.parameters if kind is not None else ()
        data = [tensors[i] for p, i in enumerate(op.inputs) if i >= 0 and p not in skip]
    outputs = [tensors[i] for i in op.outputs]
    if not data or not outputs or any(not t.scales for t in data + outputs):
        return report(status="not quantized", note="float operands are reported per tensor"), [], None
    multipliers = _multipliers(kind, data, outputs)
    if multipliers is None:
        line = f"{label}: tfqat does not know this op's arithmetic, so cannot confirm it is shift-only"
        return report(status="unknown op"), [line], None
    failures = []
    if kind.operands and b >= 0 and tensors[b].scales:
        failures += _bias_failures(label, tensors[b], data[0].scales[0], np.asarray(data[1].scales))
    bad = [m for m in multipliers if not is_power_of_two(m)]
    if bad:
        which = f"{len(bad)} of {len(multipliers)} multipliers" if len(multipliers) > 1 else "multiplier"
        failures.append(f"{label}: requantization {which} not a power of two (e.g. {bad[0]:.6g} = {_log2(bad[0])})")
    note, exception = "", None
    if kind.arithmetic == "average":
        count = _averaged_count(op, tensors)
        if kind.counts_elements and is_power_of_two(count):
            note = f"divides by {count}, a power of two"
        else:
            note = f"divides by {count} averaged elements" if kind.counts_elements else "divides by its window size"
            exception = f"{label}: {note}, not a shift"
    status = "not a shift" if failures else ("exception" if exception else "shift")
    return report(multipliers, status, note), failures, exception


def _multipliers(kind: OpKind | None, data: list[TensorReport], outputs: list[TensorReport]) -> list[float] | None:
    """The real multipliers the integer kernel applies; None for an op not in the table."""
    if kind is None:
        return None
    s_out = outputs[0].scales[0]
    if kind.arithmetic == "linear":
        s_in, s_w = data[0].scales[0], np.asarray(data[1].scales, np.float64)
        return [float(m) for m in s_in * s_w / s_out]
    if kind.arithmetic == "product":
        return [data[0].scales[0] * data[1].scales[0] / s_out]
    if kind.arithmetic in ("rescale", "average"):
        return [t.scales[0] / o.scales[0] for t in data for o in outputs]
    return None


def _averaged_count(op: _Op, tensors: dict[int, TensorReport]) -> int:
    # Shapes are signatures; -1 marks a resizable (batch) dimension, equal on both sides.
    size_in = math.prod(max(d, 1) for d in tensors[op.inputs[0]].shape)
    size_out = math.prod(max(d, 1) for d in tensors[op.outputs[0]].shape)
    return size_in // size_out


def _bias_failures(label: str, bias: TensorReport, s_in: float, s_w: np.ndarray) -> list[str]:
    # The converter stores float32(s_in * s_w); compare to float32 precision.
    expected = np.broadcast_to(np.float32(s_in) * s_w.astype(np.float32), (len(bias.scales),))
    for c, (actual, wanted) in enumerate(zip(bias.scales, expected)):
        if not math.isclose(actual, float(wanted), rel_tol=1e-6):
            return [
                f"{label}: bias scale {actual:.6g} != input scale x weight scale {float(wanted):.6g}"
                + (f" (channel {c})" if len(bias.scales) > 1 else "")
            ]
    return []


def _format_multipliers(op: OpReport) -> str:
    multipliers = op.multipliers
    if not multipliers:
        return "-"

    def one(m: float) -> str:
        return f"2^{int(math.log2(m))}" if is_power_of_two(m) else f"{m:.4g}"

    low, high = min(multipliers), max(multipliers)
    text = one(low) if low == high else f"{one(low)}..{one(high)}"
    kind = op_kind(op.op)
    unit = "channels" if kind is not None and kind.arithmetic == "linear" else "inputs"
    return text + (f" ({len(multipliers)} {unit})" if len(multipliers) > 1 else "")


def _summary(report: VerificationReport, verbose: bool) -> str:
    roles: dict[str, int] = {}
    for t in report.tensors:
        roles[t.role] = roles.get(t.role, 0) + 1
    op_counts: dict[str, int] = {}
    for op in report.ops:
        op_counts[op.op] = op_counts.get(op.op, 0) + 1
    shifts = sum(op.status == "shift" for op in report.ops)
    if report.passed:
        named = f" apart from {len(report.exceptions)} named exception(s)" if report.exceptions else ""
        verdict = f"PASSED: fully int8, power-of-two scales, every requantization a shift{named}"
    else:
        verdict = f"FAILED: {len(report.failures)} check(s) failed"
    lines = [
        f"{report.source}: {verdict}",
        f"  tensors: {len(report.tensors)} (" + ", ".join(f"{r} {n}" for r, n in sorted(roles.items())) + ")",
        f"  ops: {len(report.ops)} (" + ", ".join(f"{o} {n}" for o, n in op_counts.items()) + ")",
        f"  requantizations that are shifts: {shifts} of {len(report.ops)} ops",
    ]
    if report.exceptions:
        lines.append(f"  named exceptions ({len(report.exceptions)}):")
        lines += [f"    {line}" for line in report.exceptions]
    if report.failures:
        lines.append(f"  failures ({len(report.failures)}):")
        shown = report.failures if verbose else report.failures[:_SUMMARY_FAILURE_LIMIT]
        lines += [f"    {line}" for line in shown]
        if len(shown) < len(report.failures):
            lines.append(f"    ... and {len(report.failures) - len(shown)} more (use --verbose or --json)")
    if verbose:
        lines.append("  ops:")
        lines.append(f"    {'#':>4}  {'op':<20} {'output':<48} {'multiplier':<24} status")
        for op in report.ops:
            out = next((t for t in report.tensors if op.outputs and t.index == op.outputs[0]), None)
            name = _short(out.name) if out else "-"
            status = f"{op.status} ({op.note})" if op.note else op.status
            lines.append(f"    {op.index:>4}  {op.op:<20} {name:<48} {_format_multipliers(op):<24} {status}")
    return "\n".join(lines)
