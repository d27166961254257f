"""Tests for tfqat.quantization.thresholds: trained-threshold (TQT) quantizers in a QAT model."""

from tfqat._keras import keras

import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.quantization import pow2, tqt
from tfqat.quantization.modes import tracing_for_export
from tfqat.quantization.quantizers import Pow2ActivationQuantizer, Pow2WeightQuantizer
from tfqat.quantization.tensors import quantized_tensors
from tfqat.quantization.thresholds import TQTActivationQuantizer, TQTWeightQuantizer, init_thresholds
from tfqat.tflite.agreement import keras_tflite_agreement


def _quantizers(model):
    """(quantizer, its variables, the weight it quantizes or None) of every quantized tensor."""
    return [(t.quantizer, t.variables, t.weight) for t in quantized_tensors(model)]


layers = keras.layers
SIZE = 16


def block_model(seed=0):
    """Conv + BN + ReLU6, depthwise + BN + ReLU6, a residual Add, pooling and logits: MobileNetV2's parts."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization(epsilon=1e-3)(x)
    x = layers.ReLU(6.0)(x)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization(epsilon=1e-3)(y)
    y = layers.ReLU(6.0)(y)
    y = layers.Conv2D(8, 1, use_bias=False)(y)
    y = layers.BatchNormalization(epsilon=1e-3)(y)
    x = layers.Add()([x, y])
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(5)(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights([
                rng.uniform(0.5, 1.5, channels), rng.normal(0.1, 0.3, channels),
                rng.normal(0, 0.2, channels), rng.uniform(0.2, 2.0, channels),
            ])
    return model


def images(n, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def _trained(per_channel, steps=3):
    qat = tfqat.quantize_model(block_model(), per_channel=per_channel, trained_thresholds=True)
    tfqat.calibrate(qat, images(32, 1))
    qat.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = images(16 * steps, 2), np.arange(16 * steps) % 5
    qat.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    return qat


@pytest.fixture(scope="module", params=[False, True], ids=["per_tensor", "per_channel"])
def trained(request):
    return _trained(request.param)


def test_every_quantizer_of_the_scheme_trains_its_threshold():
    qat = tfqat.quantize_model(block_model(), trained_thresholds=True)
    tfqat.calibrate(qat, images(32, 1))
    found = [q for q, _, _ in _quantizers(qat) if isinstance(q, (Pow2WeightQuantizer, Pow2ActivationQuantizer))]
    assert found and all(isinstance(q, (TQTWeightQuantizer, TQTActivationQuantizer)) for q in found)
    thresholds = [v for v in qat.trainable_variables if "log2_threshold" in v.name]
    assert len(thresholds) == len(found)
    before = [v.numpy().copy() for v in thresholds]
    qat.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(images(32, 2), np.arange(32) % 5, batch_size=16, epochs=1, verbose=0)
    moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, thresholds)]
    assert all(moved)


def test_at_its_start_a_tqt_model_computes_what_the_plain_power_of_two_model_does():
    float_model = block_model()
    x = images(32, 1)
    plain = tfqat.quantize_model(float_model)
    tfqat.calibrate(plain, x)
    trained = tfqat.quantize_model(float_model, trained_thresholds=True)
    tfqat.calibrate(trained, x)
    probe = images(8, 3)
    np.testing.assert_array_equal(trained(probe, training=False).numpy(), plain(probe, training=False).numpy())


def test_inference_quantizes_at_the_thresholds_scale(trained):
    for quantizer, variables, weight in _quantizers(trained):
        if isinstance(quantizer, TQTWeightQuantizer):
            exponent = quantizer.kernel_exponent(weight, variables)
            expected = quantizer.fake_quant(weight, exponent)
            np.testing.assert_array_equal(quantizer(weight, False, variables).numpy(), expected.numpy())
        elif isinstance(quantizer, TQTActivationQuantizer):
            exponent = quantizer.exponent(variables).numpy()
            t = quantizer.log2_threshold(variables).numpy()
            assert exponent == np.ceil(t) - 7


def test_init_thresholds_sets_the_plain_scales_of_weights_and_ranges():
    trained = _trained(per_channel=True)  # its own model: the module's fixture keeps its trained thresholds
    init_thresholds(trained)
    for quantizer, variables, weight in _quantizers(trained):
        if isinstance(quantizer, TQTWeightQuantizer):
            plain = Pow2WeightQuantizer(quantizer.per_channel, quantizer.kind).exponent(weight)
            np.testing.assert_array_equal(quantizer.kernel_exponent(weight, variables).numpy(), plain.numpy())
        elif isinstance(quantizer, TQTActivationQuantizer):
            plain = pow2.activation_exponent(variables["min_var"], variables["max_var"])
            assert quantizer.exponent(variables).numpy() == plain.numpy()


def test_trained_model_exports_shift_only_and_agrees_with_litert(trained, tmp_path):
    path = tfqat.export_tflite(trained, tmp_path / "tqt.tflite")
    report = tfqat.verify_tflite(path)
    assert report.passed, report.summary()
    agreement = keras_tflite_agreement(trained, path, images(64, 4))
    assert agreement.top1_agreement >= 0.99
    assert agreement.max_steps <= 1  # LiteRT's rounding is reproduced: at most one output step apart


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_thresholds_moved_to_other_scales_still_export_what_keras_computes(per_channel, tmp_path):
    """Training moves thresholds across bins; the export must follow: shift each by -2..+1 bins and compare."""
    qat = _trained(per_channel)
    rng = np.random.default_rng(3)
    moved = 0
    for quantizer, variables, weight in _quantizers(qat):
        if isinstance(quantizer, (TQTWeightQuantizer, TQTActivationQuantizer)):
            threshold = variables["log2_threshold"]
            before = quantizer.log2_threshold(variables).numpy()
            bins = rng.integers(-2, 2, np.shape(before)).astype(np.float32)
            threshold.assign(threshold + bins / quantizer.threshold_gain)
            after = quantizer.log2_threshold(variables).numpy()
            moved += int(np.sum(np.ceil(after) != np.ceil(before)))
    assert moved > 5  # many scales are no longer the calibrated ones
    path = tfqat.export_tflite(qat, tmp_path / "moved.tflite")
    assert tfqat.verify_tflite(path).passed
    agreement = keras_tflite_agreement(qat, path, images(64, 4))
    assert agreement.top1_agreement >= 0.99 and agreement.max_steps <= 1


def test_quantizers_round_trip_through_their_config():
    for quantizer in (
        TQTWeightQuantizer(per_channel=True, kind="depthwise", threshold_gain=50.0),
        TQTActivationQuantizer(ema_decay=0.9, threshold_gain=20.0),
    ):
        assert keras.utils.get_registered_name(type(quantizer)) == f"tfqat>{type(quantizer).__name__}"
        config = keras.utils.serialize_keras_object(quantizer)
        restored = keras.utils.deserialize_keras_object(config)
        assert type(restored) is type(quantizer) and restored == quantizer
        assert restored != type(quantizer)()


def test_saved_tqt_model_loads_with_identical_outputs(trained, tmp_path):
    path = str(tmp_path / "tqt.h5")
    trained.save(path)
    loaded = tfqat.load_model(path)
    x = images(8, 5)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), trained(x, training=False).numpy())


def test_export_graph_reads_scales_from_thresholds():
    """In the exported graph, the activation FakeQuant range is the threshold's, not the collected range."""
    qat = tfqat.quantize_model(block_model(), trained_thresholds=True)
    tfqat.calibrate(qat, images(32, 1))
    quantizer, variables, _ = next(
        (q, v, w) for q, v, w in _quantizers(qat) if isinstance(q, TQTActivationQuantizer)
    )
    variables["log2_threshold"].assign(variables["log2_threshold"] + 2.0 / quantizer.threshold_gain)
    with tracing_for_export(qat):
        out = tf.function(lambda x: quantizer(x, False, variables))(tf.constant([1e6, -1e6]))
    k = float(tqt.exponent_from_log2_threshold(quantizer.log2_threshold(variables)))
    np.testing.assert_array_equal(out.numpy(), [127 * 2.0**k, -128 * 2.0**k])


