"""Tests for tfqat.post_training.bias_correction: the mean shift of weight rounding, measured and removed."""

from tfqat._keras import keras

import numpy as np
import pytest

import tfqat
from tfqat.post_training.bias_correction import kernel_layers, correct_biases, layer_response

from test_thresholds import block_model, images


def _one_by_one(kernel, bias):
    inputs = keras.Input((4, 4, 2))
    outputs = keras.layers.Conv2D(3, 1, use_bias=True)(inputs)
    model = keras.Model(inputs, outputs)
    model.layers[1].set_weights([kernel.reshape(1, 1, 2, 3), bias])
    return model


def test_a_planted_rounding_shift_is_removed_exactly():
    # Per-tensor scale 2**-6 (max |w| = 1.0 needs 127 steps of 1/64 -> k = -6): 0.3 rounds to 19/64, off by -0.2/64.
    kernel = np.array([[1.0, 0.3, -0.55], [0.2, -0.71, 0.05]], np.float32)
    model = _one_by_one(kernel, np.array([0.1, -0.2, 0.3], np.float32))
    qat = tfqat.quantize_model(model)
    # Inputs on the input quantizer's grid (2**-7 for [-1, 1)), so the quantized model sees exactly these.
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 127, (16, 4, 4, 2)) / 128).astype(np.float32)  # non-negative, as after a ReLU
    tfqat.calibrate(qat, x)
    (wrapper, kernel_var, quantizer, variables, bias_var), = kernel_layers(qat)
    quantized = quantizer(kernel_var, False, variables).numpy().reshape(2, 3)
    expected = (quantized - kernel).T @ x.reshape(-1, 2).mean(axis=0)  # 1x1 conv: shift = dW^T E[x]
    before = bias_var.numpy().copy()
    shifts = correct_biases(qat, x)
    np.testing.assert_allclose(shifts[wrapper.name], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bias_var.numpy(), before - expected, rtol=1e-5, atol=1e-7)
    assert np.abs(expected).max() > 1e-3  # the planted shift is real: about half a weight step
    # The quantized kernel with the corrected bias now has the float kernel's mean response on these inputs.
    corrected = layer_response(wrapper.layer, x, quantized.reshape(1, 1, 2, 3)).numpy() + bias_var.numpy()
    original = layer_response(wrapper.layer, x, kernel.reshape(1, 1, 2, 3)).numpy() + before
    np.testing.assert_allclose(corrected.mean(axis=(0, 1, 2)), original.mean(axis=(0, 1, 2)), atol=1e-5)  # float32 sums


def test_correction_brings_the_quantized_model_closer_to_float_and_still_exports_shift_only(tmp_path):
    float_model = block_model()
    x = images(64, 1)
    qat = tfqat.quantize_model(float_model)
    tfqat.calibrate(qat, x)
    probe = images(64, 7)
    reference = float_model(probe, training=False).numpy()
    error_before = np.abs((qat(probe, training=False).numpy() - reference).mean(axis=0)).max()
    shifts = correct_biases(qat, x)
    assert len(shifts) == 4  # conv, depthwise, projection conv, dense
    error_after = np.abs((qat(probe, training=False).numpy() - reference).mean(axis=0)).max()
    assert error_after <= error_before
    assert tfqat.verify_tflite(tfqat.export_tflite(qat, tmp_path / "bc.tflite")).passed


def test_bad_input_is_a_clear_error():
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no quantized conv/dense layer"):
        correct_biases(plain, np.zeros((2, 4), np.float32))
    qat = tfqat.quantize_model(block_model())
    with pytest.raises(ValueError):
        correct_biases(qat, np.zeros((0, 16, 16, 3), np.float32))


def test_ptq_is_equalize_quantize_calibrate_and_round_in_one_call():
    float_model = block_model()
    x = images(32, 1)
    one_call = tfqat.ptq(float_model, x, verbose=False)
    equalized = tfqat.equalize(float_model, x)
    by_hand = tfqat.quantize_model(equalized)
    tfqat.calibrate(by_hand, x)
    tfqat.adaround(by_hand, equalized, x, verbose=False)
    for a, b in zip(one_call.get_weights(), by_hand.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    corrected = tfqat.ptq(float_model, x, adaround=False)
    by_hand = tfqat.quantize_model(equalized)
    tfqat.calibrate(by_hand, x)
    correct_biases(by_hand, x)
    for a, b in zip(corrected.get_weights(), by_hand.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    plain = tfqat.ptq(float_model, x, equalize=False, bias_correction=False, adaround=False)
    reference = tfqat.quantize_model(float_model)
    tfqat.calibrate(reference, x)
    for a, b in zip(plain.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="one-pass iterator"):
        tfqat.ptq(float_model, iter([x]))
