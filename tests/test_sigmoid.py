"""Tests for tfqat.quantization.layers.Sigmoid: the QAT model's sigmoid rounds as LiteRT's int8 LOGISTIC table does."""

from tfqat._keras import keras

import numpy as np
import pytest

import tfqat
from tfqat.tflite import litert

layers = keras.layers


@pytest.mark.parametrize("exponent", [-12, -10, -7, -3, 0, 2])
def test_every_one_of_the_256_inputs_gives_litert_logistic_output(exponent, tmp_path):
    """An identity conv puts each of the 256 int8 steps at input scale 2**exponent into a sigmoid: Keras
    and LiteRT agree on every output step. (TF's own sigmoid gives 129 instead of 128 at x = 2**-7.)"""
    inputs = keras.Input((1, 1, 256))
    conv = layers.Conv2D(256, 1)
    model = keras.Model(inputs, layers.Activation("sigmoid")(conv(inputs)))
    conv.set_weights([np.eye(256, dtype=np.float32).reshape(1, 1, 256, 256), np.zeros(256, np.float32)])
    qat = tfqat.quantize_model(model)
    steps = np.arange(-128, 128, dtype=np.float32).reshape(1, 1, 1, 256) * 2.0**exponent
    tfqat.calibrate(qat, steps)
    path = tfqat.export_tflite(qat, tmp_path / "sigmoid.tflite")
    [output] = litert.describe(path).outputs
    assert (output.scale, output.zero_point) == (1.0 / 256.0, -128)
    _, raw = litert.predict(path, steps, return_raw=True)
    keras_steps = qat.predict(steps, verbose=0) * 256.0 - 128.0
    np.testing.assert_array_equal(keras_steps.ravel(), raw.ravel().astype(np.float64))


@pytest.mark.parametrize("exponent", [-12, -7, -3, 0, 2])
def test_for_tflite_micro_every_input_gives_its_fixed_point_logistic(exponent, tmp_path):
    """TFLite Micro computes LOGISTIC in gemmlowp fixed point, not with LiteRT's table: the QAT model for
    target "micro" gives TFLite Micro's output step for each of the 256 inputs."""
    from tfqat.integer.compare import RuntimeTensors

    inputs = keras.Input((1, 1, 256))
    conv = layers.Conv2D(256, 1)
    model = keras.Model(inputs, layers.Activation("sigmoid")(conv(inputs)))
    conv.set_weights([np.eye(256, dtype=np.float32).reshape(1, 1, 256, 256), np.zeros(256, np.float32)])
    qat = tfqat.quantize_model(model, target="micro")
    steps = np.arange(-128, 128, dtype=np.float32).reshape(1, 1, 1, 256) * 2.0**exponent
    tfqat.calibrate(qat, steps)
    path = tfqat.export_tflite(qat, tmp_path / "sigmoid.tflite")
    runtime = RuntimeTensors(path, "micro")
    [output] = [d["index"] for d in litert.load_interpreter(path).get_output_details()]
    raw = runtime.run([litert.quantize(steps, litert.describe(path).inputs[0])], [output])[output]
    keras_steps = qat.predict(steps, verbose=0) * 256.0 - 128.0
    np.testing.assert_array_equal(keras_steps.ravel(), raw.ravel().astype(np.float64))
    table = tfqat.retarget(qat, "builtin").predict(steps, verbose=0) * 256.0 - 128.0
    if exponent in (-7, 2):  # the table and the fixed point differ on 2 of the 256 inputs here (non-vacuity)
        assert np.count_nonzero(table.ravel() != raw.ravel()) > 0
