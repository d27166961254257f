"""The `tfqat` command line: one small function pair per sub-command.

To add a sub-command, write `_add_<name>(subparsers)` (its arguments, and
`set_defaults(handler=_<name>)`) and `_<name>(args) -> int`, and list the adder
in _SUBCOMMANDS. Handlers import their modules lazily so `tfqat --help` and
`tfqat verify` start without loading TensorFlow.

Exit codes: 0 success, 1 a check failed, 2 unusable input (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


def _add_verify(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check that a .tflite model is fully int8 with power-of-two (shift-only) requantization",
        description="Check that a .tflite model is fully int8, every scale is a power of two, "
        "weights have zero point 0, biases are int32 with scale input x weight, and every "
        "requantization is a shift. Ops that are inherently not shifts (MEAN, SOFTMAX, ...) "
        "are listed as named exceptions.",
    )
    parser.add_argument("path", help="the .tflite file")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--verbose", action="store_true", help="add the per-op table and every failure")
    parser.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from tfqat.tflite.verify import verify_tflite

    report = verify_tflite(args.path)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary(verbose=args.verbose))
    return EXIT_OK if report.passed else EXIT_FAILED


# Numeric run options: (flag, type, help). Defaults live in tfqat.flowers.options.RunOptions only.
_TRAINING_OPTIONS = (
    ("--head-epochs", int, "epochs of the new head alone"),
    ("--fine-tune-epochs", int, "epochs of the whole network"),
    ("--fine-tune-learning-rate", float, "initial learning rate of fine-tuning, cosine-decayed"),
)
_QUANTIZATION_OPTIONS = (
    ("--qat-epochs", int, "epochs of quantization-aware training"),
    ("--qat-learning-rate", float, "initial learning rate of QAT, cosine-decayed"),
    ("--calibration-images", int, "training images that set the PTQ and initial QAT ranges"),
)


def _add_run_options(parser, *, stages) -> None:
    from tfqat.distribute import STRATEGIES
    from tfqat.flowers.networks import DEFAULT_NETWORK, NETWORKS
    from tfqat.flowers.options import RunOptions

    parser.add_argument("--data", default=None, help="folder of class sub-folders, or tfds:NAME for an image classification set of "
                        "tensorflow-datasets (default: tfds:tf_flowers)")
    parser.add_argument("--out", default="runs/flowers", help="output folder (resumes a run found there)")
    parser.add_argument(
        "--model", choices=list(NETWORKS), default=None,
        help=f"the Keras application to train, with its own preprocessing (default {DEFAULT_NETWORK})",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument("--image-size", type=int, default=None, help="square input size (default 224)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default 32)")
    parser.add_argument("--per-channel", action="store_true", help="per-channel weight scales (default per tensor)")
    parser.add_argument(
        "--trained-thresholds", action="store_true",
        help="tfqat's QAT learns every power-of-two scale with the weights (TQT; default: scales from ranges)",
    )
    parser.add_argument(
        "--unsigned-activations", action="store_true",
        help="ReLU outputs on [0, 255] * 2^k, int8 zero point -128 (default signed [-128, 127] * 2^k)",
    )
    _add_target(parser)
    parser.add_argument("--quick", action="store_true", help="a small subset at 96 px and one epoch per phase: a smoke test")
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default="default",
        help="tf.distribute strategy for training: one device, all local devices, or the workers of TF_CONFIG",
    )
    parser.add_argument(
        "--keep-last-epoch", action="store_true",
        help="end every fit on its last epoch (default: on the epoch with the lowest validation loss)",
    )
    options = []
    if "float" in stages:
        parser.add_argument("--weights", default="imagenet", help="'imagenet', a local no-top .h5 file of the --model's "
                            "ImageNet weights (Keras's own), or 'none'")
        options += _TRAINING_OPTIONS
    if stages != ("float",):
        parser.add_argument("--float-model", default=None, help="start from this saved float Keras model instead of training one")
        parser.add_argument(
            "--distillation", action="store_true",
            help="QAT (ours and the TFMOT peer) learns the float model's class probabilities instead of the labels",
        )
        parser.add_argument(
            "--equalize", action="store_true",
            help="start tfqat's QAT from the cross-layer-equalized float model (default: the float model as it is)",
        )
        options += _QUANTIZATION_OPTIONS
    for flag, kind, text in options:
        default = RunOptions.__dataclass_fields__[flag[2:].replace("-", "_")].default
        parser.add_argument(flag, type=kind, default=None, help=f"{text} (default {default:g})")
    parser.set_defaults(handler=_run, stages=stages)


def _add_run(subparsers) -> None:
    from tfqat.flowers.methods import DEFAULT_METHODS, FLOAT, METHODS

    from_stages = (FLOAT, *DEFAULT_METHODS)
    parser = subparsers.add_parser(
        "run",
        help="the whole flowers workflow: float, power-of-two PTQ and QAT, peers, evaluation, report",
        description="Train MobileNetV2 (or another Keras application, --model) on flowers, quantize it to "
        "power-of-two int8 by PTQ and QAT, compare "
        "with the TFLite converter's PTQ and TFMOT's QAT, evaluate every model with LiteRT and write "
        "report.md and results.json. An interrupted run resumes from its output folder.",
    )
    _add_run_options(parser, stages=from_stages)
    parser.add_argument("--no-peers", action="store_true", help="skip the TFLite-PTQ and TFMOT-QAT peers")
    parser.add_argument(
        "--methods", default=None,
        help=f"comma-separated methods to run after the float model (default {','.join(DEFAULT_METHODS)}; "
        f"all: {','.join(METHODS)})",
    )
    parser.add_argument("--export-dir", default=None, help="also copy the published artifacts here (e.g. export)")


def _add_stage(name: str, stages, help_text: str):
    """A stage command; `stages` is a tuple of stage names, or a function giving them (read when parsing)."""
    def add(subparsers) -> None:
        parser = subparsers.add_parser(name, help=help_text, description=help_text + " Results go to --out.")
        _add_run_options(parser, stages=stages() if callable(stages) else stages)
    return add


def _default_qat() -> tuple:
    from tfqat.flowers.methods import DEFAULT_QAT

    return (DEFAULT_QAT,)


def run_options(args: argparse.Namespace):
    """The RunOptions of a parsed `run` or stage command.

    Settings the command has no flag for (`qat` has no --weights, `train` no
    --qat-epochs), and numeric ones left unset, keep their values from the run
    already in --out: `train --weights F` then `qat` is one run, and a run
    recorded under older defaults resumes as it was recorded.
    """
    from tfqat.flowers.options import RunOptions, recorded_settings

    weights = getattr(args, "weights", "imagenet")
    # Flags whose None means "not given": the run already in --out keeps its own value.
    numeric = ("model", "seed", "image_size", "batch_size", *(flag[2:].replace("-", "_") for flag, _, _ in _TRAINING_OPTIONS + _QUANTIZATION_OPTIONS))
    settings = {
        "weights": None if weights in (None, "none") else weights,
        "qat_distillation": getattr(args, "distillation", False),
        "equalize": getattr(args, "equalize", False),
        "restore_best": not args.keep_last_epoch,
        "float_model": getattr(args, "float_model", None),
        **{name: getattr(args, name) for name in numeric if getattr(args, name, None) is not None},
    }
    flags = {
        "weights": "weights", "qat_distillation": "distillation", "equalize": "equalize", "float_model": "float_model",
    }
    flags.update((name, name) for name in numeric)

    def unset(name: str) -> bool:
        return not hasattr(args, flags[name]) or (name in numeric and getattr(args, flags[name]) is None)

    recorded = recorded_settings(args.out)
    settings.update((name, value) for name, value in recorded.items() if name in flags and unset(name))
    return RunOptions(
        out=Path(args.out),
        data=args.data,
        per_channel=args.per_channel,
        trained_thresholds=args.trained_thresholds,
        unsigned_activations=args.unsigned_activations,
        target=args.target,
        peers=not getattr(args, "no_peers", False),
        quick=args.quick,
        strategy=args.strategy,
        export_dir=Path(args.export_dir) if getattr(args, "export_dir", None) else None,
        stages=_stages(args),
        command="tfqat " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
        **settings,
    )


def _stages(args: argparse.Namespace) -> tuple:
    """The stages a command runs: its own, or the float model and the methods of --methods."""
    if getattr(args, "methods", None) is None:
        return tuple(args.stages)
    from tfqat.flowers.methods import FLOAT, parse_methods

    return (FLOAT, *parse_methods(args.methods))


def _run(args: argparse.Namespace) -> int:
    from tfqat.flowers.pipeline import run

    options = run_options(args)
    results = run(options)
    for stage, result in results["models"].items():
        print(f"{stage:<11} {result['accuracy']:.4f}  {result['title']}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return EXIT_OK


def _add_study(subparsers) -> None:
    from tfqat.flowers.methods import METHODS
    from tfqat.flowers.study import SEEDS, StudyOptions

    parser = subparsers.add_parser(
        "study",
        help="the multi-seed accuracy study: each method against its own seed's float model",
        description="For each seed, train (or reuse) the float model in <out>/seed<N>, run each method on it, "
        "evaluate every int8 model with LiteRT, and write accuracy.md and accuracy.json: per method the mean "
        "and per-seed test accuracy and paired difference to float, validation accuracy and loss, Keras-LiteRT "
        "agreement, verifier result and time. Finished seeds and methods are kept; the same command resumes.",
    )
    parser.add_argument("--data", default=None, help="folder of class sub-folders, or tfds:NAME for an image classification set of "
                        "tensorflow-datasets (default: tfds:tf_flowers)")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a local MobileNetV2 no-top .h5 file, or 'none'")
    parser.add_argument("--out", default=str(StudyOptions.out), help="study folder (one run folder per seed)")
    seeds = ",".join(map(str, SEEDS))
    parser.add_argument("--seeds", default=seeds, help=f"comma-separated seeds (default {seeds})")
    parser.add_argument(
        "--methods", default=",".join(StudyOptions.methods),
        help=f"comma-separated methods (default {','.join(StudyOptions.methods)}; all: {','.join(METHODS)})",
    )
    parser.add_argument("--quick", action="store_true", help="a small subset at 96 px: a smoke test, not a measurement")
    parser.add_argument("--publish-dir", default=None, help="also write accuracy.md and accuracy.json here")
    parser.add_argument(
        "--candidates", default="",
        help="comma-separated methods of the study to choose a default among by the committed rule (docs/experiments.md: "
        "mean validation accuracy, ties of under one validation image broken by mean validation loss, then the "
        "incumbent); the first is the incumbent",
    )
    parser.add_argument(
        "--record-dir", default=None,
        help="keep each seed's results (test predictions, float weights' fingerprint) in DIR/seed<N>.json too: a "
        "study resumes from it on a machine without <out>, keeping a seed's methods where its float model "
        "trains to the recorded weights bit for bit; otherwise the record stays as DIR/seed<N>.<fingerprint>.json "
        "and its methods are kept, paired with that machine's float model and control",
    )
    parser.add_argument(
        "--report-only", action="store_true",
        help="write the tables from the runs that have finished; train and quantize nothing",
    )
    parser.set_defaults(handler=_study)


def _seeds(text: str) -> tuple:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated whole numbers, got {text!r}") from None


def _study(args: argparse.Namespace) -> int:
    from tfqat.flowers.methods import parse_methods
    from tfqat.flowers.study import StudyOptions, run_study, render_markdown

    options = StudyOptions(
        out=Path(args.out), data=args.data, weights=None if args.weights == "none" else args.weights,
        seeds=_seeds(args.seeds), methods=parse_methods(args.methods), quick=args.quick,
        publish_dir=Path(args.publish_dir) if args.publish_dir else None, report_only=args.report_only,
        record_dir=Path(args.record_dir) if args.record_dir else None,
        candidates=parse_methods(args.candidates) if args.candidates else (),
        command="tfqat " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
    )
    study = run_study(options)
    print(render_markdown(study))
    return EXIT_OK


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="accuracy of an exported .tflite model on a folder of class sub-folders",
        description="Evaluate a .tflite classifier (int8 or float) on every image of DIR (one sub-folder per "
        "class, matched to the model's labels by name) under the image contract; prints overall and "
        "per-class accuracy.",
    )
    parser.add_argument("model", help="the .tflite file")
    parser.add_argument("--data", required=True, help="folder of class sub-folders")
    parser.add_argument("--labels", default=None, help="labels file (default: the model's own labels)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this file")
    _add_preprocessing(parser)
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from tfqat.evaluation.metrics import evaluate_folder, format_metrics

    if not Path(args.model).is_file():
        raise FileNotFoundError(f"model {args.model} does not exist")
    # evaluate_folder reads the file's recorded preprocessing and weighs the flag against it.
    result = evaluate_folder(
        args.model, args.data, labels_file=args.labels, out_json=args.json, preprocessing=args.preprocessing
    )
    print(format_metrics(result))
    return EXIT_OK


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="convert a saved tfqat QAT model to a fully int8 .tflite and verify it",
        description="Convert a saved tfqat QAT Keras model (.keras or .h5) to a fully int8 TFLite file with "
        "power-of-two scales, written atomically, then run the verifier on it.",
    )
    parser.add_argument("model", help="the saved QAT model")
    parser.add_argument("output", help="the .tflite file to write")
    parser.add_argument("--labels", default=None, help="labels file to store with the model")
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from tfqat.api import load_model
    from tfqat.data.labels import read_labels

    if not Path(args.model).exists():
        raise FileNotFoundError(f"model {args.model} does not exist")
    labels = read_labels(args.labels) if args.labels else None
    return _export_and_verify(load_model(args.model), args.output, labels)


def _export_and_verify(qat_model, output, labels) -> int:
    """Export a QAT model to `output`, print the verifier's summary and return the exit code it gives."""
    from tfqat.tflite.export import export_tflite
    from tfqat.tflite.verify import verify_tflite

    report = verify_tflite(export_tflite(qat_model, output, labels=labels))
    print(report.summary())
    return EXIT_OK if report.passed else EXIT_FAILED


