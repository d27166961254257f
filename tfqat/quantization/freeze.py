"""Keeping a TQT model's trained thresholds fixed for the last epochs of QAT, and seeing whether they still move.

While thresholds move, every step can shift a tensor's power-of-two scale and
the weights learn against a grid that is still changing; with the thresholds
held fixed for the last epochs, the weights settle on the grid the model is
exported with (Graffitist and the TQT paper stop adapting the quantization
ranges before the end of training).

A threshold acts on the model only through its power of two, ceil(t): the
forward pass and every weight's gradient see the scale, not t. An epoch in
which no threshold's ceil(t) changed trained the weights exactly as an epoch
with the thresholds frozen would have (`ExponentChanges` counts the changes).
"""

from __future__ import annotations

import numpy as np

from tfqat._keras import keras
from tfqat.quantization.tensors import quantized_tensors

THRESHOLD_SUFFIX = "_log2_threshold"
EXPONENT_CHANGES = "threshold_exponent_changes"  # the epoch's key in the fit's logs and history


def trained_thresholds(model) -> list:
    """(quantized tensor, its log2-threshold variable, the gain that scales it) for every trained threshold of a
    QAT model, each variable once; variable x gain in float32 is the log2-threshold the quantizer reads."""
    found = {}
    for tensor in quantized_tensors(model):
        variable = tensor.variables.get("log2_threshold")
        if variable is not None:
            found.setdefault(id(variable), (tensor, variable, np.float32(tensor.quantizer.threshold_gain)))
    return list(found.values())


def threshold_variables(model) -> list:
    """The trainable log2-threshold variables of a QAT model made with trained_thresholds=True."""
    return [v for v in model.variables if v.name.split(":")[0].endswith(THRESHOLD_SUFFIX)]


class FreezeThresholds(keras.callbacks.Callback):
    """From epoch `from_epoch` (0-based) on, the model's log2-thresholds stay at their values at that epoch's start.

    The optimizer still computes their steps; after every batch they are set back, so the forward pass of
    every later batch, the saved weights and the exported scales use exactly the frozen values. A fit resumed
    by BackupAndRestore freezes at the restored values, which are the ones the interrupted fit had.
    """

    def __init__(self, from_epoch: int):
        super().__init__()
        if not isinstance(from_epoch, int) or isinstance(from_epoch, bool) or from_epoch < 0:
            raise ValueError(f"FreezeThresholds(from_epoch={from_epoch!r}): must be an epoch number, 0 or more")
        self.from_epoch = from_epoch
        self._variables = []
        self._frozen = None

    def set_model(self, model):
        super().set_model(model)
        self._variables = threshold_variables(model)
        if not self._variables:
            raise ValueError(
                f"FreezeThresholds: model '{model.name}' has no trained thresholds to freeze "
                "(quantize it with trained_thresholds=True)"
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._frozen = [v.numpy() for v in self._variables] if epoch >= self.from_epoch else None

    def on_train_batch_end(self, batch, logs=None):
        if self._frozen is not None:
            for variable, value in zip(self._variables, self._frozen):
                variable.assign(value)

    def on_train_end(self, logs=None):
        self._frozen = None


class ExponentChanges(keras.callbacks.Callback):
    """Logs, for every epoch, how many times a trained threshold changed its power of two at a training step.

    After every batch each log2-threshold's ceil (the one the quantizer computes: variable x gain, in float32)
    is compared with its value after the batch before; the epoch's count lands in its logs under
    EXPONENT_CHANGES (so in the History and in a fit's history CSV), 0 when the scales held all epoch. It only
    reads the variables: a fit watched is the fit unwatched, bit for bit. Place it after FreezeThresholds.
    """

    def __init__(self):
        super().__init__()
        self._thresholds = []  # trained_thresholds(model)
        self._exponents = None
        self._changes = 0

    def set_model(self, model):
        super().set_model(model)
        self._thresholds = trained_thresholds(model)
        if not self._thresholds:
            raise ValueError(
                f"ExponentChanges: model '{model.name}' has no trained thresholds "
                "(quantize it with trained_thresholds=True)"
            )

    def _current(self) -> list:
        return [np.ceil(variable.numpy() * gain) for _, variable, gain in self._thresholds]

    def on_epoch_begin(self, epoch, logs=None):
        # At the epoch's start, not the fit's: BackupAndRestore puts an interrupted fit's variables back in its
        # on_train_begin, and a resumed epoch starts from them.
        self._exponents, self._changes = self._current(), 0

    def on_train_batch_end(self, batch, logs=None):
        exponents = self._current()
        self._changes += sum(int(np.count_nonzero(a != b)) for a, b in zip(exponents, self._exponents))
        self._exponents = exponents

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[EXPONENT_CHANGES] = self._changes
