"""TFOpLambda arithmetic with a number (`x + 3.0`, `x * (1.0 / 6.0)`, ...) as tfqat's ScalarOp layer.

Keras records such arithmetic on a symbolic tensor as a TFOpLambda layer; `tf_op_hook` reads its
operands and replaces it with a `tfqat.quantization.layers.ScalarOp`, whose constant the scheme
quantizes at a power of two.
"""

import numbers

import numpy as np

from tfqat.quantization.layers import ScalarOp
from tfqat.graph import functional

# TFOpLambda symbol -> (ScalarOp op, how the constant c enters it for `x op c`)
_SYMBOLS = {
    "__operators__.add": ("add", lambda c: c),
    "math.add": ("add", lambda c: c),
    "math.subtract": ("add", lambda c: -c),
    "math.multiply": ("multiply", lambda c: c),
    "math.truediv": ("multiply", lambda c: 1.0 / c),
    "math.divide": ("multiply", lambda c: 1.0 / c),
}
_COMMUTATIVE = ("__operators__.add", "math.add", "math.multiply")


def _number(value):
    """`value` as a float if it is one number (Python, NumPy, or an eager tensor as `3.0 + x` records it), else None."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if type(value).__name__ == "EagerTensor":
        value = value.numpy()
    if isinstance(value, (np.ndarray, np.generic)) and value.size == 1 and np.issubdtype(value.dtype, np.floating):
        return float(np.reshape(value, ()))
    return None


def scalar_operands(layer, args, kwargs):
    """(tensor, ScalarOp op, constant) when `layer` is a TFOpLambda computing tensor <op> number, else None."""
    if type(layer).__name__ != "TFOpLambda" or layer.symbol not in _SYMBOLS:
        return None
    operands = list(args) + [v for k, v in kwargs.items() if k in ("x", "y")]
    if len(operands) != 2:
        return None
    first, second = operands
    if _number(second) is None and layer.symbol in _COMMUTATIVE:
        first, second = second, first
    constant = _number(second)
    if constant is None or _number(first) is not None or (constant == 0 and layer.symbol in ("math.truediv", "math.divide")):
        return None
    if not getattr(getattr(first, "dtype", None), "is_floating", False):
        return None  # integer arithmetic (shapes, indices) has no int8 form
    op, value = _SYMBOLS[layer.symbol]
    return first, op, value(constant)


def tf_op_hook(layer, args, kwargs):
    """A rebuild hook: a TFOpLambda adding, subtracting, multiplying or dividing by a number becomes a ScalarOp."""
    operands = scalar_operands(layer, args, kwargs)
    if operands is None:
        return None
    tensor, op, value = operands
    with functional.autograph_off():
        return ScalarOp(op, value, name=layer.name)(tensor)
