"""Every runtime side by side: the published QAT models on the test split under each runtime they can target.

    python benchmarks/runtimes.py --run runs/flowers --data /work/shared/data/flower_photos --out benchmarks/results

For each published QAT model (export/, trained in --run: its Keras weights `<method>.weights.h5` and float
model) and each target that a runtime on this machine runs (tfqat.targets: xnnpack, builtin, reference,
micro), the Keras model retargeted to it (tfqat.retarget: same weights, that runtime's rounding) and the
runtime itself run the run's test split. Per row: the runtime's accuracy and the Keras model's, output
elements that differ between them, top-1 agreement, the integer executor in that target's mode against the
runtime (--executor-images images) with the ties it met, latency per image (one thread, median over
--latency-images), and the file's flash bytes and TFLite Micro arena. Writes runtimes.md and runtimes.json.
"""

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from tfqat.flowers.methods import PUBLISHED_QAT  # pure Python: no TensorFlow at start-up

ROOT = Path(__file__).resolve().parents[1]
TARGETS_RUN = ("xnnpack", "builtin", "reference", "micro")


class Runtime:
    """One runtime loaded once: int8 images in, int8 outputs out, one image at a time."""

    def __init__(self, path: Path, name: str):
        self.name = name
        if name == "micro":
            from tflite_micro.python.tflite_micro import runtime as micro

            self._micro = micro.Interpreter.from_bytes(path.read_bytes())
        else:
            from tfqat.tflite.litert import load_interpreter

            self._litert = load_interpreter(path, kernels=name, num_threads=1)
            self._litert.allocate_tensors()
            self._input = self._litert.get_input_details()[0]["index"]
            self._output = self._litert.get_output_details()[0]["index"]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.name == "micro":
            self._micro.set_input(image[None], 0)
            self._micro.invoke()
            return np.array(self._micro.get_output(0))[0]
        self._litert.set_tensor(self._input, image[None])
        self._litert.invoke()
        return self._litert.get_tensor(self._output)[0].copy()


def run_runtime(path: Path, name: str, images: np.ndarray, latency_images: int) -> tuple[np.ndarray, float]:
    """int8 outputs on every image, and the median seconds per image over the first `latency_images`."""
    runtime = Runtime(path, name)
    outputs, seconds = [], []
    for k, image in enumerate(images):
        start = time.perf_counter()
        outputs.append(runtime(image))
        if k < latency_images:
            seconds.append(time.perf_counter() - start)
    return np.stack(outputs).astype(np.int64), float(np.median(seconds))


