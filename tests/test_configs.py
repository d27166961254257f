"""Tests for tfqat.quantization.configs: which weights and outputs of a layer get which quantizer."""

from tfqat._keras import keras

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfqat.quantization import configs
from tfqat.quantization.configs import (
    FixedOutputQuantizeConfig,
    KernelQuantizeConfig,
    OutputQuantizeConfig,
    PassThroughQuantizeConfig,
)
from tfqat.quantization.quantizers import Pow2ActivationQuantizer, Pow2BiasQuantizer, Pow2WeightQuantizer

_FixedQuantizer = tfmot.quantization.keras.quantizers.FixedQuantizer
QuantizeWrapperV2 = tfmot.quantization.keras.QuantizeWrapperV2

# (layer factory, input shape, kernel attribute, quantizer kind)
KERNEL_LAYERS = {
    "conv": (lambda act: keras.layers.Conv2D(4, 3, activation=act), (1, 6, 6, 3), "kernel", "conv"),
    "depthwise": (
        lambda act: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation=act),
        (1, 6, 6, 3),
        "depthwise_kernel",
        "depthwise",
    ),
    "dense": (lambda act: keras.layers.Dense(5, activation=act), (1, 7), "kernel", "dense"),
}

# TFLite's int8 kernels: softmax/logistic output scale 1/256 zero point -128, tanh 1/128 zero point 0.
FIXED_SCALES = {"softmax": (1 / 256, -128), "sigmoid": (1 / 256, -128), "tanh": (1 / 128, 0)}


def built(kind, activation="linear", use_bias=True):
    factory, shape, _, _ = KERNEL_LAYERS[kind]
    layer = factory(activation)
    layer.use_bias = use_bias
    layer.build((None,) + shape[1:])
    return layer


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", sorted(KERNEL_LAYERS))
def test_kernel_config_quantizes_the_kernel_and_the_bias(kind, per_channel):
    layer = built(kind)
    config = KernelQuantizeConfig(per_channel=per_channel)
    [(weight, quantizer), (bias, bias_quantizer)] = config.get_weights_and_quantizers(layer)
    _, _, attribute, quantizer_kind = KERNEL_LAYERS[kind]
    assert weight is getattr(layer, attribute)
    # Dense stays per tensor: the converter transposes its kernel to (out, in).
    expected_per_channel = per_channel and kind != "dense"
    assert quantizer == Pow2WeightQuantizer(per_channel=expected_per_channel, kind=quantizer_kind)
    assert type(quantizer) is Pow2WeightQuantizer
    # The bias goes onto TFLite's int32 grid s_input * s_weight, once linked to the input's scale.
    assert bias is layer.bias
    assert type(bias_quantizer) is Pow2BiasQuantizer and bias_quantizer == Pow2BiasQuantizer()
    assert bias_quantizer.accumulator_exponent is None  # tfqat.quantization.linking sets it, not the config
    # A fresh bias quantizer per call, so linking one layer never links another.
    assert config.get_weights_and_quantizers(layer)[1][1] is not bias_quantizer


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", sorted(KERNEL_LAYERS))
def test_kernel_config_without_bias_quantizes_the_kernel_only(kind, per_channel):
    layer = built(kind, use_bias=False)
    assert layer.bias is None
    config = KernelQuantizeConfig(per_channel=per_channel)
    [(weight, quantizer)] = config.get_weights_and_quantizers(layer)
    _, _, attribute, quantizer_kind = KERNEL_LAYERS[kind]
    assert weight is getattr(layer, attribute)
    assert quantizer == Pow2WeightQuantizer(per_channel=per_channel and kind != "dense", kind=quantizer_kind)


@pytest.mark.parametrize("kind", sorted(KERNEL_LAYERS))
def test_kernel_config_sets_the_quantized_kernel_and_bias(kind):
    layer = built(kind)
    config = KernelQuantizeConfig()
    replacement = tf.zeros_like(getattr(layer, KERNEL_LAYERS[kind][2]))
    bias_replacement = tf.ones_like(layer.bias)
    config.set_quantize_weights(layer, [replacement, bias_replacement])
    assert getattr(layer, KERNEL_LAYERS[kind][2]) is replacement
    assert layer.bias is bias_replacement