def _load_float_model(path):
    """A saved float Keras model, or a clear error for a weights-only, TFLite or unreadable file."""
    from tfqat._keras import keras
    from tfqat.api import _check_saved_model_file

    _check_saved_model_file(path)
    return keras.models.load_model(path, compile=False)


def _add_image_folder(parser, *, count: int) -> None:
    parser.add_argument("--images", required=True, help="folder of sample images (searched recursively; labels not needed)")
    parser.add_argument("--count", type=int, default=count, help=f"how many images to use (default {count})")
    _add_preprocessing(parser)


def _add_preprocessing(parser) -> None:
    from tfqat.preprocessing import PREPROCESSINGS

    parser.add_argument(
        "--preprocessing", choices=sorted(PREPROCESSINGS), default=None,
        help="how pixels become the model's inputs: mobilenet (x / 127.5 - 1), caffe (BGR minus the ImageNet "
        "mean), torch (ImageNet mean and standard deviation), raw (0-255); default: what the model or file "
        "records, else a known Keras application's own",
    )


def _file_preprocessing(args, path, float_model=None) -> str:
    """The preprocessing for a .tflite file: the flag, else the file's metadata, else the float model's."""
    from tfqat.preprocessing import resolve
    from tfqat.tflite.export import read_preprocessing_metadata
    from tfqat.tflite.litert import read_model_bytes

    stored = read_preprocessing_metadata(read_model_bytes(path))
    return resolve(args.preprocessing, stored=stored, model=float_model, source=str(path))


