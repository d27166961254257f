"""Tests for tfqat.quantization.scheme: the registry and the layout of quantizers in the QAT graph.

The QAT graph must have a quantizer exactly where the int8 TFLite graph has a
tensor of its own: the model input, every op output except a conv/add output
consumed only by a ReLU/ReLU6 that TFLite fuses into it, and except ops that
keep their input's scale (padding, max-pooling, dropout, reshapes).
"""

from tfqat._keras import keras

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer

import tfqat
from tfqat.quantization import configs
from tfqat.quantization.linking import link_accumulators
from tfqat.quantization.quantizers import (
    Pow2ActivationQuantizer, Pow2BiasQuantizer, Pow2InputQuantizer, Pow2WeightQuantizer,
)
from tfqat.quantization.scheme import Pow2QuantizeRegistry, Pow2QuantizeScheme

layers = keras.layers
QuantizeWrapperV2 = tfmot.quantization.keras.QuantizeWrapperV2
_FixedQuantizer = tfmot.quantization.keras.quantizers.FixedQuantizer


def apply_scheme(model, **options):
    """The scheme alone (no BN folding, no flattening) through TFMOT's quantize_apply."""
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    with tfmot.quantization.keras.quantize_scope():
        return tfmot.quantization.keras.quantize_apply(annotated, scheme=Pow2QuantizeScheme(**options))


def output_quantizers(layer):
    """The quantizers acting on a QAT layer's output (before or after its own activation)."""
    if isinstance(layer, QuantizeLayer):
        return [layer.quantizer]
    if isinstance(layer, QuantizeWrapperV2):
        return [a.quantizer for a in layer._quantize_activations] + list(layer._output_quantizers)
    return []


def range_variables(layer):
    return [w.name for w in layer.weights if w.name.split(":")[0].endswith(("_min", "_max", "_seen"))]


def wrapped(model, name):
    return model.get_layer("quant_" + name)


def inner(layer):
    return layer.layer if isinstance(layer, QuantizeWrapperV2) else layer


# ---------------------------------------------------------------- registry

SUPPORTED = [
    (lambda: layers.Conv2D(4, 3), configs.KernelQuantizeConfig),
    (lambda: layers.Conv2D(4, 3, activation="relu"), configs.KernelQuantizeConfig),
    (lambda: layers.DepthwiseConv2D(3, depth_multiplier=2), configs.KernelQuantizeConfig),
    (lambda: layers.Dense(3, activation="softmax"), configs.KernelQuantizeConfig),
    (lambda: layers.Add(), configs.OutputQuantizeConfig),
    (lambda: layers.ReLU(6.0), configs.OutputQuantizeConfig),
    (lambda: layers.ReLU(), configs.OutputQuantizeConfig),
    (lambda: layers.ReLU(max_value=3.0), configs.OutputQuantizeConfig),
    (lambda: layers.Activation("relu"), configs.OutputQuantizeConfig),
    (lambda: layers.GlobalAveragePooling2D(), configs.OutputQuantizeConfig),
    (lambda: layers.AveragePooling2D(), configs.OutputQuantizeConfig),
    (lambda: layers.ZeroPadding2D(), configs.PassThroughQuantizeConfig),
    (lambda: layers.MaxPooling2D(), configs.PassThroughQuantizeConfig),
    (lambda: layers.Dropout(0.2), configs.PassThroughQuantizeConfig),
    (lambda: layers.Reshape((4,)), configs.PassThroughQuantizeConfig),
    (lambda: layers.Flatten(), configs.PassThroughQuantizeConfig),
    (lambda: layers.Activation("linear"), configs.PassThroughQuantizeConfig),
    (lambda: layers.Softmax(), configs.FixedOutputQuantizeConfig),
    (lambda: layers.Activation("sigmoid"), configs.FixedOutputQuantizeConfig),
    (lambda: layers.Activation("tanh"), configs.FixedOutputQuantizeConfig),
]


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("make, config_class", SUPPORTED, ids=lambda v: getattr(v, "__name__", ""))
def test_registry_config_for_each_layer_kind(make, config_class, per_channel):
    registry = Pow2QuantizeRegistry(per_channel=per_channel, ema_decay=0.9)
    layer = make()
    assert registry.supports(layer) and registry.unsupported_reason(layer) is None
    config = registry.get_quantize_config(layer)
    assert type(config) is config_class
    if config_class is configs.KernelQuantizeConfig:
        assert config == configs.KernelQuantizeConfig(per_channel=per_channel, quantize_output=True, ema_decay=0.9)
    if config_class is configs.OutputQuantizeConfig:
        assert config == configs.OutputQuantizeConfig(ema_decay=0.9)
    if config_class is configs.FixedOutputQuantizeConfig:
        expected = "softmax" if isinstance(layer, layers.Softmax) else layer.get_config()["activation"]
        assert config == configs.FixedOutputQuantizeConfig(expected)


