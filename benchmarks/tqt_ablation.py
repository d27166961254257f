"""What a trained-threshold (TQT) train step pays for: the step with and without the thresholds' gradient.

    python benchmarks/tqt_ablation.py

Times train steps (batch 32, MobileNetV2 at 224 px with random weights, as benchmarks/run.py builds it) of
the float model, tfqat's range-based QAT, TQT, and TQT whose custom gradient returns zero for its thresholds
(the values' gradient unchanged), interleaved, 3 repeats of 3 steps; prints each median step and its ratio
to float. Not part of the test suite; run it with nothing else on the machine.
"""

import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

import tensorflow as tf  # noqa: E402

import tfqat  # noqa: E402
from tfqat.quantization import tqt  # noqa: E402


def without_threshold_gradient(values, log2_threshold, qmin: int, qmax: int):
    """`tqt.tqt_fake_quant` with the same forward pass and values' gradient, and no threshold gradient."""
    values = tf.convert_to_tensor(values, tf.float32)
    log2_threshold = tf.convert_to_tensor(log2_threshold, tf.float32)
    per_channel = log2_threshold.shape.rank == 1

    @tf.custom_gradient
    def quantize(x, log2_t):
        scale = tf.pow(2.0, tqt.exponent_from_log2_threshold(log2_t, qmin == 0))
        y = tqt._fake_quant(x, scale, qmin, qmax, per_channel)

        def grad(dy):
            return tqt._fake_quant(x, scale, qmin, qmax, per_channel, gradient=dy), tf.zeros_like(log2_t)

        return y, grad

    return quantize(values, log2_threshold)


def main() -> None:
    images = np.random.default_rng(0).uniform(-1, 1, (32, 224, 224, 3)).astype("float32")
    labels = np.arange(32) % 5
    original = tqt.tqt_fake_quant
    models = {}
    for name, quantize in (("float", None), ("tfqat", {}), ("tqt", {"trained_thresholds": True}),
                           ("tqt_without_threshold_gradient", {"trained_thresholds": True})):
        tqt.tqt_fake_quant = without_threshold_gradient if name == "tqt_without_threshold_gradient" else original
        model = bench.classifier()
        models[name] = bench.compiled(model if quantize is None else tfqat.quantize_model(model, **quantize))
        models[name].train_on_batch(images, labels)  # traced now, with the function set above
    tqt.tqt_fake_quant = original
    seconds = bench.time_train_steps(models, images, labels, steps=3, repeats=3)
    base = statistics.median(seconds["float"])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name}: median step {median:.3f} s ({', '.join(f'{v:.3f}' for v in values)}), {median / base:.3f}x float")


if __name__ == "__main__":
    main()