def _add_quantize(subparsers) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="label-free power-of-two PTQ of your own float Keras model: equalize, calibrate, AdaRound, export",
        description="Quantize a saved float Keras model to a fully int8 .tflite with power-of-two scales from "
        "unlabelled images (tfqat.ptq): cross-layer equalization, calibration, AdaRound with bias correction; "
        "then export and verify. Images are read from any folder under the image contract (x / 127.5 - 1).",
    )
    parser.add_argument("model", help="the saved float Keras model (.keras or .h5)")
    parser.add_argument("output", help="the .tflite file to write")
    _add_image_folder(parser, count=512)
    parser.add_argument("--no-equalize", action="store_true", help="skip cross-layer equalization")
    parser.add_argument("--no-bias-correction", action="store_true", help="skip bias correction")
    parser.add_argument("--no-adaround", action="store_true", help="round to nearest instead of AdaRound")
    parser.add_argument("--per-channel", action="store_true", help="per-channel weight scales (default per tensor)")
    parser.add_argument("--unsigned-activations", action="store_true", help="ReLU outputs on [0, 255] * 2^k")
    _add_target(parser)
    parser.add_argument("--save-model", default=None, help="also save the quantized Keras model here (.keras or .h5)")
    parser.add_argument("--labels", default=None, help="labels file to store with the .tflite")
    parser.set_defaults(handler=_quantize)


