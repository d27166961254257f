"""The flowers workflow end to end, in --quick mode on the shared photos (a smoke test of `tfqat run`)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from tfqat._keras import keras  # noqa: F401

import numpy as np
import pytest

from tfqat import api, cli
from tfqat.flowers import methods, pipeline

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "flower_photos"
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
QAT = methods.DEFAULT_QAT  # tfqat's QAT method of the default run

needs_shared = pytest.mark.skipif(
    not (DATA.is_dir() and WEIGHTS.is_file()), reason="the shared flower photos and MobileNetV2 weights are not here"
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`tfqat train --quick`, then `tfqat run --quick` in the same folder: the second resumes the first."""
    out = tmp_path_factory.mktemp("run")
    common = ["--data", str(DATA), "--out", str(out), "--quick"]
    assert cli.main(["train", *common, "--weights", str(WEIGHTS)]) == 0
    first = json.loads((out / "state.json").read_text())["float"]
    # As a user runs it, in a fresh process with its own output: the run must print no TensorFlow logs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    command = [sys.executable, "-c", "import sys; from tfqat.cli import main; sys.exit(main())"]
    argv = ["run", *common, "--weights", str(WEIGHTS), "--export-dir", str(out / "export")]
    done = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=1200, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (out / "run_output.txt").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    return out, first


@needs_shared
def test_run_writes_every_artifact(quick_run):
    out, _ = quick_run
    assert (out / methods.FLOAT_FILE).is_file()
    for stage in methods.DEFAULT_METHODS:
        assert (out / methods.METHODS[stage].file).is_file(), stage
    for name in ("report.md", "results.json", "labels.txt", "accuracy.png", f"confusion_{QAT}.png", "weight_ranges.png",
                 "training.png", "float.keras"):
        assert (out / name).is_file(), name
    published = sorted(p.name for p in (out / "export").iterdir())
    assert methods.METHODS[QAT].file in published and "report.md" in published
    assert "flowers_mobilenet_v2_int8_ptq_equalized.tflite" in published
    assert "flowers_mobilenet_v2_int8_ptq_tuned.tflite" in published
    assert {"debug_ptq.md", "debug_ptq.png", "debug_ptq_tuned.png"} <= set(published)
    assert "flowers_mobilenet_v2_int8_tflite_ptq.tflite" not in published
    # tfqat's files record the target their Keras models round for (LiteRT then runs them on its kernels).
    from tfqat.targets import DEFAULT_TARGET
    from tfqat.tflite.litert import TARGET_METADATA, read_metadata

    assert read_metadata(out / "export" / methods.METHODS[QAT].file, TARGET_METADATA) == DEFAULT_TARGET
    assert read_metadata(out / methods.METHODS["tfmot_qat"].file, TARGET_METADATA) is None


@needs_shared
def test_run_prints_its_own_progress_and_no_tensorflow_logs(quick_run):
    out, _ = quick_run
    stdout, stderr = (out / "run_output.txt").read_text().split("\n--- stderr ---\n")
    assert f"[tfqat] {QAT}: accuracy" in stdout and "report:" in stdout
    native = re.compile(r"(^[IWEF]\d{4} |absl::InitializeLog|cpu_feature_guard|cudart_stub|flatbuffer_export|fully_quantize)", re.M)
    assert not native.search(stdout) and not native.search(stderr), stderr[:2000]


