"""Training loops: NaN stops clearly with the last good weights kept; an interrupted fit resumes exactly."""

from tfqat._keras import keras

import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.flowers import train


def _tiny_qat_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return tfqat.quantize_model(keras.Model(inputs, keras.layers.Dense(3)(x)))


def _data(count=32, poison=False):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (count, 8, 8, 3)).astype(np.float32)
    if poison:
        images[count // 2 :] = np.nan
    labels = rng.integers(0, 3, count)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)


def test_nan_data_stops_with_a_clear_error_and_keeps_last_good_weights(tmp_path):
    model = _tiny_qat_model()
    train.fit(model, _data(), None, epochs=1, learning_rate=1e-3, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(train.TrainingError, match="NaN/inf") as error:
        train.fit(model, _data(poison=True), None, epochs=2, learning_rate=1e-3, backup_dir=tmp_path, verbose=0)
    assert "last_good.weights.h5" in str(error.value)
    after = model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert (tmp_path / "last_good.weights.h5").is_file()


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_interrupted_fit_resumes_to_the_same_weights(tmp_path):
    reference = _tiny_qat_model()
    train.fit(reference, _data(), None, epochs=4, learning_rate=1e-2, verbose=0)

    model = _tiny_qat_model()
    with pytest.raises(KeyboardInterrupt):
        train.fit(model, _data(), None, epochs=4, learning_rate=1e-2, backup_dir=tmp_path, callbacks=[_Interrupt()], verbose=0)
    resumed = _tiny_qat_model()  # a new process would rebuild the model from scratch
    history = train.fit(resumed, _data(), None, epochs=4, learning_rate=1e-2, backup_dir=tmp_path, verbose=0)
    # The interrupt came before epoch 2 was backed up, so epochs 2-4 run again, from epoch 1's state.
    assert len(history.history["loss"]) == 3
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not any(tmp_path.iterdir())  # the backup is removed once the fit completes


def _contrary_validation():
    """The training images with other labels: the better the fit, the higher its val_loss."""
    images, labels = next(iter(_data(count=32).unbatch().batch(32)))
    return tf.data.Dataset.from_tensor_slices((images, (labels + 1) % 3)).batch(8)


class _EpochWeights(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights, self.val_losses = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())
        self.val_losses.append(logs["val_loss"])


def test_restore_best_ends_on_the_epoch_with_the_lowest_val_loss():
    model, epochs = _tiny_qat_model(), _EpochWeights()
    train.fit(model, _data(), _contrary_validation(), epochs=4, learning_rate=1e-2, restore_best=True,
              callbacks=[epochs], verbose=0)
    best = int(np.argmin(epochs.val_losses))
    assert best < 3, "the val_loss must rise for this test to tell the best epoch from the last"
    for got, want in zip(model.get_weights(), epochs.weights[best]):
        np.testing.assert_array_equal(got, want)  # activation ranges too: they belong to that epoch


def test_without_restore_best_the_last_epoch_stays():
    model, epochs = _tiny_qat_model(), _EpochWeights()
    train.fit(model, _data(), _contrary_validation(), epochs=4, learning_rate=1e-2, callbacks=[epochs], verbose=0)
    for got, want in zip(model.get_weights(), epochs.weights[-1]):
        np.testing.assert_array_equal(got, want)


def test_restore_best_survives_an_interruption(tmp_path):
    reference = _tiny_qat_model()
    train.fit(reference, _data(), _contrary_validation(), epochs=4, learning_rate=1e-2, restore_best=True, verbose=0)

    model = _tiny_qat_model()
    with pytest.raises(KeyboardInterrupt):
        train.fit(model, _data(), _contrary_validation(), epochs=4, learning_rate=1e-2, restore_best=True,
                  backup_dir=tmp_path, callbacks=[_Interrupt()], verbose=0)
    assert (tmp_path / "best" / "best.json").is_file()
    resumed = _tiny_qat_model()
    train.fit(resumed, _data(), _contrary_validation(), epochs=4, learning_rate=1e-2, restore_best=True,
              backup_dir=tmp_path, verbose=0)
    # The best epoch came before the interruption: only the saved copy can bring it back.
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not any(tmp_path.iterdir())


def test_history_csv_logs_every_epoch_and_the_kept_one(tmp_path):
    model, epochs = _tiny_qat_model(), _EpochWeights()
    path = tmp_path / "logs" / "qat.csv"
    train.fit(model, _data(), _contrary_validation(), epochs=4, learning_rate=1e-2, restore_best=True,
              history_csv=path, callbacks=[epochs], verbose=0)
    rows = train.read_history(path)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    np.testing.assert_allclose([row["val_loss"] for row in rows], epochs.val_losses, rtol=1e-6)
    best = int(np.argmin(epochs.val_losses))
    assert best < 3
    assert train.restored_epoch(rows, restore_best=True) == best + 1
    for got, want in zip(model.get_weights(), epochs.weights[best]):
        np.testing.assert_array_equal(got, want)  # the logged choice is the epoch the model really ended on
    assert train.restored_epoch(rows, restore_best=False) == 4
    assert train.restored_epoch([], restore_best=True) is None


def test_history_reads_nan_and_inf_as_none(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("epoch,loss,val_loss\n1,0.5,nan\n2,inf,0.4\n")
    assert train.read_history(path) == [{"epoch": 1, "loss": 0.5, "val_loss": None},
                                        {"epoch": 2, "loss": None, "val_loss": 0.4}]
    # The log itself keeps them as written when later epochs are added.
    log = train._EpochLog(tmp_path / "log.csv")
    log.on_epoch_end(0, {"loss": float("nan"), "val_loss": 0.5})
    log.on_epoch_end(1, {"loss": 0.3, "val_loss": 0.4})
    assert (tmp_path / "log.csv").read_text() == "epoch,loss,val_loss\n1,nan,0.5\n2,0.3,0.4\n"


def test_restored_epoch_follows_the_rule_of_restore_best():
    rows = [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": float("nan")}, {"epoch": 3, "val_loss": 0.4},
            {"epoch": 4, "val_loss": 0.4}, {"epoch": 5}, {"epoch": 6, "val_loss": None}]
    assert train.restored_epoch(rows, restore_best=True) == 3  # NaN and missing values never win; ties keep the first
    assert train.restored_epoch(rows, restore_best=False) == 6


def test_history_survives_an_interruption_and_a_new_fit_replaces_it(tmp_path):
    path = tmp_path / "history.csv"
    reference = _tiny_qat_model()
    train.fit(reference, _data(), None, epochs=4, learning_rate=1e-2, history_csv=tmp_path / "reference.csv", verbose=0)
    model = _tiny_qat_model()
    with pytest.raises(KeyboardInterrupt):
        train.fit(model, _data(), None, epochs=4, learning_rate=1e-2, backup_dir=tmp_path / "backup",
                  history_csv=path, callbacks=[_Interrupt()], verbose=0)
    assert [row["epoch"] for row in train.read_history(path)] == [1]  # epoch 2 was interrupted before its log
    train.fit(_tiny_qat_model(), _data(), None, epochs=4, learning_rate=1e-2, backup_dir=tmp_path / "backup",
              history_csv=path, verbose=0)
    rows, expected = train.read_history(path), train.read_history(tmp_path / "reference.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    for row, want in zip(rows, expected):
        assert row.keys() == want.keys()
        np.testing.assert_allclose([row[k] for k in row], [want[k] for k in row], rtol=1e-5)
    # A fit started afresh (no backup) with fewer epochs leaves only its own epochs in the file.
    train.fit(_tiny_qat_model(), _data(), None, epochs=2, learning_rate=1e-2, history_csv=path, verbose=0)
    assert [row["epoch"] for row in train.read_history(path)] == [1, 2]


def test_restore_best_without_validation_data_is_refused():
    with pytest.raises(ValueError, match="restore_best=True .* pass val_ds"):
        train.fit(_tiny_qat_model(), _data(), None, epochs=1, learning_rate=1e-3, restore_best=True, verbose=0)


def test_cosine_schedule_decays_to_zero():
    schedule = train.cosine_schedule(1e-3, 2, _data())
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(8)) == pytest.approx(0.0, abs=1e-12)


def _tiny_teacher():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x) * 3.0, name="teacher")


