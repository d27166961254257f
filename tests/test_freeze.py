"""Tests for tfqat.quantization.freeze: trained thresholds held fixed for the last epochs of QAT."""

from tfqat._keras import keras

import numpy as np
import pytest

import tfqat
from tfqat.quantization.freeze import FreezeThresholds, threshold_variables
from test_thresholds import block_model, images


def _calibrated(trained_thresholds=True):
    qat = tfqat.quantize_model(block_model(), trained_thresholds=trained_thresholds)
    tfqat.calibrate(qat, images(32, 1))
    qat.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return qat


class _Snapshots(keras.callbacks.Callback):
    """The thresholds and the other weights at the end of every epoch."""

    def __init__(self):
        super().__init__()
        self.thresholds, self.others = [], []

    def on_epoch_end(self, epoch, logs=None):
        frozen = {id(v) for v in threshold_variables(self.model)}
        self.thresholds.append([v.numpy().copy() for v in threshold_variables(self.model)])
        self.others.append([v.numpy().copy() for v in self.model.trainable_variables if id(v) not in frozen])


def test_thresholds_move_before_the_freeze_and_stay_exactly_fixed_after_it_while_weights_train():
    qat = _calibrated()
    snapshots = _Snapshots()
    x, y = images(48, 2), np.arange(48) % 5
    qat.fit(x, y, batch_size=16, epochs=4, verbose=0, shuffle=False, callbacks=[FreezeThresholds(2), snapshots])
    t, w = snapshots.thresholds, snapshots.others
    assert len(threshold_variables(qat)) > 5
    assert any(not np.array_equal(a, b) for a, b in zip(t[0], t[1]))  # epoch 1 trains them
    for epoch in (2, 3):  # frozen at their values at the start of epoch 2 (the end of epoch 1)
        for before, after in zip(t[1], t[epoch]):
            np.testing.assert_array_equal(before, after)
        assert any(not np.array_equal(a, b) for a, b in zip(w[epoch - 1], w[epoch]))  # the weights still train


def test_freezing_from_epoch_0_keeps_the_calibrated_thresholds():
    qat = _calibrated()
    start = [v.numpy().copy() for v in threshold_variables(qat)]
    qat.fit(images(32, 2), np.arange(32) % 5, batch_size=16, epochs=1, verbose=0, callbacks=[FreezeThresholds(0)])
    for before, variable in zip(start, threshold_variables(qat)):
        np.testing.assert_array_equal(before, variable.numpy())


def test_a_model_without_trained_thresholds_is_a_clear_error():
    qat = _calibrated(trained_thresholds=False)
    with pytest.raises(ValueError, match="no trained thresholds.*trained_thresholds=True"):
        qat.fit(images(16, 2), np.arange(16) % 5, epochs=1, verbose=0, callbacks=[FreezeThresholds(0)])


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_a_bad_epoch_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="from_epoch"):
        FreezeThresholds(bad)
