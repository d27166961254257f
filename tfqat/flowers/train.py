"""Training with plain `model.fit`: the float transfer learning, and QAT fine-tuning."""

import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Optional, Sequence

from tfqat._keras import keras

import numpy as np
import tensorflow as tf

from tfqat.files import write_atomic


FLOAT_PHASES = ("head", "fine_tune")  # the fits of `train_float`, in order; also the names of their logs


class TrainingError(RuntimeError):
    """Training stopped on a problem the user must fix (e.g. the loss became NaN)."""


def cosine_schedule(learning_rate: float, epochs: int, train_ds):
    """Cosine decay from `learning_rate` to 0 over the whole fit (per optimizer step)."""
    steps = int(tf.data.experimental.cardinality(train_ds).numpy())
    if steps <= 0:
        return learning_rate  # unknown or infinite length: keep the rate constant
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, epochs * steps))


def compile_classifier(model, learning_rate, *, soft_targets: bool = False, run_eagerly: bool = False) -> None:
    """Adam and cross-entropy on logits; targets are class indices, or class probabilities with `soft_targets`.

    `run_eagerly` skips tracing the train and test steps: a QAT MobileNetV2 takes 20-30 s to trace, more
    than a handful of eager steps (the quick run's), far less than a real run's hundreds.
    """
    if soft_targets:
        loss, accuracy = keras.losses.CategoricalCrossentropy(from_logits=True), keras.metrics.CategoricalAccuracy
    else:
        loss, accuracy = keras.losses.SparseCategoricalCrossentropy(from_logits=True), keras.metrics.SparseCategoricalAccuracy
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=[accuracy(name="accuracy")],
        run_eagerly=run_eagerly,
    )


def distillation_targets(dataset, teacher):
    """(images, labels) batches -> (images, the teacher's class probabilities for those same images).

    Training a QAT model towards the float model it came from (knowledge
    distillation) gives it the teacher's confidence in every class, a richer
    target than the label. The teacher runs in inference mode on the augmented
    batch, so both models see the same pixels.
    """
    return dataset.map(lambda images, labels: (images, tf.nn.softmax(teacher(images, training=False))))


def _check_teacher(model, teacher) -> int:
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"teacher must be a Keras model, got {type(teacher).__name__}")
    shapes = {"student": (model.input_shape, model.output_shape), "teacher": (teacher.input_shape, teacher.output_shape)}
    if shapes["student"] != shapes["teacher"]:
        msg = (
            f"teacher '{teacher.name}' maps {shapes['teacher'][0]} to {shapes['teacher'][1]} but "
            f"'{model.name}' maps {shapes['student'][0]} to {shapes['student'][1]}; distillation needs the same"
        )
        raise ValueError(msg)
    return int(model.output_shape[-1])


def fit(
    model,
    train_ds,
    val_ds,
    *,
    epochs: int,
    learning_rate: float,
    backup_dir: Optional[Path] = None,
    teacher: Optional[keras.Model] = None,
    restore_best: bool = False,
    history_csv: Optional[Path] = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 1,
    run_eagerly: bool = False,
):
    """`model.fit` with a cosine-decayed Adam, resume-on-restart (BackupAndRestore) and a clear stop on NaN.

    An interrupted fit restarts from its last finished epoch when called again
    with the same `backup_dir`; the backup is removed when the fit completes.
    With `restore_best`, the model ends with the weights of the epoch that had
    the lowest validation loss (as EarlyStopping's restore_best_weights, but
    also when every epoch runs): fine-tuning a small set overfits in its last
    epochs.
    With a `teacher` (a model with the same inputs and logits, e.g. the float
    model a QAT model was made from), the model learns the teacher's class
    probabilities instead of the labels (`distillation_targets`); its training
    "accuracy" is then its top-1 agreement with the teacher, while validation
    still scores it against the labels. The teacher is not trained.
    With a `history_csv`, every finished epoch's losses and metrics are written
    there (see `read_history`), the epochs before an interruption included.
    """
    if restore_best and val_ds is None:
        raise ValueError("restore_best=True picks the epoch with the lowest validation loss: pass val_ds")
    schedule = cosine_schedule(learning_rate, epochs, train_ds)
    if teacher is not None:
        classes = _check_teacher(model, teacher)
        train_ds = distillation_targets(train_ds, teacher).prefetch(tf.data.AUTOTUNE)
        if val_ds is not None:
            val_ds = val_ds.map(lambda images, labels: (images, tf.one_hot(labels, classes)))
    compile_classifier(model, schedule, soft_targets=teacher is not None, run_eagerly=run_eagerly)
    last_good = _LastGoodWeights()
    all_callbacks = [last_good, keras.callbacks.TerminateOnNaN(), *callbacks]
    if history_csv is not None:
        all_callbacks.append(_EpochLog(Path(history_csv)))
    if restore_best:
        all_callbacks.append(_BestWeights(Path(backup_dir) / "best" if backup_dir is not None else None, verbose))
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


def _save_weights(path: Path, weights) -> None:
    """Write a list of weight arrays atomically (npz): a reader finds all of them or none."""
    arrays = io.BytesIO()
    np.savez(arrays, *weights)
    write_atomic(path, arrays.getvalue())


def _load_weights(path: Path) -> list:
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _finite(model) -> bool:
    return all(bool(tf.reduce_all(tf.math.is_finite(w))) for w in model.weights if w.dtype.is_floating)