def _add_target(parser: argparse.ArgumentParser) -> None:
    from tfqat.targets import DEFAULT_TARGET, TARGETS

    parser.add_argument(
        "--target", choices=sorted(TARGETS), default=DEFAULT_TARGET,
        help=f"the runtime the file will run on; the Keras model rounds as it does (default {DEFAULT_TARGET}: "
        "XNNPACK, which LiteRT's Interpreter applies by default on desktop and Android)",
    )


def _quantize(args: argparse.Namespace) -> int:
    from tfqat.api import ptq
    from tfqat.data.images import folder_images
    from tfqat.data.labels import read_labels
    from tfqat.preprocessing import resolve

    labels = read_labels(args.labels) if args.labels else None
    model = _load_float_model(args.model)
    shape = model.input_shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2]:
        raise ValueError(f"{args.model} takes inputs of shape {shape}; tfqat quantize needs square images [N, S, S, 3]")
    preprocessing = resolve(args.preprocessing, model=model, source=str(args.model))
    images = folder_images(args.images, args.count, shape[1], preprocessing)
    print(f"[tfqat] {len(images)} images from {args.images} at {shape[1]} px, preprocessing '{preprocessing}'", flush=True)
    qat = ptq(
        model, images, equalize=not args.no_equalize, bias_correction=not args.no_bias_correction,
        adaround=not args.no_adaround, per_channel=args.per_channel, unsigned_activations=args.unsigned_activations,
        target=args.target, preprocessing=preprocessing,
    )
    if args.save_model:
        qat.save(args.save_model)
    return _export_and_verify(qat, args.output, labels)


