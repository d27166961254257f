"""Tiny TFLite test models, built in seconds so the tests need no tfqat exporter.

Four kinds, all on 12x12x3 images with 5 classes:
  * a power-of-two int8 model: a tf_keras graph with fake-quant ops at
    power-of-two ranges (conv 3x3 + bias + relu6, depthwise conv, add, global
    average pool, dense), converted by the TFLite converter in QAT mode;
  * the same graph converted with float input and output (partially int8);
  * the converter's own full-integer post-training quantization of a float
    model (its scales come from calibration, so they are not powers of two);
  * the same float model converted without quantization.
The 12x12 global average pool divides by 144, like MobileNetV2's 7x7 pool
divides by 49, so the MEAN exception is exercised with a non-power-of-two count.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

from tfqat._keras import keras

import tensorflow as tf  # noqa: E402  (after tfqat._keras selects tf_keras)

IMAGE_SHAPE = (12, 12, 3)
NUM_CLASSES = 5

# log2 of the activation scales of the power-of-two model. The input covers
# [-1, 127/128]; the relu6 outputs need 6 < 127 * 2**-4.
INPUT_LOG2 = -7
CONV_LOG2 = -4
ADD_LOG2 = -3
POOL_LOG2 = -3
OUTPUT_LOG2 = -3


def random_images(count: int, seed: int = 0) -> np.ndarray:
    """Uniform float32 images in [-1, 1), the range MobileNetV2 expects."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (count, *IMAGE_SHAPE)).astype(np.float32)


def write(folder: Path, name: str, content: bytes) -> Path:
    path = Path(folder) / name
    path.write_bytes(content)
    return path


class FakeQuant(keras.layers.Layer):
    """Activation fake-quant on [-128, 127] * 2**log2_scale: zero point 0, scale 2**log2_scale."""

    def __init__(self, log2_scale: int, **kwargs):
        super().__init__(**kwargs)
        self.log2_scale = log2_scale

    def call(self, x):
        step = 2.0**self.log2_scale
        return tf.quantization.fake_quant_with_min_max_args(x, min=-128 * step, max=127 * step, num_bits=8)

    def get_config(self):
        return {**super().get_config(), "log2_scale": self.log2_scale}


class FakeQuantLinear(keras.layers.Layer):
    """Conv2D, DepthwiseConv2D or Dense with a fake-quantized kernel and a float bias.

    Weights use narrow range [-127, 127] * 2**k, k = ceil(log2(max|w| / 127)),
    so each weight scale is exactly 2**k with zero point 0. The bias stays float:
    the converter quantizes it to int32 with scale input_scale * weight_scale.
    """

    def __init__(self, kind: str, kernel: np.ndarray, bias: np.ndarray, per_channel: bool, **kwargs):
        super().__init__(**kwargs)
        self.kind, self.per_channel = kind, per_channel
        self.kernel_value, self.bias_value = kernel, bias
        axes = tuple(range(kernel.ndim - 1)) if per_channel else None
        largest = np.abs(kernel).max(axis=axes)
        self.weight_scale = (2.0 ** np.ceil(np.log2(largest / 127))).astype(np.float32)

    def build(self, input_shape):
        constant = keras.initializers.Constant
        self.kernel = self.add_weight("kernel", self.kernel_value.shape, initializer=constant(self.kernel_value))
        self.bias = self.add_weight("bias", self.bias_value.shape, initializer=constant(self.bias_value))

    def call(self, x):
        low, high = -127 * self.weight_scale, 127 * self.weight_scale
        if self.per_channel:
            fake_quant = tf.quantization.fake_quant_with_min_max_vars_per_channel
        else:
            fake_quant = tf.quantization.fake_quant_with_min_max_vars
        kernel = fake_quant(self.kernel, low, high, num_bits=8, narrow_range=True)
        if self.kind == "conv":
            y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME")
        elif self.kind == "depthwise":
            y = tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="SAME")
        else:
            y = tf.matmul(x, kernel)
        y = tf.nn.bias_add(y, self.bias)
        return y if self.kind == "dense" else tf.nn.relu6(y)