def test_bad_gain_is_a_clear_error():
    with pytest.raises(ValueError, match="threshold_gain"):
        TQTWeightQuantizer(threshold_gain=0.0)
    with pytest.raises(ValueError, match="threshold_gain"):
        TQTActivationQuantizer(threshold_gain=-1.0)


def test_calibration_sets_the_threshold_before_a_dense_softmax():
    """A Dense layer with its own softmax quantizes its logits before the softmax; calibration starts that
    threshold from the logits' range too (it once stayed at the placeholder range's)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(8, 3, kernel_initializer="ones")(inputs))
    model = keras.Model(inputs, layers.Dense(5, activation="softmax", kernel_initializer="ones")(x))
    qat = tfqat.quantize_model(model, trained_thresholds=True)
    tfqat.calibrate(qat, np.abs(images(16, 2)))  # logits about 8 * 27 * 0.5 = 108, far outside [-6, 6]
    [before] = [t for t in quantized_tensors(qat) if t.role == "before_activation"]
    calibrated = tqt.activation_log2_threshold(before.variables["min_var"], before.variables["max_var"], False)
    placeholder = tqt.activation_log2_threshold(-6.0, 6.0, False)
    assert float(calibrated) != float(placeholder)
    np.testing.assert_allclose(float(before.quantizer.own_log2_threshold(before.variables)), float(calibrated), rtol=1e-6)