def _add_debug(subparsers) -> None:
    parser = subparsers.add_parser(
        "debug",
        help="per-tensor quantization error of an int8 .tflite against the float model it was made from",
        description="Run the int8 .tflite with LiteRT (every intermediate tensor kept) and the BN-folded float "
        "Keras model on sample images; per int8 tensor in graph order report its scale 2^k, the fraction of values "
        "that clip and that round to zero, and the SQNR against the float tensor. Prints the worst kernels and "
        "activations; --out also writes debug.md, debug.csv and debug.png. For a model made after cross-layer "
        "equalization, pass the equalized float model (the flowers run does this for its own PTQ models).",
    )
    parser.add_argument("float_model", help="the float Keras model (.keras or .h5) the int8 model was made from")
    parser.add_argument("int8_model", help="the fully int8 .tflite")
    _add_image_folder(parser, count=64)
    parser.add_argument("--out", default=None, help="folder for debug.md, debug.csv and debug.png")
    parser.set_defaults(handler=_debug)


def _debug(args: argparse.Namespace) -> int:
    from tfqat.data.images import folder_images
    from tfqat.files import write_atomic
    from tfqat.tflite.debug import debug_models

    model = _load_float_model(args.float_model)
    images = folder_images(
        args.images, args.count, model.input_shape[1], _file_preprocessing(args, args.int8_model, model)
    )
    report = debug_models(model, args.int8_model, images, max_images=args.count)
    print("largest SQNR drops (dB lost against the activation before; SQNR after):")
    for row in report.worst_drops(5):
        print(f"  {row['drop_db']:6.1f}  {row['layer']} ({row['op']}), {row['sqnr_db']:.1f} dB")
    for title, rows in (("kernels", report.worst_weights(5)), ("activations", report.worst(5))):
        print(f"worst {title} (SQNR, dB):")
        for row in rows:
            print(f"  {row['sqnr_db']:6.1f}  {row['layer']} ({row['op']}), clipped {100 * row['clipped']:.2f} %, "
                  f"zeroed {100 * row['zeroed']:.1f} %")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "debug.md", report.to_markdown())
        report.to_csv(out / "debug.csv")
        report.plot(out / "debug.png")
        print(f"tables and plot: {out / 'debug.md'}, {out / 'debug.csv'}, {out / 'debug.png'}")
    return EXIT_OK