def pow2_fake_quant_keras_model(seed: int = 0) -> keras.Model:
    """conv3x3+relu6 -> depthwise3x3+relu6 -> add -> global average pool -> dense, all fake-quantized."""
    rng = np.random.default_rng(seed)
    # Channel gains spread over ~3 octaves so per-channel weight scales differ.
    gains = 2.0 ** np.linspace(-2, 1, 8)
    conv_kernel = (rng.normal(0, 0.3, (3, 3, 3, 8)) * gains).astype(np.float32)
    dw_kernel = rng.normal(0, 0.3, (3, 3, 8, 1)).astype(np.float32)
    dense_kernel = rng.normal(0, 0.3, (8, NUM_CLASSES)).astype(np.float32)

    def bias(n):
        return rng.normal(0, 0.2, n).astype(np.float32)

    images = keras.Input(IMAGE_SHAPE, name="images")
    x = FakeQuant(INPUT_LOG2, name="input_fq")(images)
    c = FakeQuantLinear("conv", conv_kernel, bias(8), per_channel=True, name="conv")(x)
    c = FakeQuant(CONV_LOG2, name="conv_fq")(c)
    # Depthwise per-tensor: per-channel depthwise ranges are what TFMOT gets wrong.
    d = FakeQuantLinear("depthwise", dw_kernel, bias(8), per_channel=False, name="depthwise")(c)
    d = FakeQuant(CONV_LOG2, name="depthwise_fq")(d)
    a = FakeQuant(ADD_LOG2, name="add_fq")(keras.layers.Add(name="add")([c, d]))
    p = FakeQuant(POOL_LOG2, name="pool_fq")(keras.layers.GlobalAveragePooling2D(name="pool")(a))
    logits = FakeQuantLinear("dense", dense_kernel, bias(NUM_CLASSES), per_channel=False, name="dense")(p)
    logits = FakeQuant(OUTPUT_LOG2, name="logits_fq")(logits)
    return keras.Model(images, logits, name="pow2_fake_quant")


def float_keras_model(seed: int = 0) -> keras.Model:
    """The float counterpart (plus a softmax): conv, depthwise, add, pool, dense."""
    keras.utils.set_random_seed(seed)
    # Non-zero biases, as after training (zeros would be shared and trivially exact).
    def bias(offset):
        return keras.initializers.RandomNormal(0.0, 0.2, seed=seed + offset)

    images = keras.Input(IMAGE_SHAPE, name="images")
    c = keras.layers.Conv2D(8, 3, padding="same", activation="relu6", bias_initializer=bias(1), name="conv")(images)
    d = keras.layers.DepthwiseConv2D(
        3, padding="same", activation="relu6", bias_initializer=bias(2), name="depthwise"
    )(c)
    a = keras.layers.Add(name="add")([c, d])
    p = keras.layers.GlobalAveragePooling2D(name="pool")(a)
    probs = keras.layers.Dense(NUM_CLASSES, activation="softmax", bias_initializer=bias(3), name="dense")(p)
    return keras.Model(images, probs, name="tiny_float")


def _int8_converter(model: keras.Model) -> tf.lite.TFLiteConverter:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter


def _calibration_data():
    # TF 2.21 insists on a representative dataset whenever supported_ops is
    # TFLITE_BUILTINS_INT8, even for a fake-quant graph (its metrics wrapper
    # checks for fake-quant ops before it has the graph). For such a graph the
    # fake-quant ranges win: calibration changes no scale (test_verify checks).
    for seed in range(4):
        yield [random_images(1, seed=100 + seed)]


@functools.cache
def pow2_keras_model() -> keras.Model:
    return pow2_fake_quant_keras_model()


def _convert(converter: tf.lite.TFLiteConverter) -> bytes:
    with warnings.catch_warnings():
        # TF2 int8 conversion warns about the TF1-only quantized_input_stats; irrelevant here.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


@functools.cache
def pow2_int8_tflite() -> bytes:
    """(a) The fake-quant graph converted to a fully int8 model."""
    converter = _int8_converter(pow2_keras_model())
    converter.representative_dataset = _calibration_data
    return _convert(converter)


@functools.cache
def pow2_float_io_tflite() -> bytes:
    """The fake-quant graph with float input and output: int8 inside, QUANTIZE/DEQUANTIZE at the edges."""
    converter = tf.lite.TFLiteConverter.from_keras_model(pow2_keras_model())
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return _convert(converter)


@functools.cache
def tiny_float_keras_model() -> keras.Model:
    return float_keras_model()


@functools.cache
def ptq_int8_tflite() -> bytes:
    """(b) The converter's own full-integer post-training quantization."""
    converter = _int8_converter(tiny_float_keras_model())
    converter.representative_dataset = _calibration_data
    return _convert(converter)


@functools.cache
def float_tflite() -> bytes:
    """(c) The float model converted without any quantization."""
    return tf.lite.TFLiteConverter.from_keras_model(tiny_float_keras_model()).convert()


@functools.cache
def fixed_batch_float_tflite() -> bytes:
    """A float model whose RESHAPE to a constant [1, -1] breaks when the batch is resized."""

    @tf.function(input_signature=[tf.TensorSpec((1, *IMAGE_SHAPE), tf.float32)])
    def flatten_and_scale(images):
        return tf.reshape(images, [1, -1])[:, :NUM_CLASSES] * 2.0

    concrete = flatten_and_scale.get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], flatten_and_scale).convert()
