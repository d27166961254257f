"""Keeping a TQT model's trained thresholds fixed for the last epochs of QAT.

While thresholds move, every step can shift a tensor's power-of-two scale and
the weights learn against a grid that is still changing; with the thresholds
held fixed for the last epochs, the weights settle on the grid the model is
exported with (Graffitist and the TQT paper stop adapting the quantization
ranges before the end of training).
"""

from __future__ import annotations

from tfqat._keras import keras

THRESHOLD_SUFFIX = "_log2_threshold"


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