@needs_shared
def test_results_are_consistent(quick_run):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    models = results["models"]
    assert list(models) == ["float", *methods.DEFAULT_METHODS]
    assert results["data"]["split_sizes"] == pipeline.QUICK_IMAGES
    test = pipeline.QUICK_IMAGES["test"]
    for stage, result in models.items():
        assert 0.0 <= result["accuracy"] <= 1.0
        assert sum(map(sum, result["confusion"])) == test
        # One prediction per test image, which the confusion matrix and the accuracy count.
        predictions = np.asarray(result["predictions"])
        assert predictions.shape == (test,)
        assert np.bincount(predictions, minlength=5).tolist() == np.asarray(result["confusion"]).sum(axis=0).tolist()
        low, high = result["accuracy_interval"]
        assert low <= result["accuracy"] <= high
    # Every fit logged its epochs (the quick run trains one epoch per fit) and the epoch it kept.
    fits = {"float": ["head", "fine_tune"], methods.CONTROL: [methods.CONTROL], QAT: [QAT], "tfmot_qat": ["tfmot_qat"]}
    for stage, names in fits.items():
        assert list(models[stage]["training"]) == names
        for record in models[stage]["training"].values():
            assert [row["epoch"] for row in record["epochs"]] == [1] and record["kept_epoch"] == 1
            assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(record["epochs"][0])
    for name in ("float/head.csv", "float/fine_tune.csv", f"{methods.CONTROL}.csv", f"{QAT}.csv", "tfmot_qat.csv"):
        assert (out / "history" / name).is_file(), name
    # Every other model against float on the same images: the counts give the accuracies' difference exactly.
    assert set(results["versus_float"]) == set(methods.DEFAULT_METHODS)
    for stage, paired in results["versus_float"].items():
        assert paired["images"] == test
        gained = (paired["only_other"] - paired["only_reference"]) / test
        assert gained == pytest.approx(models[stage]["accuracy"] - models["float"]["accuracy"], abs=1e-12)
        assert paired["difference"] == pytest.approx(gained, abs=1e-12)
        assert paired["interval"][0] <= paired["difference"] <= paired["interval"][1]
    # Every quantized model against the float control (QAT's training without quantization), the same way.
    assert set(results["versus_control"]) == set(methods.DEFAULT_METHODS) - {methods.CONTROL}
    for stage, paired in results["versus_control"].items():
        gained = (paired["only_other"] - paired["only_reference"]) / test
        assert gained == pytest.approx(models[stage]["accuracy"] - models[methods.CONTROL]["accuracy"], abs=1e-12)
    control = models[methods.CONTROL]
    assert "verify" not in control and 0.0 <= control["tflite_accuracy"] <= 1.0 and control["engine"] == "Keras"
    # The power-of-two exports pass the verifier; the peers' float scales do not.
    assert models["ptq"]["verify"]["passed"] and models[QAT]["verify"]["passed"]
    assert models["ptq_equalized"]["verify"]["passed"] and models["ptq_tuned"]["verify"]["passed"]
    assert not models["tflite_ptq"]["verify"]["passed"]
    assert not models["tfmot_qat"]["verify"]["passed"]
    assert 0.0 <= models[QAT]["agreement"]["top1_agreement"] <= 1.0
    # The PTQ models were debugged against their float models: every tensor's SQNR in the run folder.
    for stage in ("ptq", "ptq_equalized", "ptq_tuned"):
        debug = models[stage]["debug"]
        assert len(debug["worst_weights"]) == 5 and (out / debug["plot"]).is_file() and (out / debug["table"]).is_file()
    # Every model with a Keras side is scored on the whole validation split; the converter's PTQ has none.
    validation = pipeline.QUICK_IMAGES["validation"]
    for stage in ("float", methods.CONTROL, "ptq", "ptq_equalized", "ptq_tuned", QAT, "tfmot_qat"):
        correct = models[stage]["validation_accuracy"] * validation
        assert 0 <= correct <= validation and correct == pytest.approx(round(correct), abs=1e-9), stage
    assert "validation_accuracy" not in models["tflite_ptq"]
    assert results["options"]["qat_distillation"] is False  # the default: QAT learns the labels
    assert results["options"]["restore_best"] is True  # the default: each fit ends on its best validation epoch
    assert results["options"]["equalize"] is False  # the default: QAT starts from the float model as it is
    # "started" comes from the first command (`tfqat train`), so the span to the report covers the float stage.
    started, written = (time.mktime(time.strptime(results[k], "%Y-%m-%dT%H:%M:%SZ")) for k in ("started", "written"))
    assert written - started >= results["stage_seconds"]["float"]
    report = (out / "report.md").read_text()
    assert f"{models[QAT]['accuracy']:.4f}" in report
    assert "## Where the PTQ models lose precision (tfqat debug)" in report
    assert "## Against the float model (test split, paired)" in report
    assert "## Against the float control (test split, paired)" in report


