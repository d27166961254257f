"""Benchmarks: training-step cost of QAT, int8 latency, file sizes, conversion time, peak memory.

Every figure is a ratio measured side by side in the same run (the machine is
shared, absolute times drift), repeated and reported as min/median/max:

    python benchmarks/run.py --out benchmarks/results

writes results.json and summary.md there. Models are MobileNetV2 (alpha 1.0,
224 px, 5 classes) with random weights: speed and size do not depend on the
values. Not part of the test suite.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tfqat._keras import keras

import numpy as np
import tensorflow as tf

import tfqat
from tfqat.tflite import export, litert
from tfqat.flowers import baselines

TARGETS = {
    "train_step_tfqat_vs_float": ("<=", 1.3),
    "train_step_tfqat_tqt_vs_float": ("<=", 1.3),
    "train_step_tfqat_vs_tfmot": ("<=", 1.0),
    "latency_tfqat_int8_vs_float_1_thread": ("<=", 0.6),
    "latency_tfqat_int8_vs_float_2_threads": ("<=", 0.6),
    "size_tfqat_int8_vs_float": ("<=", 0.3),
}


def classifier(image_size=224):
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(input_shape=(image_size, image_size, 3), include_top=False, weights=None)
    inputs = keras.Input((image_size, image_size, 3))
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.Model(inputs, keras.layers.Dense(5)(x))


def compiled(model):
    model.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def spread(values):
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": len(values)}


def time_train_steps(models, images, labels, steps, repeats):
    """Seconds per train step of each model, interleaved so drift hits all alike."""
    for model in models.values():  # compile the step functions
        model.train_on_batch(images, labels)
        model.train_on_batch(images, labels)
    seconds = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(images, labels)
            seconds[name].append((time.perf_counter() - start) / steps)
    return seconds


def time_latency(tflite_models, image, threads, invokes, repeats):
    """Seconds per batch-1 invoke of each TFLite model with LiteRT's default (XNNPACK) kernels."""
    runners = {}
    for name, content in tflite_models.items():
        interpreter = litert.load_interpreter(content, num_threads=threads, kernels="xnnpack")
        interpreter.allocate_tensors()
        spec = litert.describe(interpreter).inputs[0]
        feed = litert.quantize(image, spec) if spec.quantized else image
        index = interpreter.get_input_details()[0]["index"]
        interpreter.set_tensor(index, feed)
        for _ in range(5):
            interpreter.invoke()
        runners[name] = interpreter
    seconds = {name: [] for name in runners}
    for _ in range(repeats):
        for name, interpreter in runners.items():
            start = time.perf_counter()
            for _ in range(invokes):
                interpreter.invoke()
            seconds[name].append((time.perf_counter() - start) / invokes)
    return seconds


