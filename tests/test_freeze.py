"""Tests for tfqat.quantization.freeze: trained thresholds held fixed for the last epochs of QAT, and the count
of their power-of-two changes that says when freezing them changes nothing."""

from tfqat._keras import keras

import numpy as np
import pytest

import tfqat
from tfqat.quantization.freeze import EXPONENT_CHANGES, ExponentChanges, FreezeThresholds, threshold_variables
from tfqat.quantization.freeze import trained_thresholds
from test_thresholds import block_model, images


def _calibrated(trained_thresholds=True, learning_rate=1e-2):
    qat = tfqat.quantize_model(block_model(), trained_thresholds=trained_thresholds)
    tfqat.calibrate(qat, images(32, 1))
    qat.compile(keras.optimizers.Adam(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
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


def test_exponent_changes_counts_every_step_at_which_a_thresholds_power_of_two_changed():
    qat = _calibrated()
    [(variable, gain)] = [(v, gain) for _, v, gain in trained_thresholds(qat) if v.shape.rank == 0][:1]
    watch = ExponentChanges()
    watch.set_model(qat)
    variable.assign(2.5 / gain)
    watch.on_epoch_begin(0)
    for log2_threshold in (2.9, 3.2, 3.2, 2.6, 2.1):  # ceil 3 (as at 2.5), 4, 4, 3, 3: 2 changes
        variable.assign(log2_threshold / gain)
        watch.on_train_batch_end(0)
    logs = {"loss": 0.5}
    watch.on_epoch_end(0, logs)
    assert logs == {"loss": 0.5, EXPONENT_CHANGES: 2}
    watch.on_epoch_begin(1)  # a new epoch counts afresh
    watch.on_train_batch_end(0)
    watch.on_epoch_end(1, logs)
    assert logs[EXPONENT_CHANGES] == 0


def _fit(learning_rate, *callbacks):
    qat = _calibrated(learning_rate=learning_rate)
    x, y = images(48, 2), np.arange(48) % 5
    history = qat.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=list(callbacks))
    return qat, history.history.get(EXPONENT_CHANGES)


def _others(qat):
    frozen = {id(v) for v in threshold_variables(qat)}
    return [v.numpy() for v in qat.variables if id(v) not in frozen]


def test_a_watched_fit_is_the_fit_and_with_no_change_counted_the_frozen_fit_trains_the_same_weights():
    """The premise of taking an unfrozen fit for a frozen one (tfqat.flowers.pipeline.Run.fit)."""
    watched, changes = _fit(1e-5, ExponentChanges())
    assert changes == [0, 0]  # steps of about 1e-5 * gain: no threshold leaves its bin
    unwatched, _ = _fit(1e-5)
    for a, b in zip(watched.get_weights(), unwatched.get_weights()):
        np.testing.assert_array_equal(a, b)
    frozen, frozen_changes = _fit(1e-5, FreezeThresholds(0), ExponentChanges())
    assert frozen_changes == [0, 0]
    for a, b in zip(_others(watched), _others(frozen)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(threshold_variables(watched), threshold_variables(frozen)))  # they did move


def test_with_changes_counted_the_frozen_fit_trains_other_weights():
    watched, changes = _fit(1e-2, ExponentChanges())
    assert changes[0] > 0
    frozen, _ = _fit(1e-2, FreezeThresholds(0), ExponentChanges())
    assert any(not np.array_equal(a, b) for a, b in zip(_others(watched), _others(frozen)))


def test_exponent_changes_on_a_model_without_trained_thresholds_is_a_clear_error():
    qat = _calibrated(trained_thresholds=False)
    with pytest.raises(ValueError, match="ExponentChanges.*no trained thresholds"):
        qat.fit(images(16, 2), np.arange(16) % 5, epochs=1, verbose=0, callbacks=[ExponentChanges()])
