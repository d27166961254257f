"""What a trained-threshold (TQT) train step pays for: the step with and without the thresholds' gradient.

    python benchmarks/tqt_ablation.py

Times train steps (batch 32, MobileNetV2 at 224 px with random weights, as benchmarks/run.py builds it) of
the float model, tfqat's range-based QAT, TQT, TQT whose custom gradient returns zero for its thresholds
(the values' gradient unchanged), and TQT whose backward pass is one fused XLA pass (the candidate to
replace `tqt.tqt_fake_quant`'s gradient once the study that pins the training code has ended; checked
against it before timing), interleaved, 3 repeats of 3 steps; prints each median step and its ratio to
float. Not part of the test suite; run it with nothing else on the machine.
"""

import math
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


def _fused_gradients(qmin: int, qmax: int, per_channel: bool):
    """dx and the log2-threshold's gradient in one XLA pass over dy and x, without temporaries in memory.

    Inside the range dx = dy and the threshold's local gradient is ln2 (y - x); where x clips, dx = 0 and it is
    ln2 y. So the threshold's gradient is ln2 sum(dy (y - x_inside)), with y recomputed from x (FakeQuant's
    round-half-up at a power-of-two scale, exact) instead of read back from memory.
    """

    @tf.function(jit_compile=True)
    def gradients(dy, x, scale):
        low, high = qmin * scale, qmax * scale
        inside = tf.logical_and(x >= low, x <= high)
        y = tf.clip_by_value(tf.floor(x / scale + 0.5), qmin, qmax) * scale
        axes = list(range(x.shape.rank - 1)) if per_channel else None
        threshold = math.log(2.0) * tf.reduce_sum(dy * (y - tf.where(inside, x, 0.0)), axis=axes)
        return tf.where(inside, dy, 0.0), threshold

    return gradients


def fused_tqt_fake_quant(values, log2_threshold, qmin: int, qmax: int):
    """`tqt.tqt_fake_quant` with the same forward pass and its backward pass fused (`_fused_gradients`)."""
    values = tf.convert_to_tensor(values, tf.float32)
    log2_threshold = tf.convert_to_tensor(log2_threshold, tf.float32)
    per_channel = log2_threshold.shape.rank == 1
    gradients = _fused_gradients(qmin, qmax, per_channel)

    @tf.custom_gradient
    def quantize(x, log2_t):
        scale = tf.pow(2.0, tqt.exponent_from_log2_threshold(log2_t, qmin == 0))
        y = tqt._fake_quant(x, scale, qmin, qmax, per_channel)
        return y, lambda dy: gradients(dy, x, scale)

    return quantize(values, log2_threshold)


def check_fused_gradients() -> None:
    """Stops the benchmark unless the fused gradients are tfqat's: dx bit for bit, the threshold's to 1e-5."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(0, 2, (8, 28, 28, 32)), tf.float32)
    dy = tf.constant(rng.normal(0, 1, (8, 28, 28, 32)), tf.float32)
    for log2_t, (qmin, qmax) in ((tf.constant(2.5), (-128, 127)), (tf.constant(np.linspace(0.5, 3.5, 32), tf.float32), (-127, 127)),
                                 (tf.constant(1.5), (0, 255))):
        results = []
        for quantize in (tqt.tqt_fake_quant, fused_tqt_fake_quant):
            with tf.GradientTape() as tape:
                tape.watch([x, log2_t])
                y = quantize(x, log2_t, qmin, qmax)
            results.append(tape.gradient(y, [x, log2_t], output_gradients=dy))
        (dx, dt), (fused_dx, fused_dt) = results
        if not np.array_equal(dx.numpy(), fused_dx.numpy()):
            raise SystemExit(f"fused values' gradient differs from tfqat's (qmin {qmin}, qmax {qmax})")
        if not np.allclose(dt.numpy(), fused_dt.numpy(), rtol=1e-5, atol=1e-5 * float(np.abs(dt.numpy()).max())):
            raise SystemExit(f"fused threshold gradient {fused_dt.numpy()} is not tfqat's {dt.numpy()}")


def main() -> None:
    check_fused_gradients()
    images = np.random.default_rng(0).uniform(-1, 1, (32, 224, 224, 3)).astype("float32")
    labels = np.arange(32) % 5
    original = tqt.tqt_fake_quant
    models = {}
    variants = {"tqt_without_threshold_gradient": without_threshold_gradient, "tqt_fused": fused_tqt_fake_quant}
    for name, quantize in (("float", None), ("tfqat", {}), ("tqt", {"trained_thresholds": True}),
                           ("tqt_without_threshold_gradient", {"trained_thresholds": True}),
                           ("tqt_fused", {"trained_thresholds": True})):
        tqt.tqt_fake_quant = variants.get(name, original)
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