UNSUPPORTED = [
    (lambda: layers.LSTM(4, name="bad"), "LSTM"),
    (lambda: layers.LayerNormalization(name="bad"), "LayerNormalization"),
    (lambda: layers.BatchNormalization(name="bad"), "BatchNormalization"),
    (lambda: layers.Conv2D(4, 3, activation="elu", name="bad"), "Conv2D"),
    (lambda: layers.Dense(4, activation="swish", name="bad"), "Dense"),
    (lambda: layers.Conv2DTranspose(4, 3, name="bad"), "Conv2DTranspose"),
    (lambda: layers.ReLU(negative_slope=0.1, name="bad"), "ReLU"),
    (lambda: layers.Activation("elu", name="bad"), "Activation"),
    (lambda: layers.Subtract(name="bad"), "Subtract"),
]


@pytest.mark.parametrize("make, class_name", UNSUPPORTED, ids=[c for _, c in UNSUPPORTED])
def test_registry_refuses_unsupported_layers_by_name_and_class(make, class_name):
    registry = Pow2QuantizeRegistry()
    layer = make()
    assert not registry.supports(layer)
    with pytest.raises(ValueError, match=rf"layer 'bad' \({class_name}\) cannot be quantized: \S"):
        registry.get_quantize_config(layer)


# ---------------------------------------------------------------- layout on small graphs


def _producer(kind, x):
    if kind == "conv":
        return layers.Conv2D(4, 3, padding="same", name="producer")(x)
    if kind == "depthwise":
        return layers.DepthwiseConv2D(3, padding="same", name="producer")(x)
    if kind == "dense":
        return layers.Dense(3, name="producer")(layers.Flatten()(x))
    return layers.Add(name="producer")([x, layers.Conv2D(3, 1, name="side")(x)])


RELUS = {
    "relu6": lambda: layers.ReLU(6.0, name="relu"),
    "relu": lambda: layers.ReLU(name="relu"),
    "activation_relu": lambda: layers.Activation("relu", name="relu"),
}


@pytest.mark.parametrize("relu", sorted(RELUS))
@pytest.mark.parametrize("kind", ["conv", "depthwise", "dense", "add"])
def test_fused_relu_has_no_quantizer_before_it(kind, relu):
    inputs = keras.Input((6, 6, 3))
    outputs = RELUS[relu]()(_producer(kind, inputs))
    qat = apply_scheme(keras.Model(inputs, outputs))
    producer, relu_layer = wrapped(qat, "producer"), wrapped(qat, "relu")
    assert output_quantizers(producer) == [] and range_variables(producer) == []
    assert output_quantizers(relu_layer) == [Pow2ActivationQuantizer()]
    if kind != "add":
        # The kernel and the bias are still quantized.
        assert producer.quantize_config == configs.KernelQuantizeConfig(quantize_output=False)
        assert [type(q) for _, q, _ in producer._weight_vars] == [Pow2WeightQuantizer, Pow2BiasQuantizer]
        assert [w.name.split("/")[-1].split(":")[0] for w, _, _ in producer._weight_vars] == [
            "depthwise_kernel" if kind == "depthwise" else "kernel", "bias"]


@pytest.mark.parametrize(
    "make_relu",
    [lambda: layers.ReLU(max_value=3.0, name="relu"), lambda: layers.ReLU(threshold=0.5, name="relu")],
    ids=["relu3", "thresholded"],
)
@pytest.mark.parametrize("kind", ["conv", "add"])
def test_relu_that_tflite_does_not_fuse_keeps_both_quantizers(kind, make_relu):
    inputs = keras.Input((6, 6, 3))
    qat = apply_scheme(keras.Model(inputs, make_relu()(_producer(kind, inputs))))
    assert output_quantizers(wrapped(qat, "producer")) == [Pow2ActivationQuantizer()]
    assert output_quantizers(wrapped(qat, "relu")) == [Pow2ActivationQuantizer()]


def test_conv_with_its_own_activation_is_not_fused_with_the_next_relu():
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(4, 3, activation="relu", name="producer")(inputs)
    qat = apply_scheme(keras.Model(inputs, layers.ReLU(6.0, name="relu")(x)))
    assert output_quantizers(wrapped(qat, "producer")) == [Pow2ActivationQuantizer()]
    assert output_quantizers(wrapped(qat, "relu")) == [Pow2ActivationQuantizer()]


