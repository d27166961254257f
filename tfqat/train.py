"""Training with plain `model.fit`: the float transfer learning, and QAT fine-tuning."""

import math
from pathlib import Path
from typing import Optional, Sequence

from tfqat._keras import keras

import tensorflow as tf


class TrainingError(RuntimeError):
    """Training stopped on a problem the user must fix (e.g. the loss became NaN)."""


def cosine_schedule(learning_rate: float, epochs: int, train_ds):
    """Cosine decay from `learning_rate` to 0 over the whole fit (per optimizer step)."""
    steps = int(tf.data.experimental.cardinality(train_ds).numpy())
    if steps <= 0:
        return learning_rate  # unknown or infinite length: keep the rate constant
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, epochs * steps))


def compile_classifier(model, learning_rate) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def fit(
    model,
    train_ds,
    val_ds,
    *,
    epochs: int,
    learning_rate: float,
    backup_dir: Optional[Path] = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 1,
):
    """`model.fit` with a cosine-decayed Adam, resume-on-restart (BackupAndRestore) and a clear stop on NaN.

    An interrupted fit restarts from its last finished epoch when called again
    with the same `backup_dir`; the backup is removed when the fit completes.
    """
    compile_classifier(model, cosine_schedule(learning_rate, epochs, train_ds))
    last_good = _LastGoodWeights()
    all_callbacks = [last_good, keras.callbacks.TerminateOnNaN(), *callbacks]
    if backup_dir is not None:
        all_callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir)))
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=all_callbacks, verbose=verbose)
    losses = history.history.get("loss", [])
    if any(not math.isfinite(loss) for loss in losses) or not _finite(model):
        model.set_weights(last_good.weights)
        kept = "the weights from before the first bad epoch are restored in the model"
        if backup_dir is not None:
            path = Path(backup_dir) / "last_good.weights.h5"
            path.parent.mkdir(parents=True, exist_ok=True)
            model.save_weights(str(path))
            kept += f" and saved to {path}"
        msg = (
            f"training of '{model.name}' stopped at epoch {last_good.epoch + 1}: the loss or the weights became "
            f"NaN/inf (check the data for NaN/inf and lower the learning rate); {kept}"
        )
        raise TrainingError(msg)
    return history


def _finite(model) -> bool:
    return all(bool(tf.reduce_all(tf.math.is_finite(w))) for w in model.weights if w.dtype.is_floating)


class _LastGoodWeights(keras.callbacks.Callback):
    """Keeps a copy of the weights after each epoch that ended with finite weights."""

    def on_train_begin(self, logs=None):
        self.weights, self.epoch = self.model.get_weights(), 0

    def on_epoch_end(self, epoch, logs=None):
        if _finite(self.model):
            self.weights, self.epoch = self.model.get_weights(), epoch + 1


def unfreeze(model) -> None:
    """Make every layer trainable except BatchNormalization, which stays on its statistics.

    Used for fine-tuning and for every model that is quantized, so that QAT trains
    the same layers whether the float model was just trained or loaded back.
    """
    model.trainable = True
    for layer in model.submodules:
        # BN stays frozen on ImageNet statistics: small batches would make them noisy.
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def train_float(
    model,
    base,
    train_ds,
    val_ds,
    *,
    head_epochs: int,
    fine_tune_epochs: int,
    head_learning_rate: float = 1e-3,
    fine_tune_learning_rate: float = 1e-5,
    backup_dir: Optional[Path] = None,
    verbose: int = 1,
):
    """Transfer learning in two phases: the new head alone, then the whole network at a small rate."""
    histories = {}
    base.trainable = False
    if head_epochs:
        histories["head"] = fit(
            model, train_ds, val_ds, epochs=head_epochs, learning_rate=head_learning_rate,
            backup_dir=backup_dir / "head" if backup_dir else None, verbose=verbose,
        )
    if fine_tune_epochs:
        unfreeze(model)
        histories["fine_tune"] = fit(
            model, train_ds, val_ds, epochs=fine_tune_epochs, learning_rate=fine_tune_learning_rate,
            backup_dir=backup_dir / "fine_tune" if backup_dir else None, verbose=verbose,
        )
    return histories