def _add_execute(subparsers) -> None:
    parser = subparsers.add_parser(
        "execute",
        help="run a shift-only int8 .tflite with tfqat's integer reference executor; compare with runtimes",
        description="Run a shift-only int8 .tflite op by op in numpy (integer adds and shifts; the ops that are not "
        "shifts computed as the runtimes do) on images from a folder (image contract, the file's preprocessing) or "
        "on random int8 inputs, report how many values per tensor were rounding ties, and with --compare count the elements "
        "of every tensor that differ from LiteRT's kernels or TFLite Micro. Exit code 1 when any differ.",
    )
    parser.add_argument("model", help="the .tflite file")
    parser.add_argument("--images", default=None, help="folder of sample images (default: random int8 inputs)")
    parser.add_argument("--count", type=int, default=16, help="how many images or random inputs (default 16)")
    _add_preprocessing(parser)
    parser.add_argument("--ties", default=None, help="a runtime's rounding (reference, builtin, xnnpack, micro) or a "
                        "tie rule (tflite_double, half_away_from_zero, half_up, half_even, double_half_up); "
                        "default: the compared runtime's, else reference")
    parser.add_argument("--compare", action="append", default=[], choices=("reference", "builtin", "xnnpack", "micro"),
                        help="a runtime to compare every tensor with (repeatable; xnnpack: outputs only)")
    parser.add_argument("--local", action="store_true", help="feed each op the runtime's own inputs (judge ops alone)")
    parser.add_argument("--tensors", action="store_true", help="list every tensor, not only those that differ")
    parser.set_defaults(handler=_execute)


def _execute(args: argparse.Namespace) -> int:
    import numpy as np

    from tfqat.integer.compare import compare
    from tfqat.integer.executor import IntegerModel

    if args.count < 1:
        raise ValueError(f"--count {args.count} is not valid; use a positive number of inputs")
    program = IntegerModel(args.model, ties=args.ties or (args.compare[0] if args.compare else "reference"))
    [spec] = program.inputs
    if args.images:
        from tfqat.data.images import folder_images
        from tfqat.tflite.litert import describe, quantize

        images = folder_images(args.images, args.count, spec.shape[1], _file_preprocessing(args, args.model))
        inputs = quantize(images, describe(args.model).inputs[0])
    else:
        inputs = np.random.default_rng(0).integers(-128, 128, (args.count, *spec.shape[1:])).astype(spec.dtype)
    result = program.run(inputs)
    ties = sum(result.ties.values())
    print(f"{args.model}: {len(inputs)} input(s), {len(program.graph.operators)} ops; {ties} rounding ties in "
          f"{sum(1 for n in result.ties.values() if n)} tensors; ops that are not shifts: {len(result.named)}")
    for line in result.named:
        print(f"  {line}")
    if args.tensors:
        for index, count in result.ties.items():
            print(f"  tensor {index:>4} {program.graph.tensors[index].name.split(';')[0][:60]:<60} ties {count}")
    differ = 0
    for runtime in args.compare:
        checked = program if args.ties or runtime == args.compare[0] else IntegerModel(args.model, ties=runtime)
        agreement = compare(checked, inputs, runtime, local=args.local)
        print(agreement.summary(verbose=args.tensors))
        differ += agreement.mismatched
    return EXIT_FAILED if differ else EXIT_OK