@needs_shared
def test_second_run_resumes_and_keeps_the_float_stage(quick_run):
    out, first = quick_run
    state = json.loads((out / "state.json").read_text())
    assert state["float"] == first


@needs_shared
def test_a_stage_repeats_whatever_ran_before_it_in_the_process(quick_run, tmp_path):
    """QAT alone in this process, on the run's float model, gives the run's QAT model, which trained after the
    control had drawn epochs from the same data: each stage starts from the seed's own random state."""
    out, _ = quick_run
    state = json.loads((out / "state.json").read_text())
    (tmp_path / "state.json").write_text(json.dumps({k: state[k] for k in ("settings", "started", "float")}))
    shutil.copy(out / methods.FLOAT_WEIGHTS, tmp_path)
    run = pipeline.Run(pipeline.RunOptions(out=tmp_path, data=str(DATA), weights=str(WEIGHTS), quick=True, stages=(QAT,)))
    run.run_stages(only=(QAT,))
    again = json.loads((tmp_path / "state.json").read_text())[QAT]
    assert again["predictions"] == state[QAT]["predictions"]
    assert again["validation_loss"] == state[QAT]["validation_loss"]


@needs_shared
def test_a_frozen_fit_that_would_repeat_the_unfrozen_one_takes_its_weights_and_otherwise_trains(
    quick_run, tmp_path, monkeypatch
):
    """qat_tqt_frozen after qat_tqt: with no threshold exponent change logged in the epochs the freeze covers
    (a quick run's one epoch of six small steps), qat_tqt's weights and epochs, no fit; with one, or with a
    history from before the count, it trains (tests/test_freeze.py checks that the two fits are the same)."""
    from tfqat.flowers import train
    from tfqat.quantization.freeze import EXPONENT_CHANGES, ExponentChanges, FreezeThresholds

    out, _ = quick_run
    frozen, unfrozen_name = methods.METHODS["qat_tqt_frozen"], "qat_tqt"  # qat_tqt is not in the default run
    assert methods.METHODS[unfrozen_name].recipe == replace(frozen.recipe, frozen_threshold_epochs=None)
    state = json.loads((out / "state.json").read_text())
    (tmp_path / "state.json").write_text(json.dumps({k: state[k] for k in ("settings", "started", "float")}))
    shutil.copy(out / methods.FLOAT_WEIGHTS, tmp_path)
    options = pipeline.RunOptions(out=tmp_path, data=str(DATA), weights=str(WEIGHTS), quick=True, stages=(unfrozen_name,))
    run = pipeline.Run(options)
    run.run_stages(only=(unfrozen_name,))
    unfrozen_recipe = run.recipe(methods.METHODS[unfrozen_name])
    logged = (tmp_path / "history" / f"{unfrozen_name}.csv").read_text()
    assert [row[EXPONENT_CHANGES] for row in train.read_history(tmp_path / "history" / f"{unfrozen_name}.csv")] == [0]
    recipe = run.recipe(frozen)
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: pytest.fail("trained again"))
    model = run.pow2_model(recipe)
    run.fit(model, frozen.name, recipe)
    assert run.same_fit == {frozen.name: unfrozen_name}
    assert (tmp_path / "history" / f"{frozen.name}.csv").read_text() == logged
    unfrozen = run.pow2_model(unfrozen_recipe)
    unfrozen.load_weights(str(tmp_path / f"{unfrozen_name}.weights.h5"))
    for a, b in zip(model.get_weights(), unfrozen.get_weights()):
        np.testing.assert_array_equal(a, b)

    fits = []
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: fits.append(kwargs["callbacks"]))
    header, row = logged.strip("\n").split("\n")
    column = header.split(",").index(EXPONENT_CHANGES)
    values = row.split(",")
    values[column] = "1.0"
    changed = header + "\n" + ",".join(values) + "\n"
    before_the_count = "\n".join(",".join(v for i, v in enumerate(line.split(",")) if i != column)
                                 for line in (header, row)) + "\n"
    for history in (changed, before_the_count):
        (tmp_path / "history" / f"{unfrozen_name}.csv").write_text(history)
        (tmp_path / f"{frozen.name}.weights.h5").unlink()  # else the last call's fit is kept (fits.json)
        run.same_fit.clear()
        run.fit(run.pow2_model(recipe), frozen.name, recipe)
        assert run.same_fit == {}
    assert [[type(c) for c in callbacks] for callbacks in fits] == [[FreezeThresholds, ExponentChanges]] * 2