def test_distillation_targets_are_the_teachers_probabilities():
    teacher = _tiny_teacher()
    for (images, labels), (same_images, targets) in zip(_data(), train.distillation_targets(_data(), teacher)):
        np.testing.assert_array_equal(images.numpy(), same_images.numpy())
        np.testing.assert_allclose(targets.numpy(), tf.nn.softmax(teacher(images)).numpy(), atol=1e-6)
        np.testing.assert_allclose(targets.numpy().sum(-1), 1.0, atol=1e-6)


def _kl_to_teacher(model, teacher, images):
    p = tf.nn.softmax(teacher(images, training=False))
    return float(tf.reduce_mean(keras.losses.kl_divergence(p, tf.nn.softmax(model(images, training=False)))))


def test_distillation_moves_the_model_towards_a_frozen_teacher():
    model, teacher = _tiny_qat_model(), _tiny_teacher()
    images = np.concatenate([x.numpy() for x, _ in _data()])
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    before = _kl_to_teacher(model, teacher, images)
    history = train.fit(model, _data(), _data(), epochs=20, learning_rate=1e-2, teacher=teacher, verbose=0)
    assert _kl_to_teacher(model, teacher, images) < 0.5 * before
    assert all(np.array_equal(a, b) for a, b in zip(teacher_weights, teacher.get_weights()))
    # Validation scores the model against the labels, not the teacher.
    outputs = model.predict(images, verbose=0)
    labels = np.concatenate([y.numpy() for _, y in _data()])
    assert history.history["val_accuracy"][-1] == pytest.approx(float((outputs.argmax(-1) == labels).mean()))


