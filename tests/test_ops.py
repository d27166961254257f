"""Tests for tfqat.tflite.ops: the table of int8 TFLite ops is consistent with itself."""

from typing import get_args

import pytest

from tfqat.tflite.ops import OPS, Arithmetic, op_kind


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_row_is_consistent(name):
    kind = OPS[name]
    assert kind.arithmetic in get_args(Arithmetic)
    assert bool(kind.reason) == (kind.arithmetic == "named")  # a named op says why; no other op has a reason
    assert (kind.operands is not None) == (kind.arithmetic == "linear")
    if kind.operands:
        assert len(set(kind.operands)) == 3 and not set(kind.operands) & set(kind.parameters)
    assert not kind.counts_elements or kind.arithmetic == "average"


def test_weights_and_bias_positions():
    assert (op_kind("CONV_2D").weights, op_kind("CONV_2D").bias) == (1, 2)
    assert (op_kind("TRANSPOSE_CONV").weights, op_kind("TRANSPOSE_CONV").bias) == (1, 3)
    assert op_kind("ADD").weights is None and op_kind("ADD").bias is None
    assert op_kind("NOT_AN_OP") is None