@pytest.mark.parametrize("kind", sorted(KERNEL_LAYERS))
def test_kernel_config_without_bias_sets_the_quantized_kernel(kind):
    layer = built(kind, use_bias=False)
    config = KernelQuantizeConfig()
    replacement = tf.zeros_like(getattr(layer, KERNEL_LAYERS[kind][2]))
    config.set_quantize_weights(layer, [replacement])
    assert getattr(layer, KERNEL_LAYERS[kind][2]) is replacement
    assert layer.bias is None


@pytest.mark.parametrize("activation", ["linear", "relu", "softmax", "sigmoid", "tanh"])
@pytest.mark.parametrize("kind", sorted(KERNEL_LAYERS))
def test_kernel_config_output_quantizers(kind, activation):
    layer = built(kind, activation)
    config = KernelQuantizeConfig(quantize_output=True, ema_decay=0.9)
    [(act, quantizer)] = config.get_activations_and_quantizers(layer)
    assert act is layer.activation
    assert quantizer == Pow2ActivationQuantizer(0.9)
    outputs = config.get_output_quantizers(layer)
    if activation in FIXED_SCALES:
        [fixed] = outputs
        assert isinstance(fixed, _FixedQuantizer)
        assert (fixed.init_min, fixed.init_max) == configs.FIXED_OUTPUT_RANGES[activation]
    else:
        assert outputs == []


@pytest.mark.parametrize("kind", sorted(KERNEL_LAYERS))
def test_kernel_config_without_output_quantizer(kind):
    """A conv followed by a fused ReLU(6): no quantizer between them."""
    layer = built(kind, "linear")
    config = KernelQuantizeConfig(quantize_output=False)
    assert config.get_activations_and_quantizers(layer) == []
    assert config.get_output_quantizers(layer) == []
    before = layer.activation
    config.set_quantize_activations(layer, [])
    assert layer.activation is before
    # Kernel and bias are still quantized.
    assert [type(q) for _, q in config.get_weights_and_quantizers(layer)] == [Pow2WeightQuantizer, Pow2BiasQuantizer]


@pytest.mark.parametrize("activation", sorted(FIXED_SCALES))
def test_fixed_output_ranges_are_tflite_power_of_two_scales(activation):
    low, high = configs.FIXED_OUTPUT_RANGES[activation]
    scale, zero_point = FIXED_SCALES[activation]
    assert np.float32(high - low) / np.float32(255) == scale  # exact in float32
    assert round(-128 - low / scale) == zero_point
    quantizer = configs.fixed_output_quantizer(activation)
    x = tf.constant(np.linspace(-2, 2, 4001), tf.float32)
    out = quantizer(x, training=False, weights={}).numpy()
    steps = out / scale
    np.testing.assert_array_equal(steps, np.round(steps))
    assert out.min() == low and out.max() == high
    assert len(np.unique(out)) == 256


def test_output_config_quantizes_the_output():
    layer = keras.layers.Add()
    config = OutputQuantizeConfig(ema_decay=0.5)
    assert config.get_weights_and_quantizers(layer) == []
    assert config.get_activations_and_quantizers(layer) == []
    assert config.get_output_quantizers(layer) == [Pow2ActivationQuantizer(0.5)]


@pytest.mark.parametrize("activation", sorted(FIXED_SCALES))
def test_fixed_output_config(activation):
    [quantizer] = FixedOutputQuantizeConfig(activation).get_output_quantizers(keras.layers.Activation(activation))
    assert (quantizer.init_min, quantizer.init_max) == configs.FIXED_OUTPUT_RANGES[activation]
    assert not quantizer.narrow_range and quantizer.num_bits == 8


@pytest.mark.parametrize("target", ["esp32s3", "esp32p4"])
def test_a_target_without_zero_points_holds_a_sigmoid_on_the_signed_grid(target):
    """ESP-DL: scale 2^-7, zero point 0 (0 to 127 steps); softmax and tanh keep their ranges; a config saved
    before it recorded a target reads as the builtin kernels' (1/256, zero point -128)."""
    [sigmoid] = FixedOutputQuantizeConfig("sigmoid", target).get_output_quantizers(keras.layers.Activation("sigmoid"))
    assert (sigmoid.init_min, sigmoid.init_max) == (-1.0, 127.0 / 128.0)
    assert (sigmoid.init_max - sigmoid.init_min) / 255 == 2.0**-7
    [tanh] = FixedOutputQuantizeConfig("tanh", target).get_output_quantizers(keras.layers.Activation("tanh"))
    assert (tanh.init_min, tanh.init_max) == configs.FIXED_OUTPUT_RANGES["tanh"]
    [saved] = FixedOutputQuantizeConfig.from_config({"activation": "sigmoid"}).get_output_quantizers(None)
    assert (saved.init_min, saved.init_max) == configs.FIXED_OUTPUT_RANGES["sigmoid"]