def test_conv_output_with_another_consumer_stays_quantized():
    """TFLite cannot fuse the ReLU when the conv's output is also used elsewhere."""
    inputs = keras.Input((6, 6, 3))
    conv = layers.Conv2D(3, 3, padding="same", name="producer")(inputs)
    relu = layers.ReLU(6.0, name="relu")(conv)
    qat = apply_scheme(keras.Model(inputs, layers.Add(name="add")([conv, relu])))
    for name in ("producer", "relu", "add"):
        assert output_quantizers(wrapped(qat, name)) == [Pow2ActivationQuantizer()], name


@pytest.fixture(scope="module")
def small_qat():
    """Input -> pad -> conv -> ReLU6 -> depthwise -> BN -> ReLU -> conv -> add -> max-pool -> GAP -> dropout -> dense."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = layers.ZeroPadding2D(1, name="pad")(inputs)
    x = layers.Conv2D(4, 3, name="expand")(x)
    x = layers.ReLU(6.0, name="expand_relu")(x)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise")(x)
    y = layers.BatchNormalization(name="depthwise_bn")(y)
    y = layers.ReLU(name="depthwise_relu")(y)
    y = layers.Conv2D(4, 1, name="project")(y)
    x = layers.Add(name="add")([x, y])
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(5, name="logits")(x)
    return tfqat.quantize_model(keras.Model(inputs, outputs))


EXPECTED_SMALL = {
    "pad": False,
    "expand": False,  # fused with expand_relu
    "expand_relu": True,
    "depthwise": False,  # BN folded in, fused with depthwise_relu
    "depthwise_relu": True,
    "project": True,
    "add": True,
    "pool": False,
    "gap": True,
    "dropout": False,
    "logits": True,
}


def test_small_graph_layout(small_qat):
    assert isinstance(small_qat.layers[0], layers.InputLayer)
    quantize_input = small_qat.layers[1]
    assert isinstance(quantize_input, QuantizeLayer)
    assert quantize_input._inbound_nodes[0].inbound_layers is small_qat.layers[0]
    assert quantize_input.quantizer == Pow2InputQuantizer()  # unsigned if calibrated on non-negative inputs
    got = {inner(layer).name: bool(output_quantizers(layer)) for layer in small_qat.layers[2:]}
    assert got == EXPECTED_SMALL
    for layer in small_qat.layers[2:]:
        assert bool(range_variables(layer)) == EXPECTED_SMALL[inner(layer).name]


def test_small_graph_pass_through_keeps_the_input_scale(small_qat):
    """Padding and max-pooling outputs are on the grid of their input's quantizer, without their own."""
    small_qat.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    tfqat.calibrate(small_qat, [x])
    probe = keras.Model(small_qat.input, [wrapped(small_qat, "pad").output, wrapped(small_qat, "pool").output])
    padded, pooled = probe(x, training=False)
    input_quantizer = small_qat.layers[1]
    add = wrapped(small_qat, "add")
    for values, owner in ((padded, input_quantizer), (pooled, add)):
        variables = owner.quantizer_vars if owner is input_quantizer else owner._output_quantizer_vars
        scale = 2.0 ** Pow2ActivationQuantizer().exponent(variables).numpy()
        steps = values.numpy() / scale
        np.testing.assert_array_equal(steps, np.round(steps))


@pytest.mark.parametrize("per_channel", [False, True])
def test_options_reach_every_quantizer(per_channel):
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.ReLU(6.0)(x)
    x = layers.DepthwiseConv2D(3, name="dw")(x)
    x = layers.GlobalAveragePooling2D()(x)
    qat = tfqat.quantize_model(keras.Model(inputs, layers.Dense(2)(x)), per_channel=per_channel, ema_decay=0.75)
    all_weight_quantizers = [q for l in qat.layers if isinstance(l, QuantizeWrapperV2) for _, q, _ in l._weight_vars]
    # Each layer's kernel, then its bias.
    assert [type(q) for q in all_weight_quantizers] == [Pow2WeightQuantizer, Pow2BiasQuantizer] * 3
    weight_quantizers = all_weight_quantizers[0::2]
    assert all(q == Pow2BiasQuantizer() for q in all_weight_quantizers[1::2])
    activation_quantizers = [q for l in qat.layers for q in output_quantizers(l)]
    assert len(weight_quantizers) == 3 and len(activation_quantizers) == 5
    assert [q.per_channel for q in weight_quantizers] == [per_channel, per_channel, False]  # Dense: per tensor
    assert [q.kind for q in weight_quantizers] == ["conv", "depthwise", "dense"]
    # The input's quantizer first (it may take the unsigned grid), then every other one.
    assert activation_quantizers[0] == Pow2InputQuantizer(0.75)
    assert all(q == Pow2ActivationQuantizer(0.75) for q in activation_quantizers[1:])