def test_a_teacher_with_other_outputs_is_refused():
    inputs = keras.Input((8, 8, 3))
    four_classes = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)), name="wrong")
    with pytest.raises(ValueError, match=r"teacher 'wrong' maps .*\(None, 4\).*distillation needs the same"):
        train.fit(_tiny_qat_model(), _data(), None, epochs=1, learning_rate=1e-3, teacher=four_classes, verbose=0)
    with pytest.raises(TypeError, match="teacher must be a Keras model"):
        train.fit(_tiny_qat_model(), _data(), None, epochs=1, learning_rate=1e-3, teacher="float.h5", verbose=0)


def _tiny_classifier():
    """A float classifier with a `base` sub-model, as `models.build_classifier` makes."""
    keras.utils.set_random_seed(0)
    base_inputs = keras.Input((8, 8, 3))
    features = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(base_inputs)))
    base = keras.Model(base_inputs, features, name="base")
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(base(inputs)))
    return keras.Model(inputs, outputs), base


def test_train_float_resumed_inside_fine_tuning_does_not_train_the_head_again(tmp_path, monkeypatch):
    settings = dict(head_epochs=2, fine_tune_epochs=2, head_learning_rate=1e-2, fine_tune_learning_rate=1e-2, verbose=0)
    reference, base = _tiny_classifier()
    train.train_float(reference, base, _data(), None, backup_dir=tmp_path / "reference", **settings)
    assert not [p for p in (tmp_path / "reference").rglob("*") if p.is_file()]  # nothing left to resume

    real_fit, phases = train.fit, []

    def interrupted_fine_tuning(model, *args, **kwargs):
        phases.append(kwargs["learning_rate"] if not phases else "fine_tune")
        if len(phases) == 2:
            raise KeyboardInterrupt  # stopped before fine-tuning finished an epoch
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(train, "fit", interrupted_fine_tuning)
    model, base = _tiny_classifier()
    with pytest.raises(KeyboardInterrupt):
        train.train_float(model, base, _data(), None, backup_dir=tmp_path / "run", **settings)
    assert (tmp_path / "run" / "head.npz").is_file()

    phases.clear()
    monkeypatch.setattr(train, "fit", lambda *a, **k: phases.append(k["epochs"]) or real_fit(*a, **k))
    resumed, base = _tiny_classifier()  # a new process rebuilds the model with an untrained head
    histories = train.train_float(resumed, base, _data(), None, backup_dir=tmp_path / "run", **settings)
    assert list(histories) == ["fine_tune"] and len(phases) == 1
    for a, b in zip(reference.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not (tmp_path / "run" / "head.npz").exists()