def test_fixed_output_config_rejects_other_activations():
    with pytest.raises(ValueError, match=r"activation='relu'.*\['sigmoid', 'softmax', 'tanh'\]"):
        FixedOutputQuantizeConfig("relu")


@pytest.mark.parametrize(
    "config", [PassThroughQuantizeConfig(), OutputQuantizeConfig(), FixedOutputQuantizeConfig("softmax")]
)
def test_configs_without_weights_refuse_quantized_weights(config):
    layer = keras.layers.ZeroPadding2D(name="pad_me")
    assert config.get_weights_and_quantizers(layer) == []
    config.set_quantize_weights(layer, [])  # nothing to set is fine
    with pytest.raises(ValueError, match=rf"{type(config).__name__} quantizes no weights of layer 'pad_me'"):
        config.set_quantize_weights(layer, [tf.zeros(3)])
    with pytest.raises(ValueError, match="quantizes no activations of layer 'pad_me'"):
        config.set_quantize_activations(layer, [object()])


def test_pass_through_config_has_no_quantizer():
    layer = keras.layers.Dropout(0.5)
    config = PassThroughQuantizeConfig()
    assert config.get_weights_and_quantizers(layer) == []
    assert config.get_activations_and_quantizers(layer) == []
    assert config.get_output_quantizers(layer) == []


# ---------------------------------------------------------------- serialization

CONFIGS = [
    KernelQuantizeConfig(),
    KernelQuantizeConfig(per_channel=True, quantize_output=False, ema_decay=0.9),
    KernelQuantizeConfig(per_channel=False, quantize_output=True, ema_decay=0.0),
    OutputQuantizeConfig(),
    OutputQuantizeConfig(ema_decay=0.5),
    FixedOutputQuantizeConfig("softmax"),
    FixedOutputQuantizeConfig("tanh"),
    PassThroughQuantizeConfig(),
]


def _id(config):
    return f"{type(config).__name__}-{config.get_config()}"


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_config_round_trip(config):
    clone = type(config).from_config(config.get_config())
    assert clone == config and not (clone != config)
    assert clone.get_config() == config.get_config()


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_config_keras_serialization_round_trip(config):
    serialized = keras.utils.serialize_keras_object(config)
    assert serialized["registered_name"] == f"tfqat>{type(config).__name__}"
    restored = keras.utils.deserialize_keras_object(serialized)
    assert type(restored) is type(config) and restored == config


def test_config_equality_tells_options_apart():
    assert KernelQuantizeConfig(per_channel=True) != KernelQuantizeConfig(per_channel=False)
    assert KernelQuantizeConfig(quantize_output=False) != KernelQuantizeConfig(quantize_output=True)
    assert KernelQuantizeConfig(ema_decay=0.9) != KernelQuantizeConfig(ema_decay=0.99)
    assert FixedOutputQuantizeConfig("softmax") != FixedOutputQuantizeConfig("sigmoid")
    assert OutputQuantizeConfig() != PassThroughQuantizeConfig()


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", sorted(KERNEL_LAYERS))
def test_quantize_wrapper_round_trip_keeps_config_and_output(kind, per_channel):
    factory, shape, _, _ = KERNEL_LAYERS[kind]
    wrapper = QuantizeWrapperV2(factory("relu"), KernelQuantizeConfig(per_channel=per_channel, ema_decay=0.9))
    x = tf.constant(np.random.default_rng(0).normal(size=shape), tf.float32)
    wrapper(x, training=True)  # sets the activation range
    with tfmot.quantization.keras.quantize_scope():
        clone = QuantizeWrapperV2.from_config(wrapper.get_config())
    clone.build(x.shape)
    clone.set_weights(wrapper.get_weights())
    assert clone.quantize_config == wrapper.quantize_config
    np.testing.assert_array_equal(clone(x, training=False).numpy(), wrapper(x, training=False).numpy())
