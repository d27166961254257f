import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import tflite_models as tm
from tfqat.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        "pow2": tm.write(folder, "pow2.tflite", tm.pow2_int8_tflite()),
        "ptq": tm.write(folder, "ptq.tflite", tm.ptq_int8_tflite()),
        "float": tm.write(folder, "float.tflite", tm.float_tflite()),
        "garbage": tm.write(folder, "garbage.tflite", b"GIF89a not a model"),
        "missing": folder / "missing.tflite",
    }


def test_verify_passing_model_exits_0(models, capsys):
    assert main(["verify", str(models["pow2"])]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "MEAN" in out


def test_verify_verbose_prints_the_op_table(models, capsys):
    assert main(["verify", str(models["pow2"]), "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "multiplier" in out and "DEPTHWISE_CONV_2D" in out and "2^-7" in out


def test_verify_json_is_the_full_report(models, capsys):
    assert main(["verify", str(models["pow2"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True and data["source"] == str(models["pow2"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [("ptq", "not a power of two"), ("float", "is float32: the model is not fully int8")],
)
def test_verify_failing_model_exits_1(models, capsys, name, expected):
    assert main(["verify", str(models[name])]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and expected in out


@pytest.mark.parametrize(("name", "expected"), [("garbage", "not a TFLite flatbuffer"), ("missing", "not found")])
def test_verify_unusable_input_exits_2_with_one_line(models, capsys, name, expected):
    assert main(["verify", str(models[name])]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and expected in captured.err
    assert captured.err.startswith("tfqat verify: error: ")


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "verify" in capsys.readouterr().err


def test_console_entry_point_has_no_traceback(models):
    # As the `tfqat` script runs it: a fresh process, stderr as the user sees it.
    command = [sys.executable, "-c", "import sys; from tfqat.cli import main; sys.exit(main())"]
    result = subprocess.run([*command, "verify", str(models["garbage"])], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("tfqat verify: error: ")


def _options(argv):
    from tfqat.cli import build_parser, run_options

    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    return run_options(args)


def test_unset_numeric_flags_resume_the_recorded_run(tmp_path):
    """A run recorded under other defaults resumes as recorded; a flag given on the command line still wins."""
    from tfqat.flowers.pipeline import RunOptions

    recorded = {"qat_epochs": 8, "fine_tune_learning_rate": 5e-5, "weights": "w.h5", "qat_distillation": True}
    (tmp_path / "state.json").write_text(json.dumps({"settings": recorded}))
    resumed = _options(["run", "--data", "d", "--out", str(tmp_path)])
    assert (resumed.qat_epochs, resumed.fine_tune_learning_rate) == (8, 5e-5)
    # Flags that `run` has keep their command-line values, so a different choice is seen (and refused by Run).
    assert resumed.weights == "imagenet" and resumed.qat_distillation is False
    assert _options(["run", "--data", "d", "--out", str(tmp_path), "--qat-epochs", "3"]).qat_epochs == 3
    # `qat` has no --weights: it continues the recorded run's.
    stage = _options(["qat", "--data", "d", "--out", str(tmp_path)])
    assert (stage.weights, stage.qat_epochs) == ("w.h5", 8)
    # A new folder takes the defaults.
    fresh = _options(["run", "--data", "d", "--out", str(tmp_path / "new")])
    assert fresh.qat_epochs == RunOptions.qat_epochs and fresh.fine_tune_learning_rate == RunOptions.fine_tune_learning_rate


# ------------------------------------------------------------ quiet, fast start, clear errors

# What TensorFlow's, absl's and the converter's C++ logging prints (e.g. "I0000 00:00:... port.cc:153] ...").
NATIVE_LOG = re.compile(r"(^[IWEF]\d{4} |absl::InitializeLog|cpu_feature_guard|cudart_stub|oneDNN custom operations)", re.M)


def _tfqat(*argv, timeout=300):
    """The `tfqat` console script in a fresh process, as a user runs it (the environment without TF_CPP_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    command = [sys.executable, "-c", "import sys; from tfqat.cli import main; sys.exit(main())", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def test_help_and_argument_errors_do_not_load_tensorflow(tmp_path):
    probe = "import sys, tfqat.cli; tfqat.cli.build_parser(); print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False"
    start = time.perf_counter()
    help_run = _tfqat("--help")
    assert help_run.returncode == 0 and "study" in help_run.stdout and help_run.stderr == ""
    bad = _tfqat("study", "--methods", "nope", "--out", str(tmp_path / "study"))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert time.perf_counter() - start < 30  # two fresh interpreters without TensorFlow (0.1 s each when idle)


def test_verify_and_evaluate_print_no_tensorflow_logs(models, tmp_path):
    verified = _tfqat("verify", str(models["pow2"]))
    assert verified.returncode == 0 and "PASSED" in verified.stdout
    assert not NATIVE_LOG.search(verified.stderr) and not NATIVE_LOG.search(verified.stdout), verified.stderr
    folder = tmp_path / "photos"
    for value, name in enumerate(("a", "b")):
        (folder / name).mkdir(parents=True)
        Image.fromarray(np.full((20, 20, 3), 40 + 100 * value, np.uint8)).save(folder / name / "0.png")
    labelled = tm.write(tmp_path, "m.tflite", tm.pow2_int8_tflite())
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\ne\n")
    evaluate = ("evaluate", str(labelled), "--data", str(folder), "--labels", str(tmp_path / "labels.txt"),
                "--preprocessing", "mobilenet")  # a file of another tool's: it records none
    evaluated = _tfqat(*evaluate)
    assert evaluated.returncode == 0 and "accuracy" in evaluated.stdout, evaluated.stderr
    assert not NATIVE_LOG.search(evaluated.stderr), evaluated.stderr
    # --verbose brings them back.
    loud = _tfqat(*evaluate, "--verbose")
    assert NATIVE_LOG.search(loud.stderr)


def test_export_explains_weights_only_and_tflite_files(tmp_path, capsys):
    from tfqat import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save_weights(str(tmp_path / "qat.weights.h5"))
    assert main(["export", str(tmp_path / "qat.weights.h5"), str(tmp_path / "out.tflite")]) == 2
    assert "holds weights only (saved with save_weights)" in capsys.readouterr().err
    (tmp_path / "m.tflite").write_bytes(tm.pow2_int8_tflite())
    assert main(["export", str(tmp_path / "m.tflite"), str(tmp_path / "out.tflite")]) == 2
    assert "is a TFLite model" in capsys.readouterr().err
    (tmp_path / "bad.h5").write_text("not hdf5")
    assert main(["export", str(tmp_path / "bad.h5"), str(tmp_path / "out.tflite")]) == 2
    assert "is not a readable HDF5 file" in capsys.readouterr().err
    assert not (tmp_path / "out.tflite").exists()


def _saved_tiny_float_model(path, seed):
    """A random MobileNetV2 (alpha 0.35, 32 px) classifier of 3 classes, saved whole at `path`."""
    from tfqat import keras

    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, include_top=False, pooling="avg")
    model = keras.Model(base.input, keras.layers.Dense(3)(base.output))
    model.save(path)
    return model


def test_quantize_makes_a_verified_int8_model_from_a_float_model_and_unlabelled_images(tmp_path, capsys):
    _saved_tiny_float_model(tmp_path / "float.keras", 0)
    rng = np.random.default_rng(0)
    for index in range(40):  # nested folders, no labels needed
        folder = tmp_path / "photos" / f"day{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / f"{index}.jpg")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    argv = ["quantize", str(tmp_path / "float.keras"), str(tmp_path / "int8.tflite"), "--images", str(tmp_path / "photos"),
            "--count", "24", "--save-model", str(tmp_path / "int8.keras")]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "24 images" in out.out and "PASSED" in out.out and "adaround 53/53" in out.err
    assert (tmp_path / "int8.tflite").stat().st_size > 0 and (tmp_path / "int8.keras").exists()
    assert main(["quantize", str(tmp_path / "float.keras"), str(tmp_path / "x.tflite"), "--images", str(tmp_path / "none")]) == 2
    assert "does not exist or is not a folder" in capsys.readouterr().err


def test_debug_prints_the_worst_tensors_and_writes_tables_and_plot(tmp_path, capsys):
    import tfqat

    model = _saved_tiny_float_model(tmp_path / "float.keras", 1)
    rng = np.random.default_rng(1)
    (tmp_path / "photos").mkdir()
    for index in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"{index}.png")
    qat = tfqat.quantize_model(model)
    tfqat.calibrate(qat, rng.uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32))
    tfqat.export_tflite(qat, tmp_path / "int8.tflite")
    argv = ["debug", str(tmp_path / "float.keras"), str(tmp_path / "int8.tflite"), "--images", str(tmp_path / "photos"),
            "--out", str(tmp_path / "debug")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "worst kernels" in out and "worst activations" in out and "DEPTHWISE_CONV_2D" in out
    assert {p.name for p in (tmp_path / "debug").iterdir()} == {"debug.md", "debug.csv", "debug.png"}


def _saved_application(path, name, **kwargs):
    """A Keras application with 3 classes at 32 px, built as the application tests build it (tests/sweeps.py
    cuts ResNet50; its name still tells the CLI the preprocessing)."""
    from sweeps import network
    from tfqat import keras

    keras.utils.set_random_seed(0)
    build, _, _ = network(name, whole=False)
    build(32, classes=3, **kwargs).save(path)


def test_quantize_uses_each_applications_own_preprocessing_and_evaluate_the_recorded_one(tmp_path, capsys):
    from image_folders import make_folder
    from tfqat.data.folders import scan_folder, to_arrays
    from tfqat.tflite import export, litert

    make_folder(tmp_path / "photos", {"a": 4, "b": 4, "c": 4})
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    for name, kwargs, expected in (("ResNet50", {}, "caffe"), ("MobileNetV3Small", dict(alpha=0.75), "raw")):
        model, out = tmp_path / f"{name}.keras", tmp_path / f"{name}.tflite"
        _saved_application(model, name, **kwargs)
        argv = ["quantize", str(model), str(out), "--images", str(tmp_path / "photos"), "--count", "12",
                "--no-adaround", "--no-equalize", "--no-bias-correction", "--labels", str(tmp_path / "labels.txt")]
        assert main(argv) == 0
        assert f"preprocessing '{expected}'" in capsys.readouterr().out
        assert export.read_preprocessing_metadata(out.read_bytes()) == expected
    out = tmp_path / "ResNet50.tflite"
    assert main(["evaluate", str(out), "--data", str(tmp_path / "photos"), "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    images, labels = to_arrays(scan_folder(tmp_path / "photos").records, image_size=32, preprocessing="caffe")
    predicted = litert.predict(out, images).argmax(-1)
    assert result["preprocessing"] == "caffe" and result["accuracy"] == float(np.mean(predicted == labels))
    assert main(["evaluate", str(out), "--data", str(tmp_path / "photos"), "--preprocessing", "torch"]) == 2
    assert "--preprocessing torch contradicts the preprocessing 'caffe' recorded in" in capsys.readouterr().err


def test_a_model_of_ones_own_needs_its_preprocessing_named(tmp_path, capsys):
    from image_folders import make_folder
    from tfqat import keras
    from tfqat.tflite import export

    make_folder(tmp_path / "photos", {"a": 4, "b": 4})
    keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                      keras.layers.Dense(2)]).save(tmp_path / "mine.keras")
    argv = ["quantize", str(tmp_path / "mine.keras"), str(tmp_path / "mine.tflite"), "--images", str(tmp_path / "photos"),
            "--count", "8", "--no-adaround"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not record how its inputs are preprocessed and is not a known Keras application" in err
    assert "pass --preprocessing (preprocessing= in Python) with one of: mobilenet" in err
    assert not (tmp_path / "mine.tflite").exists()
    assert main([*argv, "--preprocessing", "torch"]) == 0
    assert export.read_preprocessing_metadata((tmp_path / "mine.tflite").read_bytes()) == "torch"