PEAK_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    sys.path.insert(0, {here!r})
    import numpy as np
    import run as bench
    import tfqat
    from tfqat.flowers import baselines
    kind = sys.argv[1]
    model = bench.classifier()
    if kind == "tfqat":
        model = tfqat.quantize_model(model)
    elif kind == "tfmot":
        model = baselines.tfmot_default_qat(model)
    bench.compiled(model)
    images = np.random.default_rng(0).uniform(-1, 1, (32, 224, 224, 3)).astype("float32")
    labels = np.arange(32) % 5
    for _ in range(3):
        model.train_on_batch(images, labels)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    """
)


def peak_training_memory(kind):
    """Peak resident memory (bytes) of a fresh process that builds a model and trains 3 steps."""
    script = PEAK_MEMORY_SCRIPT.format(here=str(Path(__file__).resolve().parent))
    done = subprocess.run(
        [sys.executable, "-c", script, kind], capture_output=True, text=True, check=True, timeout=900
    )
    return int(done.stdout.strip().splitlines()[-1])


def ratios(seconds, numerator, denominator):
    return spread([a / b for a, b in zip(seconds[numerator], seconds[denominator])])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="train steps per timing")
    parser.add_argument("--invokes", type=int, default=30, help="TFLite invokes per timing")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (32, 224, 224, 3)).astype(np.float32)
    labels = np.arange(32) % 5

    float_model = compiled(classifier())
    tfqat_model = tfqat.quantize_model(float_model)
    tfqat.calibrate(tfqat_model, [images])
    tqt_model = tfqat.quantize_model(float_model, trained_thresholds=True)
    tfqat.calibrate(tqt_model, [images])
    tfmot_model = baselines.tfmot_default_qat(float_model)
    compiled(tfqat_model), compiled(tqt_model), compiled(tfmot_model)
    models = {"float": float_model, "tfqat": tfqat_model, "tfqat_tqt": tqt_model, "tfmot": tfmot_model}
    step = time_train_steps(models, images, labels, args.steps, args.repeats)

    conversion = {}
    start = time.perf_counter()
    float_tflite = export.convert_float(float_model)
    conversion["float"] = time.perf_counter() - start
    start = time.perf_counter()
    tfqat_tflite = export.convert_int8(tfqat_model)
    conversion["tfqat_int8"] = time.perf_counter() - start
    start = time.perf_counter()
    ptq_tflite = baselines.convert_tflite_ptq(float_model, images[:16])
    conversion["tflite_ptq_int8"] = time.perf_counter() - start
    tflite = {"float": float_tflite, "tfqat_int8": tfqat_tflite, "tflite_ptq_int8": ptq_tflite}
    latency = {
        threads: time_latency(tflite, images[:1], threads, args.invokes, args.repeats) for threads in (1, 2)
    }
    memory = {kind: peak_training_memory(kind) for kind in ("float", "tfqat", "tfmot")}

    thread_names = {1: "1_thread", 2: "2_threads"}
    figures = {
        "train_step_tfqat_vs_float": ratios(step, "tfqat", "float"),
        "train_step_tfqat_tqt_vs_float": ratios(step, "tfqat_tqt", "float"),
        "train_step_tfmot_vs_float": ratios(step, "tfmot", "float"),
        "train_step_tfqat_vs_tfmot": ratios(step, "tfqat", "tfmot"),
        **{
            f"latency_{name}_vs_float_{thread_names[t]}": ratios(latency[t], name, "float")
            for t in (1, 2)
            for name in ("tfqat_int8", "tflite_ptq_int8")
        },
        "size_tfqat_int8_vs_float": len(tfqat_tflite) / len(float_tflite),
        "size_tflite_ptq_int8_vs_float": len(ptq_tflite) / len(float_tflite),
        "peak_memory_tfqat_vs_float_training": memory["tfqat"] / memory["float"],
        "peak_memory_tfmot_vs_float_training": memory["tfmot"] / memory["float"],
    }
    results = {
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": {"tensorflow": tf.__version__, "tfqat": tfqat.__version__},
        "ratios": figures,
        "targets": {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()},
        "seconds": {
            "train_step": {k: spread(v) for k, v in step.items()},
            "latency": {thread_names[t]: {k: spread(v) for k, v in latency[t].items()} for t in latency},
            "conversion": conversion,
            "total": time.time() - started,
        },
        "bytes": {
            "tflite": {k: len(v) for k, v in tflite.items()},
            "peak_training_memory": memory,
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "summary.md").write_text(summary(results))
    print(summary(results))


def _median(value):
    return value["median"] if isinstance(value, dict) else value


def summary(results):
    lines = [
        "| measure (ratio, same run) | min | median | max | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, value in results["ratios"].items():
        target = results["targets"].get(name)
        verdict = ""
        if target:
            ok = _median(value) <= target["value"]
            verdict = f"{target['op']} {target['value']} ({'met' if ok else 'missed'})"
        if isinstance(value, dict):
            lines.append(f"| {name} | {value['min']:.3f} | {value['median']:.3f} | {value['max']:.3f} | {verdict} |")
        else:
            lines.append(f"| {name} | | {value:.3f} | | {verdict} |")
    conversion = results["seconds"]["conversion"]
    sizes = results["bytes"]["tflite"]
    lines += [
        "",
        "Conversion seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in conversion.items()),
        "File sizes: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()),
        "Median step seconds: "
        + ", ".join(f"{k} {v['median']:.3f}" for k, v in results["seconds"]["train_step"].items()),
        f"Total benchmark time: {results['seconds']['total']:.0f} s. Command: `{results['command']}`",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
