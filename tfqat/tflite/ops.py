"""What tfqat knows about each int8 TFLite op, as data: one row per op that the verifier and the debugger read.

An integer kernel rescales its int32 accumulator (or its input) to the output
scale by a real multiplier; the row says which formula gives it (`Arithmetic`),
which operands are the input, weights and bias of ops that have them, and which
operands are parameters (shapes, axes, paddings, indices) rather than data. Ops
whose arithmetic is not a rescale at all (lookup tables, fixed-point
polynomials) are named with the reason. An op without a row is unknown: the
verifier cannot confirm it is shift-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

Arithmetic = Literal["linear", "product", "rescale", "average", "named"]
"""How an op requantizes:
  linear: input * weights per output channel, multiplier s_in * s_w[c] / s_out;
  product: two quantized inputs multiplied, s_a * s_b / s_out;
  rescale: each input rescaled to the output, s_in / s_out (many ops keep the input's scale, a multiplier of 1);
  average: a rescale s_in / s_out, then a division by the number of averaged elements;
  named: not a rescale at all; the row's `reason` says what it is instead.
"""


@dataclass(frozen=True)
class OpKind:
    """One TFLite builtin op's int8 arithmetic.

    Attributes:
      arithmetic: how the op requantizes (see `Arithmetic`).
      operands: (input, weights, bias) operand positions of a linear op.
      parameters: operand positions holding shapes, axes, paddings or indices, not data.
      reason: why a named op is not a shift.
      counts_elements: an averaging op that divides by the number of elements it averages, a shift
        when that is a power of two (MEAN); otherwise it divides by its window size (AVERAGE_POOL_2D).
    """

    arithmetic: Arithmetic
    operands: Optional[tuple[int, int, int]] = None
    parameters: tuple[int, ...] = ()
    reason: str = ""
    counts_elements: bool = False

    @property
    def weights(self) -> Optional[int]:
        """The operand position of the weights, or None for an op without weights."""
        return self.operands[1] if self.operands else None

    @property
    def bias(self) -> Optional[int]:
        """The operand position of the bias, or None for an op without one."""
        return self.operands[2] if self.operands else None


_LINEAR = OpKind("linear", operands=(0, 1, 2))
_RESCALE = OpKind("rescale")
_LOOKUP = OpKind("named", reason="computed with a lookup table")


def _rescale(*parameters: int) -> OpKind:
    return OpKind("rescale", parameters=parameters)


def _named(reason: str, *parameters: int) -> OpKind:
    return OpKind("named", parameters=parameters, reason=reason)


OPS: dict[str, OpKind] = {
    "CONV_2D": _LINEAR,
    "DEPTHWISE_CONV_2D": _LINEAR,
    "FULLY_CONNECTED": _LINEAR,
    "TRANSPOSE_CONV": OpKind("linear", operands=(2, 1, 3), parameters=(0,)),  # [output_shape, weights, input, bias]
    "MUL": OpKind("product"),
    "BATCH_MATMUL": OpKind("product"),
    "ADD": _RESCALE,
    "SUB": _RESCALE,
    "CONCATENATION": _RESCALE,
    "PACK": _RESCALE,
    "UNPACK": _RESCALE,
    "SPLIT": _rescale(0),
    "SPLIT_V": _rescale(1, 2),
    "PAD": _rescale(1),
    "PADV2": _rescale(1),
    "MIRROR_PAD": _rescale(1),
    "RESHAPE": _rescale(1),
    "SQUEEZE": _RESCALE,
    "EXPAND_DIMS": _rescale(1),
    "TRANSPOSE": _rescale(1),
    "STRIDED_SLICE": _rescale(1, 2, 3),
    "SLICE": _rescale(1, 2),
    "GATHER": _rescale(1),
    "TILE": _rescale(1),
    "BROADCAST_TO": _rescale(1),
    "SPACE_TO_DEPTH": _RESCALE,
    "DEPTH_TO_SPACE": _RESCALE,
    "SPACE_TO_BATCH_ND": _rescale(1, 2),
    "BATCH_TO_SPACE_ND": _rescale(1, 2),
    "RESIZE_NEAREST_NEIGHBOR": _rescale(1),
    "MAX_POOL_2D": _RESCALE,
    "REDUCE_MAX": _rescale(1),
    "REDUCE_MIN": _rescale(1),
    "MAXIMUM": _RESCALE,
    "MINIMUM": _RESCALE,
    "SUM": _rescale(1),
    "RELU": _RESCALE,
    "RELU6": _RESCALE,
    "RELU_N1_TO_1": _RESCALE,
    "RELU_0_TO_1": _RESCALE,
    "ABS": _RESCALE,
    "NEG": _RESCALE,
    "QUANTIZE": _RESCALE,
    "DEQUANTIZE": _RESCALE,
    "MEAN": OpKind("average", parameters=(1,), counts_elements=True),
    "AVERAGE_POOL_2D": OpKind("average"),
    "SOFTMAX": _LOOKUP,
    "LOGISTIC": _LOOKUP,
    "TANH": _LOOKUP,
    "HARD_SWISH": _named("a fixed-point polynomial, not a single rescale"),
    "ELU": _LOOKUP,
    "GELU": _LOOKUP,
    "EXP": _LOOKUP,
    "LOG": _LOOKUP,
    "RSQRT": _named("a fixed-point inverse square root"),
    "SQRT": _named("a fixed-point square root"),
    "L2_NORMALIZATION": _named("divides by the vector norm"),
    "LEAKY_RELU": _named("multiplies negative inputs by alpha, which LiteRT does not expose"),
    "RESIZE_BILINEAR": _named("interpolates with fractional weights", 1),
}


def op_kind(name: str) -> Optional[OpKind]:
    """The row of a TFLite op name, or None for an op tfqat does not know."""
    return OPS.get(name)