def keras_steps(model, images: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """The Keras model's outputs in int8 steps (each an exact multiple of the output scale)."""
    steps = model.predict(images, batch_size=32, verbose=0).astype(np.float64) / scale
    assert np.array_equal(steps, np.round(steps)), "the Keras model's outputs are not on the output grid"
    return np.round(steps).astype(np.int64) + zero_point


def run_executor(path: Path, target: str, quantized: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    from tfqat.integer.executor import IntegerModel

    program = IntegerModel(path, ties=target)
    outputs, ties = [], 0
    for start in range(0, count, 16):
        result = program.run(quantized[start : min(start + 16, count)], keep_tensors=False)
        outputs.append(result.outputs[0].astype(np.int64))
        ties += sum(result.ties.values())
    return np.concatenate(outputs), ties


def load_run(run_folder, data):
    """The finished run that trained the published models, with its data loaded (its own settings)."""
    from tfqat.flowers.options import recorded_settings
    from tfqat.flowers.pipeline import Run, RunOptions

    settings = recorded_settings(run_folder)
    if not settings:
        raise SystemExit(f"--run {run_folder}: no finished run there (state.json)")
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    run = Run(RunOptions(**{**{k: v for k, v in settings.items() if k in fields}, "out": Path(run_folder), "data": data}))
    run.load_data()
    return run


def trained_qat(method, run, float_model, published: bytes):
    """The QAT model of a published file: its method's recipe, the target the file records, the trained weights."""
    import tfqat
    from tfqat.tflite import export

    recipe = run.recipe(method)
    trained_for = export.read_target_metadata(published)
    qat = tfqat.quantize_model(
        float_model, per_channel=recipe.per_channel, trained_thresholds=recipe.trained_thresholds,
        unsigned_activations=recipe.unsigned_activations, target=trained_for,
    )
    qat.load_weights(str(run.weights_file(method.name)))
    return qat, trained_for


def measure(args, method_name: str, run, float_model) -> list[dict]:
    import tfqat
    from tfqat.flowers.methods import method as find_method
    from tfqat.tflite import export, litert
    from tfqat.tflite.micro import measure_arena

    method = find_method(method_name)
    path = Path(args.export_dir) / method.file
    content = path.read_bytes()
    qat, trained_for = trained_qat(method, run, float_model, content)
    if export.convert_int8(qat) != export.convert_int8(tfqat.retarget(qat, trained_for)):
        raise SystemExit("retargeting changed the int8 file")
    io = litert.describe(content)
    spec, out = io.inputs[0], io.outputs[0]
    images, labels = run.test_images, run.test_labels
    quantized = litert.quantize(images, spec)
    arena = measure_arena(content)
    rows = []
    for target in args.targets:
        keras_model = tfqat.retarget(qat, target)
        expected = keras_steps(keras_model, images, out.scale, out.zero_point)
        got, latency = run_runtime(path, target, quantized, args.latency_images)
        executed, ties = run_executor(path, target, quantized, args.executor_images)
        rows.append({
            "model": method.file, "trained_for": trained_for, "runtime": target, "images": len(images),
            "accuracy": float(np.mean(got.argmax(-1) == labels)),
            "keras_accuracy": float(np.mean(expected.argmax(-1) == labels)),
            "elements": int(got.size), "mismatched": int(np.count_nonzero(got != expected)),
            "max_steps": int(np.abs(got - expected).max()),
            "top1_agreement": float(np.mean(got.argmax(-1) == expected.argmax(-1))),
            "executor_images": args.executor_images,
            "executor_mismatched": int(np.count_nonzero(executed != got[: args.executor_images])),
            "executor_ties": ties, "latency_ms": 1000 * latency,
            "flash_bytes": len(content), "arena_bytes": arena if target == "micro" else None,
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [
        "# Every runtime side by side: the published QAT models",
        "",
        f"Command: `{result['command']}`. ai-edge-litert {result['versions']['ai-edge-litert']}, tflite-micro "
        f"{result['versions']['tflite-micro']}, {result['host']}. Test split of the run: {result['images']} "
        "images. Latency: one image at a time, one thread, median over the first "
        f"{result['latency_images']} (this host's, not a phone's or a microcontroller's).",
        "",
        "Each runtime runs the published .tflite file; the Keras model is the QAT model with the file's "
        "trained weights retargeted to that runtime (`tfqat.retarget`: the same weights and int8 file, that "
        "runtime's rounding). Mismatched: int8 output elements where the runtime and that Keras model "
        "differ. Executor: `tfqat execute` in the target's mode against the runtime on the first "
        f"{result['executor_images']} images, and the requantizations it met that lay exactly halfway.",
        "",
        "| model | runtime | accuracy (runtime) | accuracy (Keras for it) | mismatched elements | top-1 agreement "
        "| executor: mismatched / ties | latency (ms) | flash bytes | TFLM arena bytes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        arena = "-" if r["arena_bytes"] is None else f"{r['arena_bytes']:,}"
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['accuracy']:.4f} | {r['keras_accuracy']:.4f} "
            f"| {r['mismatched']} of {r['elements']} | {r['top1_agreement']:.4f} "
            f"| {r['executor_mismatched']} / {r['executor_ties']:,} | {r['latency_ms']:.1f} "
            f"| {r['flash_bytes']:,} | {arena} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/flowers", help="the run folder that trained the published models")
    parser.add_argument("--data", default="/work/shared/data/flower_photos")
    parser.add_argument("--export-dir", default=str(ROOT / "export"), help="where the published files are")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--methods", default=",".join(PUBLISHED_QAT))
    parser.add_argument("--targets", default=",".join(TARGETS_RUN))
    parser.add_argument("--executor-images", type=int, default=256)
    parser.add_argument("--latency-images", type=int, default=32)
    args = parser.parse_args()
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = set(args.targets) - set(TARGETS_RUN)
    if unknown:
        parser.error(f"--targets {sorted(unknown)}: choose from {','.join(TARGETS_RUN)}")

    from importlib.metadata import version

    run = load_run(args.run, args.data)
    float_model = run.float_model()
    rows = []
    for name in args.methods.split(","):
        rows += measure(args, name, run, float_model)
    result = {
        "command": "python " + " ".join(["benchmarks/runtimes.py", *sys.argv[1:]]),
        "versions": {name: version(name) for name in ("ai-edge-litert", "tflite-micro", "tensorflow")},
        "host": f"{platform.machine()} {platform.system()}, Python {platform.python_version()}",
        "images": len(run.test_images), "executor_images": args.executor_images,
        "latency_images": args.latency_images, "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runtimes.json").write_text(json.dumps(result, indent=1))
    (out / "runtimes.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