def _add_micro(subparsers) -> None:
    parser = subparsers.add_parser(
        "micro",
        help="write a fully int8 .tflite as C source for TensorFlow Lite Micro, with its measured tensor arena",
        description="Write OUT_DIR/<name>_data.h and <name>_data.c (the model as a 16-byte aligned const byte array "
        "and its length, and <NAME>_ARENA_SIZE: the smallest tensor arena with which TFLite Micro's interpreter "
        "allocates and runs the model, plus --margin) and <name>_ops.h (the MicroMutableOpResolver calls for the "
        "ops the model uses). Refuses a model that is not fully int8 or uses an op TFLite Micro lacks.",
    )
    parser.add_argument("model", help="the fully int8 .tflite file")
    parser.add_argument("out_dir", help="folder for the C files (created if missing)")
    parser.add_argument("--name", default="model", help="C identifier prefix of the array and macros (default model)")
    parser.add_argument("--margin", type=int, default=None, help="bytes added to the measured arena (default 1024)")
    parser.set_defaults(handler=_micro)


def _micro(args: argparse.Namespace) -> int:
    from tfqat.tflite.micro import ARENA_MARGIN, export_micro

    margin = ARENA_MARGIN if args.margin is None else args.margin
    result = export_micro(args.model, args.out_dir, name=args.name, margin=margin)
    print(f"wrote {', '.join(str(path) for path in result.paths)}")
    print(f"{args.name}_tflite: {result.length} bytes, 16-byte aligned")
    print(f"ops ({len(result.ops)}): {', '.join(f'{op} {method}()' for op, method in zip(result.ops, result.methods))}")
    print(f"{args.name.upper()}_ARENA_SIZE {result.arena_size} bytes (measured {result.arena_measured} + margin {margin})")
    return EXIT_OK


def _add_espdl(subparsers) -> None:
    from tfqat.targets import ESPDL_TARGETS

    parser = subparsers.add_parser(
        "espdl",
        help="write a tfqat int8 .tflite as an .espdl file for ESP-DL on ESP32-S3 or ESP32-P4",
        description="Write the model as an .espdl file (Espressif's ESP-DL runtime) for --chip, with a test input "
        "and the int8 outputs tfqat's integer reference computes for it in the chip's arithmetic, which the "
        "board checks on first load (dl::Model::test()). The model must have been quantized for that chip "
        "(--target esp32s3 or esp32p4): only then does the chip compute what the Keras model trained with. "
        "Refuses, naming the op, what ESP-DL cannot express.",
    )
    parser.add_argument("model", help="the tfqat int8 .tflite file")
    parser.add_argument("out", help="the .espdl file to write")
    parser.add_argument("--chip", choices=ESPDL_TARGETS, default=None,
                        help="the chip (default: the target the model was quantized for)")
    parser.add_argument("--image", default=None, help="an image file for the embedded test (default: random int8 values)")
    _add_preprocessing(parser)
    parser.set_defaults(handler=_espdl)


def _espdl(args: argparse.Namespace) -> int:
    from tfqat.espdl.export import export_espdl

    image = None
    if args.image:
        from tfqat.data.images import decode_image, preprocess
        from tfqat.integer.model import read_graph

        path = Path(args.image)
        if not path.is_file():
            raise ValueError(f"--image {path} is not a file")
        graph = read_graph(args.model)
        size = graph.tensors[graph.inputs[0]].shape[1]
        image = preprocess(decode_image(path.read_bytes()), size, _file_preprocessing(args, args.model)).numpy()
    result = export_espdl(args.model, args.out, chip=args.chip, test_input=image)
    print(f"wrote {result.path}: {result.size} bytes for {result.chip}; ops: {', '.join(result.ops)}")
    print(f"embedded test: 1 input, outputs {', '.join(str(o.tolist()) for o in result.test_outputs)} "
          f"(tfqat's integer reference, {result.chip} arithmetic)")
    return EXIT_OK