# ---------------------------------------------------------------- MobileNetV2


@pytest.fixture(scope="module")
def mobilenet_qat():
    base = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, include_top=False)
    inputs = keras.Input((32, 32, 3))
    x = base(inputs, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(5)(x)
    return base, tfqat.quantize_model(keras.Model(inputs, outputs))


def _only_consumer(layer):
    nodes = layer._outbound_nodes
    return nodes[0].layer if len(nodes) == 1 else None


def test_mobilenet_quantizers_sit_where_tflite_has_int8_tensors(mobilenet_qat):
    base, qat = mobilenet_qat
    assert isinstance(qat.layers[1], QuantizeLayer)
    assert not any(isinstance(inner(l), (layers.BatchNormalization, keras.Model)) for l in qat.layers)
    seen = set()
    for layer in qat.layers[2:]:
        kind = type(inner(layer)).__name__
        seen.add(kind)
        if kind in ("Conv2D", "DepthwiseConv2D"):
            consumer = _only_consumer(layer)
            fused = consumer is not None and isinstance(inner(consumer), layers.ReLU)
            expected = not fused
        else:
            expected = kind in ("ReLU", "Add", "GlobalAveragePooling2D", "Dense")
            assert expected or kind in ("ZeroPadding2D", "Dropout"), kind
        assert bool(output_quantizers(layer)) == expected, layer.name
    assert seen == {"Conv2D", "DepthwiseConv2D", "ReLU", "Add", "ZeroPadding2D", "GlobalAveragePooling2D", "Dropout", "Dense"}


def test_mobilenet_named_layers(mobilenet_qat):
    _, qat = mobilenet_qat
    # Expansion conv and depthwise feed ReLU6: fused, no quantizer between.
    pairs = [(name, name + "_relu") for name in ("Conv1", "block_1_expand", "block_1_depthwise", "block_16_depthwise")]
    for name, relu in pairs + [("Conv_1", "out_relu")]:
        assert output_quantizers(wrapped(qat, name)) == [], name
        assert output_quantizers(wrapped(qat, relu)) == [Pow2ActivationQuantizer()], relu
    # Projections are linear (their BN folded): quantized, as are the residual sums.
    for name in ("expanded_conv_project", "block_1_project", "block_2_project", "block_2_add", "block_15_add"):
        assert output_quantizers(wrapped(qat, name)) == [Pow2ActivationQuantizer()], name
    assert output_quantizers(wrapped(qat, "block_1_pad")) == []


def test_mobilenet_every_conv_quantizes_its_kernel(mobilenet_qat):
    base, qat = mobilenet_qat
    convs = [l for l in base.layers if isinstance(l, (layers.Conv2D, layers.DepthwiseConv2D))]
    for conv in convs:
        layer = wrapped(qat, conv.name)
        [(weight, quantizer, _), (bias, bias_quantizer, _)] = layer._weight_vars
        expected_attribute = "depthwise_kernel" if isinstance(conv, layers.DepthwiseConv2D) else "kernel"
        assert weight.name.split("/")[-1].startswith(expected_attribute)
        assert type(quantizer) is Pow2WeightQuantizer
        assert quantizer.kind == ("depthwise" if expected_attribute == "depthwise_kernel" else "conv")
        # Every MobileNetV2 conv is followed by BN, so every folded conv has a bias, on the int32 grid.
        assert not conv.use_bias and bias.name.split("/")[-1].startswith("bias")
        assert type(bias_quantizer) is Pow2BiasQuantizer and callable(bias_quantizer.accumulator_exponent)


def test_mobilenet_every_conv_and_dense_output_is_linked(mobilenet_qat):
    """quantize_model links all 52 convs, the dense and the pool (a MEAN over 1x1 at 32 px: its sum is an
    accumulator too); only quantizers of their outputs round accumulators."""
    _, qat = mobilenet_qat
    assert link_accumulators(qat) == 52 + 1 + 1
    for layer in qat.layers[1:]:
        kind = type(inner(layer)).__name__
        for quantizer in output_quantizers(layer):
            consumes_accumulator = kind in ("ReLU", "Conv2D", "DepthwiseConv2D", "Dense", "GlobalAveragePooling2D")
            assert (quantizer.accumulator_exponent is not None) == consumes_accumulator, layer.name
