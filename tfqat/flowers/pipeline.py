"""The flowers workflow: float transfer learning, power-of-two PTQ and QAT, peers, evaluation, report.

Each stage stores its result in `<out>/state.json` and its model weights in
`<out>`, so an interrupted run resumes at the first unfinished stage (inside a
`model.fit`, at the last finished epoch; after a finished fit, at its export).
"""

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from tfqat._keras import keras

import numpy as np
import tensorflow as tf

from tfqat.files import write_atomic
from tfqat import __version__, distribute
from tfqat.api import ptq, quantize_model
from tfqat.data import images
from tfqat.data.folders import to_arrays
from tfqat.data.labels import write_labels
from tfqat.evaluation import metrics
from tfqat.evaluation.stats import paired_difference
from tfqat.flowers import data, models, train
from tfqat.flowers.baselines import PeerError
from tfqat.flowers.fits import FinishedFits, save_weights_atomic
from tfqat.flowers.methods import CONTROL, FLOAT, FLOAT_FILE, FLOAT_REFERENCE, FLOAT_TITLE, FLOAT_WEIGHTS, METHODS, STAGES
from tfqat.flowers.methods import Method, Recipe, method as find_method
from tfqat.flowers.networks import file_name, network_named
from tfqat.flowers.options import NOT_SETTINGS, QUICK, QUICK_IMAGES, RunOptions, changed_settings
from tfqat.tflite import export, litert, verify
from tfqat.tflite.agreement import compare_outputs, keras_outputs
from tfqat.post_training.equalize import equalize
from tfqat.quantization.freeze import EXPONENT_CHANGES, ExponentChanges, FreezeThresholds
from tfqat.graph.canonical import canonical_model


# What a run flag adds to a method's title when the method does not have it by itself.
_FLAG_TITLES = (
    ("trained_thresholds", "trained thresholds"),
    ("unsigned_activations", "unsigned ReLU outputs"),
    ("equalize", "cross-layer equalization"),
    ("distillation", "distillation"),
)


DEBUG_IMAGES = 64  # images the per-tensor debugger runs on for each PTQ model


def _sample(records, count: int):
    """`count` records in content-hash order: classes mixed, and the same images on every run."""
    return tuple(sorted(records, key=lambda record: record.sha256)[:count])


# Keras progress bars on a terminal; one line per epoch in logs.
_FIT_VERBOSITY = 1 if sys.stdout.isatty() else 2


def log(message: str) -> None:
    """A line of the run's progress, as `[tfqat] ...`."""
    print(f"[tfqat] {message}", flush=True)


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _State:
    """Results of finished stages, saved after each one."""

    def __init__(self, path: Path):
        self.path = path
        self.results = json.loads(path.read_text()) if path.is_file() else {}

    def done(self, stage: str) -> bool:
        return stage in self.results

    def save(self, stage: str, result: dict) -> None:
        self.results[stage] = result
        write_atomic(self.path, json.dumps(self.results, indent=2).encode("utf-8"))