_SUBCOMMANDS: tuple[Callable, ...] = (
    _add_run,
    _add_stage("train", ("float",), "Train the float MobileNetV2 flowers classifier (transfer learning) and export it as float TFLite."),
    _add_stage(
        "ptq", ("ptq", "ptq_equalized", "ptq_tuned"),
        "Power-of-two int8 post-training quantization of the flowers float model: plain, after cross-layer "
        "equalization, and after equalization with AdaRound and bias correction (label-free): fold, (equalize,) "
        "calibrate, (round,) export, verify, evaluate. For your own model use `tfqat quantize`.",
    ),
    _add_stage(
        "qat", _default_qat,
        "Power-of-two int8 quantization-aware training (the default recipe: trained thresholds from the AdaRound "
        "PTQ model at a tenth of the learning rate): fold, equalize, calibrate, round, fit, export, verify, evaluate.",
    ),
    _add_study,
    _add_quantize,
    _add_debug,
    _add_export,
    _add_verify,
    _add_execute,
    _add_micro,
    _add_espdl,
    _add_evaluate,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfqat", description="Power-of-two int8 QAT for Keras MobileNetV2.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    for name, subparser in subparsers.choices.items():
        if name != "verify":  # verify's own --verbose also adds its per-op table
            subparser.add_argument(
                "--verbose", action="store_true", help="show TensorFlow's and the converter's own logs too"
            )
    return parser


# Errors a user can cause, shown as one line: built-in ones, and tfqat's own from the modules that define them.
_USER_ERRORS = (OSError, ValueError, TypeError, RuntimeError)
_ERROR_CLASSES = {
    "tfqat.flowers.train": "TrainingError", "tfqat.tflite.export": "ExportError", "tfqat.tflite.litert": "TFLiteModelError",
    "tfqat.integer.model": "ExecutorError",
}


def _user_errors() -> tuple:
    """_USER_ERRORS and the tfqat errors of modules already loaded (one not loaded cannot have raised)."""
    loaded = [getattr(sys.modules[name], cls) for name, cls in _ERROR_CLASSES.items() if name in sys.modules]
    return (*_USER_ERRORS, *loaded)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tfqat` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = None if argv is None else list(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_UNUSABLE
    from tfqat.quiet import quiet

    verbose = getattr(args, "verbose", False)
    # A tool's output is its own: TensorFlow's logs go to a file, kept in error.log if the command fails.
    with contextlib.nullcontext(None) if verbose else quiet() as log:
        try:
            code = args.handler(args)
        except KeyboardInterrupt:
            print(f"tfqat {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
            code = 130
        except Exception as error:
            if not isinstance(error, _user_errors()):
                if log is not None:  # a bug of ours: keep TensorFlow's side of it too
                    print(f"tfqat {args.command}: TensorFlow's own log of this command: {log}", file=sys.stderr)
                raise
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            print(f"tfqat {args.command}: error: {first_line}{_log_details(args, error, log)}", file=sys.stderr)
            code = EXIT_UNUSABLE
    if log is not None:
        log.unlink(missing_ok=True)
    return code


def _log_details(args: argparse.Namespace, error: BaseException, native: Path | None = None) -> str:
    """Keep the full traceback of a failed run (and TensorFlow's own log) in its output folder; the terminal
    gets one line."""
    out = getattr(args, "out", None)
    # Only a run's own folder or a study's (one run folder per seed), never any folder.
    if out is None or not ((Path(out) / "state.json").is_file() or any(Path(out).glob("seed*/state.json"))):
        return ""
    import traceback

    path = Path(out) / "error.log"
    text = "".join(traceback.format_exception(error))
    if native is not None and native.is_file() and native.stat().st_size:
        text += "\n--- TensorFlow's and the converter's own log of this command ---\n"
        text += native.read_text(errors="replace")
    path.write_text(text)
    return f" (details: {path}; run the same command again to resume)"


if __name__ == "__main__":
    sys.exit(main())
