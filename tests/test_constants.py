"""Tests for tfqat.tflite.constants: constants the converter merges go back to their power-of-two scale."""

from tfqat._keras import keras

import numpy as np
import pytest
from tensorflow.lite.tools import flatbuffer_utils

import tfqat
from tfqat.quantization import pow2
from tfqat.tflite import constants
from tfqat.tflite.agreement import keras_tflite_agreement
from tfqat.tflite import export
from tfqat.tflite.export import convert_int8

layers = keras.layers


@pytest.mark.parametrize("value, exponent", [(3.0, -5), (1.0 / 6.0, -9), (127.0, 0), (127.5, 1), (0.0, -24), (2.0**-30, -24)])
def test_weight_exponent_is_the_smallest_that_holds_the_value(value, exponent):
    """The rule a constant is put back on the grid with: the weights' (tfqat.quantization.pow2)."""
    assert pow2.weight_exponent(value).numpy() == exponent


def test_values_on_a_power_of_two_grid_are_found_and_others_are_not():
    steps, exponent = constants.pow2_steps(np.array([3.0000000583]), 3.0 / 255.0)  # float32 scale 3/255 * 255
    assert (steps.tolist(), exponent) == ([96], -5)
    assert constants.pow2_steps(np.array([0.1]), 0.1 / 255.0) is None


def _hard_swish_twice():
    """Two MobileNetV3 hard-swish blocks: x * relu6(x + 3) * (1/6), each built from TFOpLambda layers."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for _ in range(2):
        x = layers.Conv2D(4, 3, padding="same")(x)
        x = layers.Multiply()([x, layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    return keras.Model(inputs, layers.Dense(5)(layers.GlobalAveragePooling2D()(x)))


def _f32(value) -> float:
    return float(np.float32(value))


def _operand_constants(tflite_bytes):
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    graph = model.subgraphs[0]
    found = []
    for op in graph.operators:
        for index in op.inputs:
            tensor = graph.tensors[index]
            data = model.buffers[tensor.buffer].data
            if data is not None and len(data) == 1:
                value = int(np.asarray(data, np.uint8).view(np.int8)[0])
                found.append((value, _f32(tensor.quantization.scale[0]), int(tensor.quantization.zeroPoint[0])))
    return found


def _calibrated(model):
    """The model quantized and calibrated on 32 random [-1, 1] images, and those images."""
    qat = tfqat.quantize_model(model)
    images = np.random.default_rng(1).uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
    tfqat.calibrate(qat, images)
    return qat, images


def _converted_as_is(qat, monkeypatch) -> bytes:
    """The converter's own int8 bytes, before tfqat puts merged constants back on their grid."""
    with monkeypatch.context() as patch:
        patch.setattr(export, "requantize_shared_constants", lambda tflite: (tflite, 0))
        return convert_int8(qat)


def test_merged_hard_sigmoid_constants_are_requantized_and_the_model_agrees(tmp_path, monkeypatch):
    qat, images = _calibrated(_hard_swish_twice())
    # The converter alone shares one tensor per value between both blocks and quantizes it by its own range.
    converted = _converted_as_is(qat, monkeypatch)
    assert not tfqat.verify_tflite(converted).passed
    assert sorted(set(_operand_constants(converted))) == [(127, _f32(85 / 512 / 255), -128), (127, _f32(3 / 255), -128)]
    _, changed = constants.requantize_shared_constants(converted)
    assert changed == 2
    path = tfqat.export_tflite(qat, tmp_path / "hard_swish.tflite")
    assert sorted(set(_operand_constants(path.read_bytes()))) == [(85, 2.0**-9, 0), (96, 2.0**-5, 0)]
    report = tfqat.verify_tflite(path)
    assert report.passed and not report.exceptions, report.summary()
    agreement = keras_tflite_agreement(qat, path, images)
    assert agreement.top1_agreement == 1.0 and agreement.max_steps <= 1


def _two_untrained_batch_norms_on_concatenations():
    """DenseNet's pattern: batch normalizations on concatenations (1x1 depthwise convolutions once folded),
    untrained, so both kernels are 1/sqrt(1 + eps) on 8 channels and round to the same 1.0."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    a, b = layers.Conv2D(4, 3, padding="same")(inputs), layers.Conv2D(4, 1)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(layers.Concatenate()([a, b])))
    y = layers.Conv2D(4, 1)(x)
    x = layers.ReLU()(layers.BatchNormalization()(layers.Concatenate()([y, a])))
    return keras.Model(inputs, layers.Dense(5)(layers.GlobalAveragePooling2D()(x)))


def test_merged_kernels_go_back_to_their_power_of_two_grid_with_their_biases(tmp_path, monkeypatch):
    """Per-tensor kernels (per-channel ones keep a FakeQuant range per channel and are not merged)."""
    qat, images = _calibrated(_two_untrained_batch_norms_on_concatenations())
    converted = _converted_as_is(qat, monkeypatch)
    report = tfqat.verify_tflite(converted)
    assert not report.passed and "per-channel scales that are not powers of two" in report.summary()
    assert constants.requantize_shared_constants(converted)[1] == 1
    path = tfqat.export_tflite(qat, tmp_path / "merged.tflite")
    report = tfqat.verify_tflite(path)
    assert report.passed, report.summary()
    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    kernels = {int(op.inputs[1]) for op in graph.operators if "depthwise" in graph.tensors[op.outputs[0]].name.decode().lower()}
    assert len(kernels) == 1  # still one shared tensor, now at 2**-6 holding 64 (1.0)
    kernel = graph.tensors[kernels.pop()]
    assert set(kernel.quantization.scale) == {2.0**-6}
    assert set(np.asarray(model.buffers[kernel.buffer].data, np.uint8).view(np.int8)) == {64}
    agreement = keras_tflite_agreement(qat, path, images)
    assert agreement.top1_agreement == 1.0 and agreement.max_steps == 0


def test_kernel_steps_keep_one_exponent_for_a_per_tensor_kernel_and_one_per_channel_otherwise():
    scales = np.array([1 / 127, 0.25 / 127])
    per_tensor = np.array([[1.0, -0.5], [0.25, 0.0]])  # channel 1 on the 2**-6 grid of the whole kernel
    steps, exponents = constants.kernel_steps(per_tensor, scales, axis=0)
    assert exponents.tolist() == [-6] and steps.tolist() == [[64, -32], [16, 0]]
    per_channel = np.array([[1.0, -0.5], [0.25, 3 * 2.0**-8]])  # 3 * 2**-8 lies on channel 1's grid only
    steps, exponents = constants.kernel_steps(per_channel, scales, axis=0)
    assert exponents.tolist() == [-6, -8] and steps.tolist() == [[64, -32], [64, 3]]