@needs_shared
def test_a_run_stopped_after_a_fit_ends_its_stage_without_training_and_trains_when_its_files_changed(
    quick_run, tmp_path, monkeypatch
):
    """A stop between QAT's fit and its stage's end (export, verification, evaluation): the next run takes the
    fit's weights and ends the stage as the uninterrupted run did; a fit whose weights or float start are no
    longer the files it recorded trains again."""
    import h5py

    from tfqat.flowers import fits, train

    out, _ = quick_run
    state = json.loads((out / "state.json").read_text())
    trained = {stage for stage, result in state.items() if isinstance(result, dict) and "training" in result}
    assert set(json.loads((out / fits.FITS).read_text())) == trained - {methods.FLOAT} and QAT in trained
    (tmp_path / "state.json").write_text(json.dumps({k: state[k] for k in ("settings", "started", "float")}))
    for name in (methods.FLOAT_WEIGHTS, f"{QAT}.weights.h5", fits.FITS, f"history/{QAT}.csv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(out / name, tmp_path / name)
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: pytest.fail("trained again"))
    run = pipeline.Run(pipeline.RunOptions(out=tmp_path, data=str(DATA), weights=str(WEIGHTS), quick=True, stages=(QAT,)))
    run.run_stages(only=(QAT,))
    again = json.loads((tmp_path / "state.json").read_text())[QAT]
    for key in ("predictions", "agreement", "validation_loss", "training"):
        assert again[key] == state[QAT][key], key
    assert again["verify"]["passed"] and again["verify"]["failures"] == state[QAT]["verify"]["failures"]

    def nudge(path):  # another value in the file's first array: other weights under the same name
        with h5py.File(path, "r+") as weights:
            arrays = []
            weights.visititems(lambda name, item: arrays.append(item) if isinstance(item, h5py.Dataset) else None)
            arrays[0][...] = arrays[0][()] + 1

    fitted = []
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: fitted.append(kwargs["history_csv"]))
    recipe = run.recipe(methods.METHODS[QAT])
    for changed in (tmp_path / f"{QAT}.weights.h5", tmp_path / methods.FLOAT_WEIGHTS):
        nudge(changed)
        run.fit(run.pow2_model(recipe), QAT, recipe)
    assert len(fitted) == 2


@needs_shared
def test_evaluate_cli_matches_the_run(quick_run, tmp_path, capsys):
    out, _ = quick_run
    # The run's test split as a folder: the CLI must give the run's own accuracy on it.
    results = json.loads((out / "state.json").read_text())
    model = out / methods.METHODS[QAT].file
    json_path = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(model), "--data", str(DATA), "--json", str(json_path)]) == 0
    evaluated = json.loads(json_path.read_text())
    assert evaluated["count"] == 2930
    assert set(evaluated["per_class"]) == {"daisy", "dandelion", "roses", "sunflowers", "tulips"}
    assert "accuracy" in capsys.readouterr().out
    assert 0.0 <= results[QAT]["accuracy"] <= 1.0


