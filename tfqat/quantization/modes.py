"""Modes a model's quantizers are in while a block runs: collecting ranges (calibration), tracing for export.

A mode is set on the objects of one model (its quantizers and tfqat's own layers) and read when a graph is
traced. Blocks nest: entering a mode twice and leaving once keeps it on, and leaving by an error turns it
off all the same. Another model's quantizers are untouched, so two models can be calibrated and exported
side by side.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator

from tfqat.quantization.tensors import Wrapper, quantized_tensors

COLLECTING_RANGES = "collecting_ranges"
EXPORTING = "exporting"
_ATTRIBUTE = "_tfqat_modes"


def is_in(obj, mode: str) -> bool:
    """Whether `obj` (a quantizer or a layer) is inside a block of this mode."""
    return getattr(obj, _ATTRIBUTE, {}).get(mode, 0) > 0


def collecting_ranges(*targets) -> ContextManager[None]:
    """Within this block, graphs of these models (or quantizers) traced in inference mode widen their
    activation ranges to the data seen: calibration."""
    return _mode(COLLECTING_RANGES, targets)


def tracing_for_export(*targets) -> ContextManager[None]:
    """Within this block, graphs of these models (or quantizers) traced carry plain FakeQuant ops only,
    which the TFLite converter reads."""
    return _mode(EXPORTING, targets)


def _objects(targets) -> list:
    """The quantizers and tfqat layers a mode is set on: a model's, or the objects given."""
    found = []
    for target in targets:
        if hasattr(target, "layers"):  # a model: its quantizers, and its layers (tfqat's Sigmoid, ScalarOp)
            found += [tensor.quantizer for tensor in quantized_tensors(target)]
            found += [layer.layer if isinstance(layer, Wrapper) else layer for layer in _all_layers(target)]
        else:
            found.append(target)
    unique = {id(obj): obj for obj in found}  # a quantizer shared by two tensors counts once
    return list(unique.values())


def _all_layers(model) -> list:
    """The layers of a model and of the models nested in it."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers") and not isinstance(layer, Wrapper):
            found += _all_layers(layer)
    return found


@contextlib.contextmanager
def _mode(mode: str, targets) -> Iterator[None]:
    if not targets:
        raise ValueError(f"{mode} needs the model (or quantizers) it applies to")
    objects = _objects(targets)
    for obj in objects:
        counts = getattr(obj, _ATTRIBUTE, None)
        if counts is None:
            counts = {}
            object.__setattr__(obj, _ATTRIBUTE, counts)  # past Keras' attribute tracking on layers
        counts[mode] = counts.get(mode, 0) + 1
    try:
        yield
    finally:
        for obj in objects:
            getattr(obj, _ATTRIBUTE)[mode] -= 1
