"""The seven Keras applications (tiny, random weights, as benchmarks/applications.py builds them, with logits
heads) on every runtime: the Keras model quantized for each target gives that runtime's int8 outputs bit for
bit, and the integer executor equals LiteRT's reference kernels and TFLite Micro on every tensor (MobileNetV3Large,
whose ops are MobileNetV3Small's, with --all-applications; so are DenseNet121 and ResNet50 whole, which the
default run cuts after their first stages: tests/sweeps.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from tfqat.integer.compare import RuntimeTensors, compare
from tfqat.integer.executor import IntegerModel
from tfqat.targets import TARGETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import applications  # noqa: E402
import executor as bench  # noqa: E402
import sweeps  # noqa: E402

RUNTIME_TARGETS = ("xnnpack", "builtin", "reference", "micro")
# MobileNetV3Large exports MobileNetV3Small's ops (hard-swish, squeeze-and-excitation gates), only more of them.
NETWORKS = sweeps.cases(applications.NETWORKS, left_out={"MobileNetV3Large"})
# `predict` (a traced graph, which Grappler may rewrite) checked equal to the eager call on one network of plain
# convolutions and one of gates and sigmoids; on all of them with --all-applications.
PREDICT_CHECKED = ("MobileNetV2", "EfficientNetB0")


def _calibrated(name, whole, **overrides):
    import tfqat
    from tfqat._keras import keras

    build, size, (low, high) = sweeps.network(name, whole)
    keras.utils.set_random_seed(0)
    model = build(size, **overrides)
    applications.randomize_batch_norms(model)
    applications.sharpen_head(model)
    qat = tfqat.quantize_model(model)
    images = np.random.default_rng(1).uniform(low, high, (16, size, size, 3)).astype(np.float32)
    tfqat.calibrate(qat, images[:8])
    return qat, images[8:]


@pytest.mark.parametrize("name", NETWORKS)
def test_each_target_is_bit_exact_and_the_executor_equals_every_tensor(name, tmp_path, all_applications):
    """Logits heads: the Keras model does not compute SOFTMAX's fixed point (the executor does: the op zoo of
    tests/test_integer_executor.py checks it on every runtime). Each target's model is called eagerly (tracing
    `predict` costs 20-45 s a model at this depth, the call under a second)."""
    import tfqat
    from tfqat.tflite import litert

    qat, images = _calibrated(name, all_applications, classifier_activation=None)
    path = tfqat.export_tflite(qat, tmp_path / f"{name}.tflite")
    assert tfqat.verify_tflite(path).passed, name
    io = litert.describe(path)
    quantized = litert.quantize(images, io.inputs[0])
    for target in RUNTIME_TARGETS:
        model = tfqat.retarget(qat, target)
        outputs = model(images, training=False).numpy()
        if target == RUNTIME_TARGETS[0] and (name in PREDICT_CHECKED or all_applications):
            np.testing.assert_array_equal(model.predict(images, verbose=0), outputs)
        expected = np.round(outputs / io.outputs[0].scale) + io.outputs[0].zero_point
        runtime = RuntimeTensors(path, TARGETS[target].runtime)
        [output] = [t.index for t in IntegerModel(path, ties=target).outputs]
        got = np.concatenate([runtime.run([x[None]], [output])[output] for x in quantized])
        assert np.count_nonzero(got.reshape(expected.shape) != expected) == 0, f"{name} on {target}"
    for runtime in ("reference", "micro"):
        program = IntegerModel(path, ties=runtime)
        agreement = compare(program, bench.random_inputs(program, 2), runtime)
        assert agreement.mismatched == 0, agreement.summary()
        assert len(agreement.tensors) == len(program.graph.operators)