class _LastGoodWeights(keras.callbacks.Callback):
    """Keeps a copy of the weights after each epoch that ended with finite weights."""

    def on_train_begin(self, logs=None):
        self.weights, self.epoch = self.model.get_weights(), 0

    def on_epoch_end(self, epoch, logs=None):
        if _finite(self.model):
            self.weights, self.epoch = self.model.get_weights(), epoch + 1


def _improves(val_loss, best: float) -> bool:
    """The rule `restore_best` keeps an epoch by: a finite val_loss below the best so far (the first of equals)."""
    return val_loss is not None and math.isfinite(val_loss) and val_loss < best


class _EpochLog(keras.callbacks.Callback):
    """Writes each finished epoch's logs to a CSV file (epoch counted from 1), atomically.

    Rows of the epoch just finished and of later epochs are replaced, so a fit
    resumed by BackupAndRestore keeps the epochs before the interruption, and a
    fit started afresh drops what an earlier fit left in the file.
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        # Earlier rows are carried over as written (a logged nan stays nan), without the parsing of read_history.
        rows = [row for row in _csv_rows(self.path) if int(row["epoch"]) <= epoch] if self.path.is_file() else []
        rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in sorted((logs or {}).items())}})
        columns = list(dict.fromkeys(key for row in rows for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.path, text.getvalue())


def read_history(path) -> list:
    """The epochs a fit wrote with `history_csv`: one dict per epoch, "epoch" (from 1) and float values.

    A NaN or infinite value reads as None, which JSON (results.json) can hold.
    """
    return [{k: _logged(k, v) for k, v in row.items() if v != ""} for row in _csv_rows(path)]


def _csv_rows(path) -> list:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _logged(key: str, text: str):
    if key == "epoch":
        return int(text)
    value = float(text)
    return value if math.isfinite(value) else None


def restored_epoch(epochs: list, restore_best: bool) -> Optional[int]:
    """The epoch whose weights a fit ended with: with `restore_best` the one `_BestWeights` keeps, else the last."""
    if not epochs:
        return None
    if not restore_best:
        return epochs[-1]["epoch"]
    best, chosen = math.inf, None
    for row in epochs:
        if _improves(row.get("val_loss"), best):
            best, chosen = row["val_loss"], row["epoch"]
    return chosen


class _BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the lowest val_loss and puts them back when the fit ends.

    With a `folder`, the best epoch so far is also written there, so a fit resumed
    by BackupAndRestore still knows the epochs it ran before the interruption.
    """

    def __init__(self, folder: Optional[Path], verbose: int):
        super().__init__()
        self.folder, self.verbose = folder, verbose

    def on_train_begin(self, logs=None):
        self.best, self.epoch, self.weights = math.inf, None, None
        if self.folder is not None and (self.folder / "best.json").is_file():
            record = json.loads((self.folder / "best.json").read_text())
            self.weights = _load_weights(self.folder / "best.npz")
            self.best, self.epoch = record["val_loss"], record["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_loss")
        if not _improves(value, self.best) or not _finite(self.model):
            return
        self.best, self.epoch, self.weights = float(value), epoch, self.model.get_weights()
        if self.folder is not None:
            _save_weights(self.folder / "best.npz", self.weights)  # before the record that points to it
            write_atomic(self.folder / "best.json", json.dumps({"epoch": epoch, "val_loss": self.best}))

    def on_train_end(self, logs=None):
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)  # the fit is over: nothing left to resume
        if self.weights is None:
            return
        self.model.set_weights(self.weights)
        if self.verbose:
            print(f"restored the weights of epoch {self.epoch + 1} (lowest val_loss {self.best:.4f})", flush=True)


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
    restore_best: bool = False,
    history_dir: Optional[Path] = None,
    verbose: int = 1,
    run_eagerly: bool = False,
):
    """Transfer learning in two phases: the new head alone, then the whole network at a small rate.

    With `restore_best`, each phase ends on its epoch with the lowest validation loss (see `fit`).
    With a `history_dir`, each phase logs its epochs there, to `<phase>.csv` (FLOAT_PHASES).
    With a `backup_dir`, an interrupted call resumes where it stopped: inside either phase at its
    last finished epoch, and a finished head phase is not run again.
    """
    histories = {}
    base.trainable = False
    backup_dir = Path(backup_dir) if backup_dir else None
    head_weights = backup_dir / "head.npz" if backup_dir else None

    def phase(name, epochs, learning_rate):
        histories[name] = fit(
            model, train_ds, val_ds, epochs=epochs, learning_rate=learning_rate,
            backup_dir=backup_dir / name if backup_dir else None, restore_best=restore_best,
            history_csv=Path(history_dir) / f"{name}.csv" if history_dir else None, verbose=verbose,
            run_eagerly=run_eagerly,
        )

    if head_epochs and head_weights is not None and head_weights.is_file():
        model.set_weights(_load_weights(head_weights))  # the head phase finished before an interruption
        if verbose:
            print(f"head phase: finished before the interruption, weights restored from {head_weights}", flush=True)
    elif head_epochs:
        phase(FLOAT_PHASES[0], head_epochs, head_learning_rate)
        if head_weights is not None:
            _save_weights(head_weights, model.get_weights())
    if fine_tune_epochs:
        unfreeze(model)
        phase(FLOAT_PHASES[1], fine_tune_epochs, fine_tune_learning_rate)
    if head_weights is not None:
        head_weights.unlink(missing_ok=True)  # both phases are over: nothing left to resume
    return histories
