"""Tests for tfqat.graph.canonical: the rewrites into layers the scheme quantizes compute the same function.

Swish as x * sigmoid(x), TFOpLambda arithmetic with a number as ScalarOp, Rescaling/Normalization (and
chains of them) as one 1x1 depthwise conv; each checked against the float model, and each refusal of
what is still unsupported names the layer and its class.
"""

from tfqat._keras import keras

import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.graph.canonical import canonical_model
from tfqat.quantization.layers import ScalarOp, Sigmoid

layers = keras.layers


def images(shape, low=-1.0, high=1.0, seed=1):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def kinds(model):
    return [type(layer).__name__ for layer in model.layers]


def test_swish_becomes_x_times_sigmoid_on_activations_and_convs():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, activation="swish", name="conv")(inputs)
    x = layers.Activation("swish", name="act")(layers.Conv2D(4, 1)(x))
    x = layers.Dense(3, activation="sigmoid", name="gate")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, x)
    rewritten = canonical_model(model)
    # The layer giving each original output keeps its name; the linear part is `<name>_linear`.
    assert rewritten.get_layer("conv_linear").activation is keras.activations.linear
    assert isinstance(rewritten.get_layer("conv_sigmoid"), Sigmoid)
    assert isinstance(rewritten.get_layer("conv"), layers.Multiply)
    assert isinstance(rewritten.get_layer("act"), layers.Multiply) and isinstance(rewritten.get_layer("act_sigmoid"), Sigmoid)
    assert isinstance(rewritten.get_layer("gate"), Sigmoid) and rewritten.output_names == model.output_names == ["gate"]
    assert not rewritten.get_layer("gate").litert_table  # a float model: a float sigmoid
    x = images((4, 8, 8, 3))
    np.testing.assert_allclose(rewritten(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)
    # Its QAT model rounds each of its three sigmoids as LiteRT's LOGISTIC table does.
    qat = tfqat.quantize_model(model)
    sigmoids = [layer.layer for layer in qat.layers if isinstance(getattr(layer, "layer", None), Sigmoid)]
    assert len(sigmoids) == 3 and all(sigmoid.litert_table for sigmoid in sigmoids)


@pytest.mark.parametrize(
    "build, op, value",
    [
        (lambda x: x + 3.0, "add", 3.0),
        (lambda x: 3.0 + x, "add", 3.0),
        (lambda x: x - 1.5, "add", -1.5),
        (lambda x: x * (1.0 / 6.0), "multiply", 1.0 / 6.0),
        (lambda x: x / 4.0, "multiply", 0.25),
    ],
    ids=["add", "radd", "subtract", "multiply", "divide"],
)
def test_arithmetic_with_a_number_becomes_a_scalar_op(build, op, value):
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, layers.ReLU(6.0)(build(layers.Conv2D(2, 1)(inputs))))
    rewritten = canonical_model(model)
    [scalar] = [layer for layer in rewritten.layers if isinstance(layer, ScalarOp)]
    assert (scalar.op, scalar.value) == (op, pytest.approx(value))
    assert "TFOpLambda" not in kinds(rewritten)
    assert not scalar.pow2_constant  # a float model computes with the number itself
    x = images((2, 4, 4, 2))
    np.testing.assert_allclose(rewritten(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)
    assert ScalarOp.from_config(scalar.get_config()).get_config() == scalar.get_config()
    # The QAT model computes with the power-of-two int8 constant, and has no weight for it.
    qat = tfqat.quantize_model(model)
    [wrapper] = [layer for layer in qat.layers if isinstance(getattr(layer, "layer", None), ScalarOp)]
    assert wrapper.layer.pow2_constant and not wrapper.trainable_weights
    exponent = float(wrapper.layer.constant_exponent().numpy())
    assert abs(value) <= 127 * 2.0**exponent and abs(value) > 127 * 2.0 ** (exponent - 1)
    constant = wrapper.layer(np.ones((1, 1, 1, 1), np.float32)).numpy().item() - (1.0 if op == "add" else 0.0)
    assert constant == np.round(value / 2.0**exponent) * 2.0**exponent


@pytest.mark.parametrize("build", [lambda x: 3.0 - x, lambda x: 2.0 / x, lambda x: x * x], ids=["rsub", "rdiv", "square"])
def test_arithmetic_that_is_not_tensor_op_number_stays_and_is_refused(build):
    """3 - x is not x - 3, 2 / x not x / 2: the operand order matters, and these are refused by name."""
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, build(layers.Conv2D(2, 1)(inputs)))
    assert "ScalarOp" not in kinds(canonical_model(model))
    with pytest.raises(ValueError, match=r"\(TFOpLambda\): '.*' is not one of the TensorFlow ops the scheme quantizes"):
        tfqat.quantize_model(model)