def _versions() -> dict:
    import ai_edge_litert
    import tensorflow_model_optimization as tfmot
    import tf_keras

    return {
        "tfqat": __version__,
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "tfmot": tfmot.__version__,
        "ai_edge_litert": getattr(ai_edge_litert, "__version__", "unknown"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


class Run:
    """One run of the workflow in an output folder."""

    def __init__(self, options: RunOptions):
        if options.quick:
            options = RunOptions(**{**asdict(options), **QUICK})
        self.options = options
        self.out = Path(options.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = _State(self.out / "state.json")
        self.fits = FinishedFits(self.out)
        self._check_resumable()
        if "started" not in self.state.results:  # the first command of this run; resumed ones keep it
            self.state.save("started", _utc_now())
        self.times = dict(self.state.results.get("stage_seconds", {}))
        keras.utils.set_random_seed(options.seed)
        self.strategy = distribute.make_strategy(options.strategy)
        self.network = network_named(options.model)
        self.not_run = {}  # stage -> why a peer did not run on this network
        self.flowers = None  # the data, once load_data has read it
        self.train_ds = None  # the training epochs, built afresh before each stage (_fresh_randomness)
        self._float_model = None
        self._equalized_float_model = None
        self._calibrated = {}  # the quantizers a recipe sets -> calibrated weights, so QAT does not calibrate again
        self.same_fit = {}  # stage -> the finished stage whose fit it repeats bit for bit, taken instead (Run.fit)

    def _check_resumable(self) -> None:
        """Refuse to mix stages of runs with different settings in one output folder."""
        settings = {k: v for k, v in asdict(self.options).items() if k not in NOT_SETTINGS}
        for name in ("data", "weights", "float_model"):
            if settings[name] and settings[name] != "imagenet" and not str(settings[name]).startswith("tfds"):
                settings[name] = os.path.realpath(settings[name])
        recorded = self.state.results.get("settings")
        if recorded is None:
            self.state.save("settings", settings)
            return
        if changed := changed_settings(recorded, settings):
            msg = (
                f"{self.out} holds a run with other settings ({'; '.join(changed)}); "
                "use another --out, or delete the folder to start over"
            )
            raise ValueError(msg)

    # ------------------------------------------------------------------ data
    def load_data(self):
        start = time.time()
        flowers = data.load_flowers(self.options.data)
        if self.options.quick:
            flowers = data.Flowers(
                flowers.source,
                flowers.classes,
                *(_sample(flowers.split(name), QUICK_IMAGES[name]) for name in data.SPLITS),
                flowers.skipped,
            )
        self.flowers = flowers
        write_labels(self.out / "labels.txt", flowers.classes)
        size = self.options.image_size
        preprocessing = self.network.preprocessing
        self.val_ds = data.make_dataset(
            flowers.validation, image_size=size, batch_size=self.options.batch_size, preprocessing=preprocessing
        )
        self.test_images, self.test_labels = to_arrays(flowers.test, image_size=size, preprocessing=preprocessing)
        # Which images, in which order: stored with each model's predictions so only the same split is paired.
        self.test_split = hashlib.sha256(" ".join(r.sha256 for r in flowers.test).encode()).hexdigest()[:16]
        calibration = _sample(flowers.train, self.options.calibration_images)
        self.calibration_images, _ = to_arrays(calibration, image_size=size, preprocessing=preprocessing)
        self.times["data"] = time.time() - start
        log(
            f"data: {len(flowers.classes)} classes, train {len(flowers.train)}, validation "
            f"{len(flowers.validation)}, test {len(flowers.test)}, skipped {len(flowers.skipped)} "
            f"({self.times['data']:.0f} s)"
        )

    def _train_dataset(self):
        return data.make_dataset(
            self.flowers.train, image_size=self.options.image_size, batch_size=self.options.batch_size, training=True,
            seed=self.options.seed, preprocessing=self.network.preprocessing,
        )

    def _fresh_randomness(self) -> None:
        """The seed's random state and training epochs afresh, so that a stage's result does not depend on which
        stages ran before it in this process: a run resumed (on this machine) repeats an uninterrupted one."""
        keras.utils.set_random_seed(self.options.seed)
        self.train_ds = self._train_dataset()

    # --------------------------------------------------------------- helpers
    def _classifier(self, weights):
        return models.build_classifier(
            len(self.flowers.classes), network=self.network.name, image_size=self.options.image_size, weights=weights
        )

    def file(self, stage: str) -> str:
        """The .tflite file of a stage in the run folder (and in --export-dir): flowers_<network>_..."""
        return file_name(FLOAT_FILE if stage == FLOAT else find_method(stage).file, self.network.name)

    def _save(self, tflite: bytes, stage: str) -> Path:
        """A stage's .tflite in the run folder, with the class labels and the network's preprocessing."""
        return export.save_tflite(
            tflite, self.out / self.file(stage), labels=self.flowers.classes, preprocessing=self.network.preprocessing
        )

    def float_model(self):
        """The float stage's model, loaded once; every method starts from it and none may change it."""
        if self._float_model is None:
            self._float_model = self.float_copy()
        return self._float_model

    def float_copy(self):
        """A new copy of the float stage's model, to train on (the control) without touching the shared one."""
        model = self._given_float_model() if self.options.float_model else self._classifier(None)[0]
        model.load_weights(str(self.out / FLOAT_WEIGHTS))
        train.unfreeze(model)
        return model

    def _calibration_batches(self):
        """The calibration images as a dataset, built only where they are read (it copies the whole array)."""
        return tf.data.Dataset.from_tensor_slices(self.calibration_images).batch(self.options.batch_size)

    def recipe(self, method: Method) -> Recipe:
        """The method's recipe under this run's --per-channel, --equalize and --distillation flags."""
        o = self.options
        return method.recipe.with_run_flags(
            per_channel=o.per_channel, equalize=o.equalize, distillation=o.qat_distillation,
            trained_thresholds=o.trained_thresholds, unsigned_activations=o.unsigned_activations,
        )

    def pow2_model(self, recipe: Recipe):
        """The float model, cross-layer equalized or not, quantized to power-of-two int8 and calibrated (PTQ).

        Equalization sees the calibration images, so channels whose ReLU6 clips on them keep their scale.
        """
        if recipe.equalize and self._equalized_float_model is None:
            self._equalized_float_model = equalize(self.float_model(), self._calibration_batches())
        float_model = self._equalized_float_model if recipe.equalize else self.float_model()
        options = dict(
            per_channel=recipe.per_channel, trained_thresholds=recipe.trained_thresholds,
            unsigned_activations=recipe.unsigned_activations, target=self.options.target,
            preprocessing=self.network.preprocessing,
        )
        key = recipe.calibration()
        if key in self._calibrated:  # the same calibration (and rounding) as an earlier method's
            qat = quantize_model(float_model, **options)
            qat.set_weights(self._calibrated[key])
            return qat
        qat = ptq(  # the equalized model is kept for the debugger, so ptq need not equalize again
            float_model, self._calibration_batches(), equalize=False, bias_correction=recipe.bias_correction,
            adaround=recipe.adaround, iterations=self.options.adaround_iterations, **options,
        )
        self._calibrated[key] = qat.get_weights()
        return qat

    def _validation_metrics(self, model) -> dict:
        """Top-1 accuracy and mean cross-entropy of a Keras model on the validation split, the only split
        training choices may look at."""
        images, labels = zip(*((images.numpy(), labels.numpy()) for images, labels in self.val_ds))
        logits, labels = keras_outputs(model, np.concatenate(images)), np.concatenate(labels)
        accuracy = metrics.classification_metrics(labels, logits, self.flowers.classes)["accuracy"]
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return {"validation_accuracy": accuracy, "validation_loss": float(np.mean(loss))}

    def _title(self, stage: str) -> str:
        """What the stage's model is, as the report names it; tfqat's own models follow --per-channel."""
        if stage == FLOAT:
            return FLOAT_TITLE
        method = find_method(stage)
        if method.recipe is None:
            return method.title
        recipe, title = self.recipe(method), method.title
        if recipe.per_channel:
            title = title.replace("per-tensor", "per-channel")
        added = [text for flag, text in _FLAG_TITLES if getattr(recipe, flag) and not getattr(method.recipe, flag)]
        return f"{title}, with {' and '.join(added)}" if added else title

    def _test_metrics(self, outputs) -> dict:
        """Metrics on the test split, and each image's predicted class, for the paired comparison with float."""
        result = metrics.classification_metrics(self.test_labels, outputs, self.flowers.classes)
        result["predictions"] = np.asarray(outputs).argmax(axis=-1).tolist()
        result["test_split"] = self.test_split
        return result

    def _paired(self, models: dict) -> dict:
        """Each model paired with the float model and with the float control, under the results' keys."""
        return {"versus_float": self._versus(models), "versus_control": self._versus(models, CONTROL)}

    def _versus(self, models: dict, reference: str = FLOAT) -> dict:
        """Each model's test accuracy minus the `reference` stage's (the float model, or the float control),
        image by image (tfqat.evaluation.stats.paired_difference)."""
        # Results from before predictions were kept, or of another test split (the folder's images changed since
        # that stage ran), cannot be paired with this split's labels.
        paired = [stage for stage, m in models.items() if m.get("test_split") == self.test_split]
        if reference not in paired:
            if reference in models:
                log(f"report: the {reference} model's test predictions are not of this test split; no paired comparison")
            return {}
        left_out = [stage for stage in models if stage not in paired]
        if left_out and reference == FLOAT:
            log(f"report: {', '.join(left_out)} not compared with float: no predictions for this test split")
        correct = {stage: np.asarray(models[stage]["predictions"]) == self.test_labels for stage in paired}
        others = [stage for stage in correct if stage not in (FLOAT, reference)]
        return {stage: paired_difference(correct[reference], correct[stage]) for stage in others}

    def fit(self, model, stage: str, recipe: Recipe):
        """QAT fine-tuning, the same for tfqat's model and TFMOT's, so the peers differ only in the scheme.

        A fit with thresholds frozen from an epoch on, when this run's same fit unfrozen changed no threshold's
        power of two from that epoch on, would repeat it bit for bit (tfqat.quantization.freeze): that fit's
        kept weights and epochs are taken instead (`same_fit`). Its thresholds keep their last values, which
        have the frozen ones' powers of two, so the exported model is the same.

        The fit's weights end in `weights_file(stage)`, listed in <out>/fits.json (tfqat.flowers.fits): a run
        stopped after the fit but before the stage's end takes them instead of training again.
        """
        weights, start = self.weights_file(stage), self.out / FLOAT_WEIGHTS
        if (kept := self.fits.kept(stage, weights, start)) is not None:
            model.load_weights(str(weights))
            if kept["same_fit_as"]:
                self.same_fit[stage] = kept["same_fit_as"]
            log(f"{stage}: its fit ended in an earlier run; its weights ({weights.name}) are taken")
            return
        self._train(model, stage, recipe)
        save_weights_atomic(model, weights)
        self.fits.save(stage, weights, start, same_fit_as=self.same_fit.get(stage))

    def _train(self, model, stage: str, recipe: Recipe) -> None:
        """Train `model` by `recipe`, or take its unfrozen twin's fit when that fit is the same (Run.fit)."""
        o = self.options
        epochs = o.qat_epochs if recipe.epochs is None else recipe.epochs
        twin = self._unfrozen_twin(stage, recipe, epochs)
        if twin is not None:
            model.load_weights(str(self.weights_file(twin)))
            write_atomic(self._history(stage), self._history(twin).read_bytes())
            self.same_fit[stage] = twin
            log(
                f"{stage}: {twin} changed no threshold's power of two in its last {recipe.frozen_threshold_epochs} "
                f"epoch(s), so freezing them there repeats its fit bit for bit: its weights and epochs are taken"
            )
            return
        callbacks = []
        if recipe.frozen_threshold_epochs is not None:
            callbacks.append(FreezeThresholds(max(0, epochs - recipe.frozen_threshold_epochs)))
        if recipe.trained_thresholds:
            callbacks.append(ExponentChanges())
        train.fit(
            model,
            self.train_ds,
            self.val_ds,
            epochs=epochs,
            learning_rate=o.qat_learning_rate if recipe.learning_rate is None else recipe.learning_rate,
            teacher=self.float_model() if recipe.distillation else None,
            backup_dir=self.out / "backup" / stage,
            restore_best=self.options.restore_best,
            history_csv=self._history(stage),
            verbose=_FIT_VERBOSITY,
            run_eagerly=o.run_eagerly,
            callbacks=callbacks,
        )

    def _unfrozen_twin(self, stage: str, recipe: Recipe, epochs: int):
        """The finished stage of this run (weights and history in its folder) that trained `recipe` without its
        frozen thresholds and logged no threshold exponent change in the epochs the freeze covers; else None."""
        if recipe.frozen_threshold_epochs is None:
            return None
        unfrozen, start = replace(recipe, frozen_threshold_epochs=None), max(0, epochs - recipe.frozen_threshold_epochs)
        for name, other in METHODS.items():
            if name == stage or other.recipe is None or self.recipe(other) != unfrozen or not self.state.done(name):
                continue
            history = self._history(name)
            if not (history.is_file() and self.weights_file(name).is_file()):
                continue
            rows = train.read_history(history)
            if [row["epoch"] for row in rows] == list(range(1, epochs + 1)) and all(
                row.get(EXPONENT_CHANGES) == 0 for row in rows[start:]
            ):
                return name
        return None

    def weights_file(self, stage: str) -> Path:
        """Where a method's trained Keras weights are: <out>/<stage>.weights.h5 (the float model's: FLOAT_WEIGHTS)."""
        return self.out / f"{stage}.weights.h5"

    def _history(self, stage: str) -> Path:
        """Where a stage's fits log their epochs: <out>/history/<stage>.csv; for float, a folder with one per phase."""
        return self.out / "history" / (stage if stage == FLOAT else f"{stage}.csv")

    def _training(self, stage: str) -> dict:
        """What each fit of a stage logged, epoch by epoch, and the epoch whose weights it kept."""
        if stage == FLOAT:
            paths = {phase: self._history(stage) / f"{phase}.csv" for phase in train.FLOAT_PHASES}
        else:
            paths = {stage: self._history(stage)}
        training = {}
        for fit, path in paths.items():
            if path.is_file():
                epochs = train.read_history(path)
                kept = train.restored_epoch(epochs, self.options.restore_best)
                training[fit] = {"epochs": epochs, "kept_epoch": kept}
        return training

    def _finish_float(self, method: Method, tflite: bytes, keras_model) -> dict:
        """Save and evaluate a float model that is not the float stage's (the control): Keras on the test and
        validation splits, its float .tflite with LiteRT."""
        result = self._test_metrics(keras_model.predict(self.test_images, batch_size=self.options.batch_size, verbose=0))
        result.update(self._validation_metrics(keras_model))
        path = self._save(tflite, method.name)
        tflite_result = metrics.evaluate_tflite(
            path, self.test_images, self.test_labels, self.flowers.classes, progress=f"{method.name} LiteRT"
        )
        result.update(
            title=self._title(method.name), engine="Keras", tflite_accuracy=tflite_result["accuracy"],
            file=self.file(method.name), size_bytes=metrics.file_size(path),
        )
        return result

    def _finish_int8(self, method: Method, tflite: bytes, keras_model=None) -> dict:
        """Save, verify and evaluate one int8 model; with its Keras model, measure agreement.

        Each model runs once over the test images; accuracy and agreement both use those outputs.
        """
        stage = method.name
        path = self._save(tflite, stage)
        report = verify.verify_tflite(path)
        outputs = litert.predict(path, self.test_images, progress=f"{stage} LiteRT")
        result = self._test_metrics(outputs)
        result.update(
            title=self._title(stage),
            engine="LiteRT int8",
            file=self.file(method.name),
            size_bytes=metrics.file_size(path),
            verify={
                "passed": report.passed,
                "summary": report.summary(),
                "failures": list(report.failures),
                "named_exceptions": list(report.exceptions),
            },
        )
        if keras_model is not None:
            expected = keras_outputs(keras_model, self.test_images)
            step = litert.describe(path).outputs[0].scale
            result["agreement"] = compare_outputs(expected, outputs, step).to_dict()
            result["keras_accuracy"] = metrics.classification_metrics(
                self.test_labels, expected, self.flowers.classes
            )["accuracy"]
            result.update(self._validation_metrics(keras_model))
        return result

    # ---------------------------------------------------------------- stages
    def _given_float_model(self):
        path = Path(self.options.float_model)
        if not path.exists():
            raise FileNotFoundError(f"float model {path} does not exist")
        model = keras.models.load_model(str(path), compile=False)
        expected = (self.options.image_size, self.options.image_size, 3)
        if tuple(model.input_shape[1:]) != expected or model.output_shape[-1] != len(self.flowers.classes):
            msg = (
                f"float model {path} takes {model.input_shape[1:]} and gives {model.output_shape[-1]} outputs; "
                f"this data needs {expected} and {len(self.flowers.classes)} classes"
            )
            raise ValueError(msg)
        return model

    def stage_float(self) -> dict:
        o = self.options
        if o.float_model:
            model = self._given_float_model()
        else:
            model, base = self._classifier(o.weights)
            train.train_float(
                model, base, self.train_ds, self.val_ds,
                head_epochs=o.head_epochs, fine_tune_epochs=o.fine_tune_epochs,
                head_learning_rate=o.head_learning_rate, fine_tune_learning_rate=o.fine_tune_learning_rate,
                backup_dir=self.out / "backup" / "float", restore_best=o.restore_best,
                history_dir=self._history("float"), verbose=_FIT_VERBOSITY, run_eagerly=o.run_eagerly,
            )
        model.save_weights(str(self.out / FLOAT_WEIGHTS))
        train.unfreeze(model)
        model.save(str(self.out / "float.keras"))  # the whole model, for `tfqat debug` and `tfqat quantize`
        self._float_model = model
        result = self._test_metrics(model.predict(self.test_images, batch_size=o.batch_size, verbose=0))
        result.update(self._validation_metrics(model))
        path = self._save(export.convert_float(model), FLOAT)
        tflite = metrics.evaluate_tflite(
            path, self.test_images, self.test_labels, self.flowers.classes, progress="float LiteRT"
        )
        result.update(
            title=FLOAT_TITLE, engine="Keras", tflite_accuracy=tflite["accuracy"],
            file=self.file(FLOAT), size_bytes=metrics.file_size(path),
        )
        return result

    def stage_method(self, name: str) -> dict:
        """Build one registered method's int8 model from the float model, then verify and evaluate it."""
        method = find_method(name)
        built = method.build(self, method)
        if method.control:
            return self._finish_float(method, built.tflite, built.keras_model)
        result = self._finish_int8(method, built.tflite, built.keras_model)
        if name in self.same_fit:
            result["same_fit_as"] = self.same_fit[name]
        if method.recipe is not None and not method.recipe.train:
            result["debug"] = self._debug(method)
        return result

    def _debug(self, method: Method) -> dict:
        """The per-tensor debugger (`tfqat debug`) of a PTQ model against the float model it was made from, on
        calibration images (training split): tables and plot in the run folder, the worst tensors in the results."""
        from tfqat.tflite.debug import debug_models

        start = time.time()
        reference = self._equalized_float_model if self.recipe(method).equalize else self.float_model()
        path = self.out / self.file(method.name)
        report = debug_models(reference, path, self.calibration_images, max_images=DEBUG_IMAGES)
        stem = self.out / f"debug_{method.name}"
        write_atomic(stem.with_suffix(".md"), report.to_markdown())
        report.to_csv(stem.with_suffix(".csv"))
        report.plot(stem.with_suffix(".png"))
        keep = ("layer", "op", "scale_exp", "scale_exp_max", "clipped", "zeroed", "sqnr_db")
        return {
            "images": report.images, "seconds": time.time() - start, "plot": stem.with_suffix(".png").name,
            "table": stem.with_suffix(".md").name,
            "worst_activations": [{k: row[k] for k in keep} for row in report.worst(5)],
            "worst_weights": [{k: row[k] for k in keep} for row in report.worst_weights(5)],
            "largest_drops": [{k: row[k] for k in (*keep, "drop_db")} for row in report.worst_drops(5)],
        }

    # ------------------------------------------------------------------- run
    def stages(self):
        # Every stage starts from the float model, so "float" always runs (or is reused) first.
        wanted = set(self.options.stages) | {FLOAT}
        if not self.options.peers:
            wanted -= {name for name, method in METHODS.items() if method.peer}
        return [s for s in STAGES if s in wanted]

    def run(self) -> dict:
        """Run (or resume) every stage, then write the report; returns the results."""
        self.run_stages()
        return self.write_report()

    def run_stages(self, after_stage=None, only=None) -> None:
        """Run every stage not yet done in the output folder, saving each one's result as it finishes.

        Args:
          after_stage: called with the stage's name once its result is saved (a study records it elsewhere too).
          only: these of the run's stages (default: all of them).
        """
        o = self.options
        if "float" not in o.stages and not o.float_model and not self.state.done("float"):
            msg = (
                f"no float model to start from in {self.out}: pass --float-model, or run `tfqat train` "
                "with the same --out first"
            )
            raise ValueError(msg)
        if self.flowers is None:
            self.load_data()
        for stage in self.stages():
            if only is not None and stage not in only:
                continue
            if self.state.done(stage):
                log(f"{stage}: done in an earlier run, kept")
                continue
            log(f"{stage}: {self._title(stage)} ...")
            start = time.time()
            self._fresh_randomness()
            # Models built in the scope train on all of the strategy's devices with plain fit.
            try:
                with self.strategy.scope():
                    result = self.stage_float() if stage == FLOAT else self.stage_method(stage)
            except PeerError as error:  # the run goes on without a peer that cannot take this network
                self.not_run[stage] = str(error)
                log(f"{stage}: not run: {error}")
                continue
            if training := self._training(stage):  # the stages that trained logged their epochs
                result["training"] = training
            self.times[stage] = time.time() - start
            self.state.save(stage, result)
            self.state.save("stage_seconds", self.times)
            log(f"{stage}: accuracy {result['accuracy']:.4f} ({self.times[stage]:.0f} s)")
            if after_stage is not None:
                after_stage(stage)

    def settings(self) -> dict:
        """The settings this folder's stages were run with (its state's)."""
        return self.state.results["settings"]

    def adopt(self, recorded: dict, stages, save: bool = True) -> None:
        """Take over finished stages' results from a record of the same run made elsewhere (a study's record).

        Args:
          save: into this folder's state; otherwise only for this process's results (tables from a record).
        """
        times = recorded.get("stage_seconds", {})
        for stage in stages:
            if self.state.done(stage):
                continue
            self.state.results[stage] = recorded[stage]
            if times.get(stage) is not None:
                self.times[stage] = times[stage]
            if save:
                self.state.save(stage, recorded[stage])
        if save:
            self.state.save("stage_seconds", self.times)

    def recorded_results(self, recorded: dict) -> dict:
        """The results of a record made from another float model (a study's earlier machine), each of its
        models paired with that record's float model and control on this run's test split."""
        if self.flowers is None:
            self.load_data()
        models = {stage: recorded[stage] for stage in STAGES if stage in recorded}
        return {"models": models, **self._paired(models), "stage_seconds": recorded.get("stage_seconds", {})}

    def results(self) -> dict:
        o = self.options
        flowers = self.flowers
        models = {stage: self.state.results[stage] for stage in STAGES if stage in self.state.results}
        return {
            "command": o.command,
            "versions": _versions(),
            "started": self.state.results.get("started"),  # None for folders from before it was recorded
            "written": _utc_now(),  # when this report was made
            "seed": o.seed,
            "quick": o.quick,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(o).items()},
            "data": {
                "source": flowers.source,
                "classes": list(flowers.classes),
                "split_sizes": {name: len(flowers.split(name)) for name in data.SPLITS},
                "skipped": [{"source": s.source, "reason": s.reason} for s in flowers.skipped],
                "image_contract": images.IMAGE_CONTRACT,
            },
            "reference": {FLOAT: FLOAT_REFERENCE, **{n: m.reference for n, m in METHODS.items() if m.reference}},
            "models": models,
            "not_run": dict(self.not_run),  # peers that cannot take the network, and why
            **self._paired(models),
            "stage_seconds": self.times,
        }

    def write_report(self) -> dict:
        from tfqat.flowers import ranges
        from tfqat.flowers import report

        results = self.results()
        results["weight_ranges"] = ranges.weight_ranges(canonical_model(self.float_model()))
        paths = report.write_report(results, self.out)
        if self.options.export_dir is not None:
            self.publish(Path(self.options.export_dir), paths)
        return results

    def publish(self, export_dir: Path, report_paths: dict) -> None:
        """Copy the published artifacts (the float model and the methods marked published, labels, report,
        results, plots) to `export_dir`."""
        export_dir.mkdir(parents=True, exist_ok=True)
        published = [m for m in METHODS.values() if m.published]
        debug = [f"debug_{m.name}.{kind}" for m in published for kind in ("md", "png")]
        names = [self.file(FLOAT), *(self.file(m.name) for m in published), *debug]
        files = [self.out / name for name in names if (self.out / name).is_file()]
        files += [self.out / "labels.txt", *map(Path, report_paths.values())]
        for path in files:
            write_atomic(export_dir / path.name, path.read_bytes())
        log(f"published {len(files)} files to {export_dir}")


def run(options: RunOptions) -> dict:
    """Run the whole flowers workflow and return its results (also written to `<out>`)."""
    return Run(options).run()
