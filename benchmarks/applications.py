"""The power-of-two scheme on the Keras applications: quantize, one training step, export, verify, agree.

    python benchmarks/applications.py --out benchmarks/results

Each network is built small (random weights, BN statistics away from the identity, 5 classes, with
the softmax output the applications ship with, inputs in the range it takes: [-1, 1], or raw pixels
in [0, 255] for the networks that rescale their input themselves), quantized with
`tfqat.quantize_model`, calibrated on 32 random images, trained one step with
`model.fit`, exported with `tfqat.export_tflite` and checked with `tfqat.verify_tflite` and the
Keras-LiteRT agreement on 64 images. Writes `applications.md` and `applications.json`. The tests
(tests/test_applications.py) run the same `check` and assert on it.
"""

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tfqat
from tfqat._keras import keras
from tfqat.tflite import litert
from tfqat.tflite.agreement import keras_tflite_agreement

CLASSES = 5
IMAGES = 64
CALIBRATION_IMAGES = 32


def _app(name, **kwargs):
    def build(size, **overrides):
        constructor = getattr(keras.applications, name)
        return constructor(**{"input_shape": (size, size, 3), "weights": None, "classes": CLASSES, **kwargs, **overrides})

    return build


# Input ranges: preprocessed [-1, 1] images, or raw pixels for the networks that rescale their input themselves.
PREPROCESSED, PIXELS = (-1.0, 1.0), (0.0, 255.0)
# name -> (builder, input size, input range): the smallest sizes each network's strides allow, narrow where it can be.
NETWORKS = {
    "MobileNet": (_app("MobileNet", alpha=0.25), 64, PREPROCESSED),
    "MobileNetV2": (_app("MobileNetV2", alpha=0.35), 64, PREPROCESSED),
    "ResNet50": (_app("ResNet50"), 32, PREPROCESSED),
    "DenseNet121": (_app("DenseNet121"), 32, PREPROCESSED),
    "MobileNetV3Small": (_app("MobileNetV3Small", alpha=0.75), 64, PIXELS),
    "MobileNetV3Large": (_app("MobileNetV3Large", alpha=0.75), 64, PIXELS),
    "EfficientNetB0": (_app("EfficientNetB0"), 32, PIXELS),
}


def randomize_batch_norms(model, seed: int = 0) -> None:
    """BN statistics away from the identity, as after training, so folding has something to fold."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shapes = [w.shape for w in layer.get_weights()]
            values = [rng.uniform(0.5, 1.5, shapes[0]), rng.normal(0, 0.1, shapes[1])]
            layer.set_weights(values[: len(shapes) - 2] + [rng.normal(0, 0.1, shapes[-2]), rng.uniform(0.5, 1.5, shapes[-1])])


def sharpen_head(model, factor: float = 4.0) -> None:
    """Scale the classifier's kernel: a random network's class scores are nearly equal, and near-ties
    would make top-1 agreement measure ties rather than rounding (a trained head separates its classes)."""
    head = [layer for layer in model.layers if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))][-1]
    kernel, *rest = head.get_weights()
    head.set_weights([kernel * factor, *rest])


def check(name: str, out_dir: Path, *, size: int = None, trained: bool = True) -> dict:
    """Quantize, train one step, export, verify and compare one network; raises what quantize_model raises.

    `trained=False` is a user's first try: the network as built (untrained batch normalizations), calibrated
    only, no training step; `size` replaces the network's smallest input size.
    """
    build, smallest, (low, high) = NETWORKS[name]
    size = size or smallest
    keras.utils.set_random_seed(0)
    model = build(size)
    if trained:
        randomize_batch_norms(model)
    sharpen_head(model)
    rng = np.random.default_rng(1)
    images = rng.uniform(low, high, (IMAGES, size, size, 3)).astype(np.float32)
    start = time.perf_counter()
    qat = tfqat.quantize_model(model)
    tfqat.calibrate(qat, images[:CALIBRATION_IMAGES])
    if trained:
        # One eager step: tracing the train step of a 400-layer QAT model costs more than the step.
        qat.compile(keras.optimizers.Adam(1e-5), keras.losses.SparseCategoricalCrossentropy(), run_eagerly=True)
        qat.fit(images[:8], rng.integers(0, CLASSES, 8), batch_size=8, epochs=1, verbose=0)
    prepared = time.perf_counter() - start
    path = Path(out_dir) / f"{name}.tflite"
    start = time.perf_counter()
    tfqat.export_tflite(qat, path)
    export_seconds = time.perf_counter() - start
    report = tfqat.verify_tflite(path)
    [model_input] = litert.describe(path).inputs
    agreement = keras_tflite_agreement(qat, path, images)
    within_two = (agreement.histogram["0"] + agreement.histogram["1"] + agreement.histogram["2"]) / sum(
        agreement.histogram.values()
    )
    return {
        "network": name,
        "input_size": size,
        "layers": len(model.layers),
        "verified": report.passed,
        "not_shifts": sorted({line.split(" ")[2] for line in report.exceptions}),
        "int8_bytes": path.stat().st_size,
        "input_scale": model_input.scale,
        "input_zero_point": model_input.zero_point,
        "quantize_calibrate_train_seconds": prepared,
        "export_seconds": export_seconds,
        "top1_agreement": agreement.top1_agreement,
        "logits_within_2_steps": within_two,
        "max_steps": agreement.max_steps,
    }


def _range(name: str) -> str:
    low, high = NETWORKS[name][2]
    return f"[{low:g}, {high:g}]"


def markdown(rows) -> str:
    """The README's table: one row a network; the unsupported ones list the layer classes refused."""
    lines = [
        "| network (input px, range) | int8 input (scale, zero point) | ops that are not shifts | int8 file | export | Keras-LiteRT top-1 agreement (outputs within 2 steps; most steps apart) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if "unsupported" in row:
            refused = sorted(set(re.findall(r"\((\w+)\): ", row["unsupported"])))
            lines.append(f"| {row['network']} | | not yet supported; refused layers include {', '.join(refused)} | | | |")
            continue
        lines.append(
            f"| {row['network']} ({row['input_size']}, {_range(row['network'])}) | "
            f"{row['input_scale']:g}, {row['input_zero_point']} | {', '.join(row['not_shifts']) or 'none'} | "
            f"{row['int8_bytes'] / 1e6:.2f} MB | {row['export_seconds']:.1f} s | "
            f"{row['top1_agreement']:.3f} ({row['logits_within_2_steps']:.3f}; {row['max_steps']:.0f}) |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--networks", default=",".join(NETWORKS))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.networks.split(","):
            try:
                rows.append(check(name, Path(tmp)))
            except ValueError as error:
                rows.append({"network": name, "unsupported": str(error).splitlines()[0]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "applications.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown(rows)
    (args.out / "applications.md").write_text(f"{table}\n\nCommand: `python benchmarks/applications.py --out {args.out}`\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