def test_integer_tensors_are_left_alone():
    """A uint8 image and integer arithmetic have no int8 form here: refused by name, not a crash."""
    inputs = keras.Input((6, 6, 3), dtype="uint8")
    model = keras.Model(inputs, layers.Conv2D(2, 1)(layers.Rescaling(1.0 / 255.0)(inputs)))
    with pytest.raises(ValueError, match=r"\(Rescaling\): only a Rescaling or Normalization of the channels of a float"):
        tfqat.quantize_model(model)


def test_a_tensorflow_op_that_is_not_arithmetic_with_a_number_is_refused_by_name():
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, tf.math.square(layers.Conv2D(2, 1)(inputs)))
    with pytest.raises(ValueError, match=r"cannot quantize layer 'tf.math.square[_0-9]*' \(TFOpLambda\): 'math.square' is not"):
        tfqat.quantize_model(model)


def test_rescaling_and_normalization_become_one_depthwise_conv():
    """EfficientNet's input: Rescaling(1/255) -> Normalization(mean, variance) -> one 1x1 depthwise conv
    named after the last layer, with the composed per-channel map."""
    inputs = keras.Input((6, 6, 3))
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.052, 0.050, 0.051], name="normalize")(x)
    model = keras.Model(inputs, layers.Conv2D(4, 3, padding="same")(x))
    rewritten = canonical_model(model)
    depthwise = rewritten.get_layer("normalize")
    assert isinstance(depthwise, layers.DepthwiseConv2D) and depthwise.depthwise_kernel.shape == (1, 1, 3, 1)
    assert "Rescaling" not in kinds(rewritten) and "Normalization" not in kinds(rewritten)
    std = np.sqrt([0.052, 0.050, 0.051])
    np.testing.assert_allclose(depthwise.depthwise_kernel.numpy().ravel(), 1.0 / (255.0 * std), rtol=1e-6)
    np.testing.assert_allclose(depthwise.bias.numpy(), -np.array([0.485, 0.456, 0.406]) / std, rtol=1e-6)
    x = images((2, 6, 6, 3), 0.0, 255.0)
    np.testing.assert_allclose(rewritten(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        layers.Rescaling([0.5, 2.0, -1.0], offset=[1.0, 0.0, -0.5]),
        layers.Rescaling(1.0 / 127.5, offset=-1.0),
        layers.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 0.25, 1.0], invert=True),
        layers.Normalization(axis=None, mean=2.0, variance=9.0),
    ],
    ids=["rescaling_per_channel", "rescaling_mobilenet_v3", "normalization_inverted", "normalization_scalar"],
)
def test_each_affine_layer_is_the_same_map_as_its_depthwise_conv(layer):
    inputs = keras.Input((5, 5, 3))
    model = keras.Model(inputs, layer(inputs))
    rewritten = canonical_model(model)
    assert kinds(rewritten) == ["InputLayer", "DepthwiseConv2D"]
    x = images((2, 5, 5, 3), -3.0, 3.0)
    np.testing.assert_allclose(rewritten(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)


def test_normalization_over_another_axis_is_refused_by_name():
    inputs = keras.Input((5, 5, 3))
    model = keras.Model(inputs, layers.Normalization(axis=1, mean=np.arange(5.0), variance=np.ones(5))(inputs))
    with pytest.raises(ValueError, match=r"'normalization[_0-9]*' \(Normalization\): only a Rescaling or Normalization of the channels"):
        tfqat.quantize_model(model)


def test_without_folding_batch_norms_stay():
    inputs = keras.Input((5, 5, 3))
    x = layers.Rescaling(0.5)(inputs)
    model = keras.Model(inputs, layers.BatchNormalization()(layers.Conv2D(3, 1)(x)))
    assert kinds(canonical_model(model, fold_bn=False)) == ["InputLayer", "DepthwiseConv2D", "Conv2D", "BatchNormalization"]
    assert kinds(canonical_model(model)) == ["InputLayer", "DepthwiseConv2D", "Conv2D"]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_qat_model_with_the_new_layers_saves_and_loads(suffix, tmp_path):
    """ScalarOp, Sigmoid and the input quantizer round-trip through both formats; the loaded model is relinked
    and gives the same outputs."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = layers.Conv2D(4, 3, padding="same", activation="swish")(x)
    x = layers.Multiply()([x, layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    qat = tfqat.quantize_model(keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(x))))
    pixels = images((16, 8, 8, 3), 0.0, 255.0)
    tfqat.calibrate(qat, pixels)
    path = str(tmp_path / f"qat{suffix}")
    qat.save(path)
    loaded = tfqat.load_model(path)
    np.testing.assert_array_equal(loaded(pixels, training=False).numpy(), qat(pixels, training=False).numpy())


def _cut_efficientnet():
    """EfficientNetB0's stem and first block: Rescaling, Normalization, swish, squeeze-excite, folded BNs."""
    base = keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, include_top=False)
    return keras.Model(base.input, base.get_layer("block1a_project_bn").output, name="efficientnet_cut")