def test_bad_options_are_clear_errors(tmp_path, capsys):
    code = cli.main(["run", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--weights", "none"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.RunOptions(batch_size=0)
    with pytest.raises(ValueError, match="unknown stages"):
        pipeline.RunOptions(stages=("float", "distill"))
    with pytest.raises(ValueError, match="adaround_iterations"):
        pipeline.RunOptions(adaround_iterations=0)


def test_the_default_adaround_iterations_are_adarounds_own():
    """options.py reads no TensorFlow, so it repeats the number; the default run must use AdaRound's own."""
    from tfqat.quantization.rounding import ITERATIONS

    assert pipeline.RunOptions().adaround_iterations == ITERATIONS
    assert pipeline.QUICK["adaround_iterations"] < ITERATIONS
    assert pipeline.QUICK["run_eagerly"] and not pipeline.RunOptions().run_eagerly  # only the quick run's fits


def test_missing_weights_file_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "photos"
    code = cli.main(["train", "--data", str(DATA), "--out", str(tmp_path / "o"), "--weights", str(folder / "none.h5"), "--quick"])
    if not DATA.is_dir():
        pytest.skip("no shared photos")
    assert code == 2
    assert "none.h5 does not exist" in capsys.readouterr().err


@needs_shared
def test_resuming_with_other_settings_is_refused(quick_run, capsys):
    out, _ = quick_run
    code = cli.main(["run", "--data", str(DATA), "--out", str(out), "--quick", "--weights", "none"])
    assert code == 2
    assert "other settings" in capsys.readouterr().err
    code = cli.main(["run", "--data", str(DATA), "--out", str(out), "--quick", "--weights", str(WEIGHTS), "--distillation"])
    assert code == 2
    assert "qat_distillation: False -> True" in capsys.readouterr().err
    code = cli.main(["run", "--data", str(DATA), "--out", str(out), "--quick", "--weights", str(WEIGHTS), "--keep-last-epoch"])
    assert code == 2
    assert "restore_best: True -> False" in capsys.readouterr().err
    code = cli.main(["qat", "--data", str(DATA), "--out", str(out), "--quick", "--equalize"])
    assert code == 2
    assert "equalize: False -> True" in capsys.readouterr().err


@needs_shared
def test_a_run_recorded_before_a_setting_existed_still_resumes(quick_run, tmp_path):
    out, _ = quick_run
    settings = json.loads((out / "state.json").read_text())["settings"]
    del settings["qat_distillation"]  # as recorded by a version without the option
    (tmp_path / "state.json").write_text(json.dumps({"settings": settings}))
    pipeline.Run(pipeline.RunOptions(out=tmp_path, data=str(DATA), weights=str(WEIGHTS), quick=True))
    with pytest.raises(ValueError, match="qat_distillation: False -> True"):
        pipeline.Run(pipeline.RunOptions(out=tmp_path, data=str(DATA), weights=str(WEIGHTS), quick=True, qat_distillation=True))
    # Runs from before restore_best kept their last epochs: they resume as such, not as the new default.
    del settings["restore_best"]
    (tmp_path / "state.json").write_text(json.dumps({"settings": settings}))
    pipeline.Run(pipeline.RunOptions(out=tmp_path, data=str(DATA), weights=str(WEIGHTS), quick=True, restore_best=False))
    with pytest.raises(ValueError, match="restore_best: False -> True"):
        pipeline.Run(pipeline.RunOptions(out=tmp_path, data=str(DATA), weights=str(WEIGHTS), quick=True))


@needs_shared
def test_a_stage_command_keeps_the_settings_it_has_no_flags_for(quick_run, capsys):
    """`tfqat qat` has no --weights: after `tfqat train --weights F` it continues that run instead of refusing it."""
    out, _ = quick_run
    assert cli.main(["qat", "--data", str(DATA), "--out", str(out), "--quick"]) == 0
    assert f"{QAT}: done in an earlier run, kept" in capsys.readouterr().out
    assert json.loads((out / "state.json").read_text())["settings"]["weights"] == str(WEIGHTS.resolve())


@needs_shared
def test_qat_starts_from_the_ptq_calibration_without_calibrating_again(quick_run, monkeypatch):
    out, _ = quick_run
    run = pipeline.Run(pipeline.RunOptions(out=out, data=str(DATA), weights=str(WEIGHTS), quick=True))
    run.load_data()
    calls, equalized_on = [], []
    real, real_equalize = api.calibrate, pipeline.equalize  # the run's PTQ is tfqat.ptq, which calibrates
    monkeypatch.setattr(api, "calibrate", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    monkeypatch.setattr(
        pipeline, "equalize", lambda model, images: equalized_on.append(images) or real_equalize(model, images)
    )
    ptq, qat = run.pow2_model(methods.Recipe(equalize=True)), run.pow2_model(methods.Recipe(equalize=True, train=True))
    assert len(calls) == 1 and ptq is not qat
    # Equalization ran once, for both models, and measured its ReLU6 clips on the calibration images.
    assert [sum(len(batch) for batch in images) for images in equalized_on] == [len(run.calibration_images)]
    for a, b in zip(ptq.get_weights(), qat.get_weights(), strict=True):
        assert np.array_equal(a, b)
    run.pow2_model(methods.Recipe())  # the model as it is has ranges of its own
    assert len(calls) == 2
    # Calibration moved the activation ranges off their placeholder; the second model has them too.
    fresh = pipeline.quantize_model(real_equalize(run.float_model(), equalized_on[0]))
    assert any(not np.array_equal(a, b) for a, b in zip(fresh.get_weights(), qat.get_weights(), strict=True))


def test_titles_name_the_weight_scales_of_the_run(tmp_path):
    per_channel = pipeline.Run(pipeline.RunOptions(out=tmp_path / "pc", per_channel=True))
    per_tensor = pipeline.Run(pipeline.RunOptions(out=tmp_path / "pt"))
    for stage in ("ptq", "ptq_equalized", "qat"):
        assert "(power-of-two, per-channel)" in per_channel._title(stage)
        title = methods.METHODS[stage].title
        assert per_tensor._title(stage) == title and "per-tensor" in title
    for stage in ("tflite_ptq", "tfmot_qat"):
        assert per_channel._title(stage) == methods.METHODS[stage].title
    assert per_channel._title("float") == methods.FLOAT_TITLE
    flagged = pipeline.Run(pipeline.RunOptions(out=tmp_path / "tqt", trained_thresholds=True, unsigned_activations=True))
    assert flagged._title("qat").endswith("(power-of-two, per-tensor), with trained thresholds and unsigned ReLU outputs")
    assert flagged._title("ptq").endswith("(power-of-two, per-tensor), with unsigned ReLU outputs")
    assert flagged._title("qat_tqt_unsigned") == methods.METHODS["qat_tqt_unsigned"].title


def test_only_predictions_of_the_same_test_split_are_paired_with_float(tmp_path):
    run = pipeline.Run(pipeline.RunOptions(out=tmp_path / "run"))
    run.test_labels, run.test_split = np.array([0, 1, 1, 0]), "this split"
    models = {
        "float": {"predictions": [0, 1, 1, 1], "test_split": "this split"},
        "qat": {"predictions": [0, 1, 0, 0], "test_split": "this split"},
        "ptq": {"predictions": [0, 1, 1, 0], "test_split": "an older split"},  # same length, other images
        "tfmot_qat": {"predictions": [0, 1, 1, 0]},  # from before splits were recorded
    }
    paired = run._versus(models)
    assert list(paired) == ["qat"]
    assert (paired["qat"]["only_reference"], paired["qat"]["only_other"]) == (1, 1)
    models["float"]["test_split"] = "an older split"
    assert run._versus(models) == {}


@needs_shared
def test_another_network_runs_on_its_own_preprocessing_and_a_peer_that_cannot_take_it_is_named(tmp_path):
    """MobileNetV3Small rescales raw pixels itself: its files record "raw", its int8 input is pixel - 128, and
    TFMOT, whose default scheme fails on its operator layers, is listed as not run while the run goes on."""
    from tfqat.tflite import export, litert

    out = tmp_path / "v3"
    argv = ["run", "--data", str(DATA), "--out", str(out), "--quick", "--model", "MobileNetV3Small", "--weights", "none",
            "--methods", "ptq,tfmot_qat", "--head-epochs", "0"]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"float", "ptq"} and results["options"]["model"] == "MobileNetV3Small"
    assert results["not_run"]["tfmot_qat"].startswith("TFMOT's default QAT cannot quantize 'flowers_mobilenet_v3_small'")
    path = out / "flowers_mobilenet_v3_small_int8_ptq.tflite"
    assert export.read_preprocessing_metadata(path.read_bytes()) == "raw"
    spec = litert.describe(path).inputs[0]
    assert (spec.scale, spec.zero_point) == (1.0, -128)
    report = (out / "report.md").read_text()
    assert "# tfqat: power-of-two int8 MobileNetV3Small on flowers" in report and "Not run:" in report
