"""tfqat's int8 export: fully int8, power-of-two, shift-only, agrees with Keras, written atomically."""

from tfqat._keras import keras

import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.tflite import export, litert, verify
from tfqat.flowers import baselines
from tfqat import files
from tfqat.tflite.agreement import keras_tflite_agreement

SIZE = 48
CLASSES = ("a", "b", "c", "d", "e")


def _classifier(seed=0):
    """A tiny MobileNetV2 classifier with non-trivial BN statistics, nested as transfer learning does."""
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(alpha=0.35, input_shape=(SIZE, SIZE, 3), weights=None, include_top=False)
    rng = np.random.default_rng(seed)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 2.0, var.shape),
            ])
    inputs = keras.Input((SIZE, SIZE, 3))
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.Model(inputs, keras.layers.Dense(len(CLASSES))(x))


def _images(count, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (count, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module", params=[False, True], ids=["per_tensor", "per_channel"])
def exported(request, tmp_path_factory):
    float_model = _classifier()
    qat = tfqat.quantize_model(float_model, per_channel=request.param)
    tfqat.calibrate(qat, tf.data.Dataset.from_tensor_slices(_images(64)).batch(16))
    path = tfqat.export_tflite(qat, tmp_path_factory.mktemp("export") / "model.tflite", labels=CLASSES)
    return float_model, qat, path, request.param


def test_int8_input_and_output(exported):
    _, _, path, _ = exported
    io = litert.describe(path)
    assert [spec.dtype for spec in io.inputs + io.outputs] == ["int8", "int8"]
    assert all(spec.zero_point == 0 for spec in io.inputs + io.outputs)


def test_every_scale_power_of_two_and_every_requantization_a_shift(exported):
    _, _, path, per_channel = exported
    report = verify.verify_tflite(path)
    assert report.passed, report.failures
    # The one named exception is the global average pool's division by 2*2 = 4 at 48 px:
    # a power of two here, so even the MEAN is a shift; anything listed must be a MEAN.
    assert all("MEAN" in line for line in report.exceptions)
    weights = [t for t in report.tensors if t.role == "weight"]
    assert weights and all(len(t.scales) >= 1 for t in weights)
    if per_channel:
        assert any(len(t.scales) > 1 for t in weights)
    else:
        assert all(len(t.scales) == 1 for t in weights)


def test_keras_and_tflite_agree_on_mobilenet(exported):
    """Every conv, depthwise and Add rounds as LiteRT does, so the only difference left is LiteRT's
    MEAN (global average pooling), which tfqat does not emulate: one step at the pooled tensor,
    which the Dense layer scales up. This random network's logits are tiny, so its output step
    (2**-8) is fine next to the pooled step and the difference shows as a few output steps
    (measured: max 4 and mean 1.8 per-tensor, max 3 and mean 1.1 per-channel; on the trained
    flowers model, max 1 step). The top-1 class agrees."""
    _, qat, path, _ = exported
    report = keras_tflite_agreement(qat, path, _images(64, seed=7))
    assert report.top1_agreement >= 0.95
    assert report.max_steps <= 6
    assert report.mean_steps <= 2.5


def test_keras_and_tflite_agree_on_a_shallow_network_up_to_the_mean(tmp_path):
    """Conv and depthwise outputs are requantized exactly as LiteRT does, so everything up to the
    global average pool matches bit for bit (tests/test_linking.py checks that without a MEAN).
    LiteRT's MEAN divides by 144 with its own fixed-point multiplier, which tfqat does not emulate:
    the pooled value can be one step off, and the Dense layer after it scales that step by the
    sum of its quantized weights; here that is at most a few output steps (measured: 3)."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(epsilon=1e-3)(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    qat = tfqat.quantize_model(model)
    images = np.random.default_rng(0).uniform(-1, 1, (64, 16, 16, 3)).astype(np.float32)
    tfqat.calibrate(qat, [images])
    path = tfqat.export_tflite(qat, tmp_path / "shallow.tflite")
    assert verify.verify_tflite(path).passed
    report = keras_tflite_agreement(qat, path, images)
    assert report.max_steps <= 4
    assert report.mean_steps <= 0.5
    assert report.top1_agreement >= 0.95


def test_labels_travel_with_the_model(exported):
    _, _, path, _ = exported
    assert export.read_labels_metadata(path.read_bytes()) == list(CLASSES)
    assert export.labels_path(path).read_text().split() == list(CLASSES)


def test_failed_export_leaves_no_file_and_keeps_the_old_one(exported, tmp_path, monkeypatch):
    _, qat, _, _ = exported

    def broken(*args, **kwargs):
        raise export.ExportError("TFLite conversion failed: simulated")

    monkeypatch.setattr(export, "convert_int8", broken)
    target = tmp_path / "model.tflite"
    with pytest.raises(export.ExportError):
        export.export_tflite(qat, target)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"previous model")
    with pytest.raises(export.ExportError):
        export.export_tflite(qat, target)
    assert target.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_write_interrupted_midway_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"previous")

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        files.write_atomic(target, b"new content")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_tflite_ptq_peer_fails_the_verifier(exported):
    float_model, _, _, _ = exported
    report = verify.verify_tflite(baselines.convert_tflite_ptq(float_model, _images(8)))
    assert not report.passed
    assert any("power of two" in line for line in report.failures)


def test_tfmot_default_qat_peer_is_not_power_of_two(exported):
    float_model, _, _, _ = exported
    peer = baselines.tfmot_default_qat(float_model)
    peer(_images(4), training=True)  # set its moving-average ranges from data
    report = verify.verify_tflite(export.convert_int8(peer))
    assert not report.passed
    assert any("power of two" in line for line in report.failures)


def test_export_rejects_a_non_keras_model(tmp_path):
    with pytest.raises(TypeError, match="tf_keras"):
        tfqat.export_tflite(object(), tmp_path / "x.tflite")


def test_export_refuses_a_model_that_is_not_shift_only(exported, tmp_path):
    """TFMOT's default QAT model converts fine but its scales are not powers of two: nothing is written."""
    float_model, _, _, _ = exported
    peer = baselines.tfmot_default_qat(float_model)
    peer(_images(4), training=True)
    with pytest.raises(export.ExportError, match="not shift-only"):
        tfqat.export_tflite(peer, tmp_path / "peer.tflite")
    assert list(tmp_path.iterdir()) == []