def _same_models(a, b, x):
    assert [(layer.name, type(layer).__name__) for layer in a.layers] == [
        (layer.name, type(layer).__name__) for layer in b.layers
    ]
    assert [w.name for w in a.weights] == [w.name for w in b.weights]
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(a.predict(x, verbose=0), b.predict(x, verbose=0))


@pytest.mark.parametrize("build", [
    lambda: keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=3),
    _cut_efficientnet,
], ids=["mobilenet_v2", "efficientnet_b0_block1a"])
def test_a_flat_model_is_rewritten_as_its_flattened_copy_is(build):
    """The rewrites read a flat model's own graph instead of a copy: same layers, weights and function."""
    from tfqat.graph import functional

    keras.utils.set_random_seed(0)
    model = build()
    assert functional.is_flat(model)
    copy = functional.flatten(model)
    x = images((4, 32, 32, 3), 0.0, 255.0)
    _same_models(canonical_model(model), canonical_model(copy), x)
    qat = []
    for each in (model, copy):
        keras.backend.reset_uids()  # the same generated names (quantize_layer, ...) for both
        qat.append(tfqat.quantize_model(each))
    _same_models(*qat, x)


def test_nested_shared_and_sequential_models_are_flattened_first():
    from tfqat.graph import functional

    keras.utils.set_random_seed(0)
    base = keras.Sequential([
        keras.Input((8, 8, 3)),
        layers.Conv2D(4, 3, use_bias=False, name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.ReLU(name="relu"),
    ], name="base")
    inputs = keras.Input((8, 8, 3), name="image")
    nested = keras.Model(inputs, layers.Dense(2, name="head")(layers.GlobalAveragePooling2D()(base(inputs))))
    other = keras.Input((8, 8, 3))
    shared = keras.Model(inputs, base.get_layer("conv")(inputs))  # conv called again: two nodes
    base.get_layer("conv")(other)
    assert not functional.is_flat(base)
    assert not functional.is_flat(nested)
    assert not functional.is_flat(shared)
    x = images((2, 8, 8, 3))
    for model in (base, nested):
        rewritten = canonical_model(model)
        assert functional.is_flat(rewritten)
        assert "bn" not in [layer.name for layer in rewritten.layers]  # folded into the conv
        np.testing.assert_allclose(rewritten.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
