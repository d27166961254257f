"""Tests for tfqat.graph.folding: BatchNormalization folded into the conv before it."""

from tfqat._keras import keras

import numpy as np
import tensorflow as tf
import pytest

from tfqat.graph.folding import fold_batch_norms, fold_bn_arrays

layers = keras.layers

# Folded and unfolded graphs compute the same function in a different float32
# order; 1e-5 is ~100 float32 ulps at the output magnitudes here (~1).
ATOL = 1e-5


def randomize_batch_norms(model, seed=0, variance_low=0.5):
    """Give every BN real statistics: gamma, beta, moving mean and moving variance far from 1/0/0/1."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            weights = []
            channels = layer.moving_mean.shape[0]
            if layer.scale:
                weights.append(rng.uniform(0.5, 1.5, channels) * rng.choice([-1, 1], channels))
            if layer.center:
                weights.append(rng.normal(0, 0.3, channels))
            weights += [rng.normal(0, 0.3, channels), rng.uniform(variance_low, 2.0, channels)]
            layer.set_weights([w.astype(np.float32) for w in weights])
    return model


def images(shape, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def kinds(model):
    return [type(layer).__name__ for layer in model.layers]


# ---------------------------------------------------------------- fold_bn_arrays


def _direct_fold(kernel, bias, gamma, beta, mean, variance, epsilon, depthwise):
    """y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta, channel by channel in float64."""
    kernel = kernel.astype(np.float64)
    folded_kernel = np.empty_like(kernel)
    folded_bias = np.empty(len(gamma))
    for c in range(len(gamma)):
        m = gamma[c] / np.sqrt(variance[c] + epsilon)
        if depthwise:
            multiplier = kernel.shape[3]
            i, j = divmod(c, multiplier)  # TFLite/Keras depthwise output channel c = i * multiplier + j
            folded_kernel[:, :, i, j] = kernel[:, :, i, j] * m
        else:
            folded_kernel[..., c] = kernel[..., c] * m
        folded_bias[c] = (bias[c] - mean[c]) * m + beta[c]
    return folded_kernel, folded_bias


@pytest.mark.parametrize(
    "shape, depthwise",
    [((3, 3, 4, 6), False), ((1, 1, 8, 3), False), ((3, 3, 5, 1), True), ((3, 3, 5, 2), True), ((3, 3, 2, 3), True)],
)
@pytest.mark.parametrize("epsilon", [1e-3, 0.25])
def test_fold_bn_arrays_matches_direct_computation(shape, depthwise, epsilon):
    rng = np.random.default_rng(sum(shape))
    channels = shape[2] * shape[3] if depthwise else shape[3]
    kernel = rng.normal(size=shape).astype(np.float32)
    bias = rng.normal(size=channels).astype(np.float32)
    gamma = rng.uniform(-1.5, 1.5, channels).astype(np.float32)
    beta = rng.normal(size=channels).astype(np.float32)
    mean = rng.normal(size=channels).astype(np.float32)
    variance = rng.uniform(0.01, 3, channels).astype(np.float32)
    got_kernel, got_bias = fold_bn_arrays(kernel, bias, gamma, beta, mean, variance, epsilon, depthwise)
    want_kernel, want_bias = _direct_fold(kernel, bias, gamma, beta, mean, variance, epsilon, depthwise)
    assert got_kernel.dtype == np.float32 and got_bias.dtype == np.float32
    assert got_kernel.shape == kernel.shape and got_bias.shape == (channels,)
    np.testing.assert_allclose(got_kernel, want_kernel, rtol=1e-6, atol=0)
    np.testing.assert_allclose(got_bias, want_bias, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- MobileNetV2


@pytest.fixture(scope="module")
def mobilenet():
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(64, 64, 3), weights=None, include_top=False)
    return randomize_batch_norms(model, seed=0)


@pytest.fixture(scope="module")
def mobilenet_before_folding(mobilenet):
    """Layer kinds and weights of the float model, taken before anything folds it."""
    return kinds(mobilenet), [w.copy() for w in mobilenet.get_weights()]


@pytest.fixture(scope="module")
def folded_mobilenet(mobilenet, mobilenet_before_folding):
    return fold_batch_norms(mobilenet)


def test_mobilenet_folded_equals_unfolded(mobilenet, folded_mobilenet):
    x = images((4, 64, 64, 3))
    want = mobilenet(x, training=False).numpy()
    got = folded_mobilenet(x, training=False).numpy()
    assert np.abs(want).max() > 0.1  # not a trivially zero output
    assert np.abs(got - want).max() <= ATOL


def test_mobilenet_every_folded_conv_equals_its_conv_and_bn(mobilenet, folded_mobilenet):
    """Compared before the ReLU6s, where a wrong channel could not hide behind clipping."""
    pairs = [
        (layer.name, layer._inbound_nodes[0].inbound_layers.name)
        for layer in mobilenet.layers
        if isinstance(layer, layers.BatchNormalization)
    ]
    assert len(pairs) == 52
    bn_probe = keras.Model(mobilenet.input, [mobilenet.get_layer(bn).output for bn, _ in pairs])
    conv_probe = keras.Model(folded_mobilenet.input, [folded_mobilenet.get_layer(conv).output for _, conv in pairs])
    x = images((2, 64, 64, 3), seed=2)
    for (bn, conv), want, got in zip(pairs, bn_probe(x, training=False), conv_probe(x, training=False)):
        assert np.abs(got.numpy() - want.numpy()).max() <= ATOL, f"{conv} folded with {bn}"


def test_mobilenet_folded_structure(mobilenet, folded_mobilenet):
    assert "BatchNormalization" not in kinds(folded_mobilenet)
    convs = {l.name for l in mobilenet.layers if isinstance(l, (layers.Conv2D, layers.DepthwiseConv2D))}
    folded_convs = {l.name for l in folded_mobilenet.layers if isinstance(l, (layers.Conv2D, layers.DepthwiseConv2D))}
    assert folded_convs == convs  # names such as block_3_depthwise are kept
    assert all(folded_mobilenet.get_layer(name).use_bias for name in convs)
    others = [l.name for l in mobilenet.layers if not isinstance(l, (layers.BatchNormalization, layers.InputLayer))]
    assert [l.name for l in folded_mobilenet.layers[1:]] == others


def test_fold_leaves_the_original_model_untouched(mobilenet, folded_mobilenet, mobilenet_before_folding):
    kinds_before, weights_before = mobilenet_before_folding
    assert kinds(mobilenet) == kinds_before
    weights_after = mobilenet.get_weights()
    assert len(weights_after) == len(weights_before)
    for before, after in zip(weights_before, weights_after):
        np.testing.assert_array_equal(before, after)


def test_fold_inlines_a_nested_base():
    base = randomize_batch_norms(
        keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, include_top=False), seed=5
    )
    inputs = keras.Input((32, 32, 3))
    x = base(inputs, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(5)(x)
    model = keras.Model(inputs, outputs)
    folded = fold_batch_norms(model)
    assert not any(isinstance(l, (keras.Model, layers.BatchNormalization)) for l in folded.layers)
    x = images((3, 32, 32, 3), seed=6)
    assert np.abs(folded(x, training=False).numpy() - model(x, training=False).numpy()).max() <= ATOL


# ---------------------------------------------------------------- single pairs


def _conv(kind, use_bias):
    if kind == "conv":
        return layers.Conv2D(6, 3, padding="same", use_bias=use_bias, name="the_conv")
    if kind == "depthwise1":
        return layers.DepthwiseConv2D(3, depth_multiplier=1, use_bias=use_bias, name="the_conv")
    return layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=use_bias, name="the_conv")


def _pair_model(kind, use_bias, seed=0, **bn_kwargs):
    inputs = keras.Input((8, 8, 3))
    conv = _conv(kind, use_bias)
    x = conv(inputs)
    x = layers.BatchNormalization(name="the_bn", **bn_kwargs)(x)
    outputs = layers.ReLU(6.0)(x)
    model = keras.Model(inputs, outputs)
    if use_bias:
        rng = np.random.default_rng(seed)
        conv.bias.assign(rng.normal(0, 0.5, conv.bias.shape).astype(np.float32))
    return randomize_batch_norms(model, seed=seed, variance_low=0.01)


def _assert_folded_equal(model, folded, x):
    want = model(x, training=False).numpy()
    got = folded(x, training=False).numpy()
    assert np.abs(want).max() > 0.1
    assert np.abs(got - want).max() <= ATOL


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("kind", ["conv", "depthwise1", "depthwise2"])
@pytest.mark.parametrize(
    "bn_kwargs",
    [{}, {"epsilon": 0.5}, {"epsilon": 1e-5}, {"center": False}, {"scale": False}, {"axis": 3}],
    ids=["default", "eps0.5", "eps1e-5", "no_center", "no_scale", "axis3"],
)
def test_pair_folds_and_matches(kind, use_bias, bn_kwargs):
    model = _pair_model(kind, use_bias, **bn_kwargs)
    folded = fold_batch_norms(model)
    assert kinds(folded) == ["InputLayer", type(model.get_layer("the_conv")).__name__, "ReLU"]
    conv = folded.get_layer("the_conv")
    assert conv.use_bias
    if kind == "depthwise2":
        assert conv.depth_multiplier == 2 and conv.bias.shape == (6,)
    _assert_folded_equal(model, folded, images((2, 8, 8, 3)))


@pytest.mark.parametrize("epsilon", [0.5, 1e-5])
def test_each_bn_uses_its_own_epsilon(epsilon):
    """With small variances the epsilon matters: folding with Keras' default 1e-3 would be far off."""
    model = _pair_model("conv", True, epsilon=epsilon)
    bn = model.get_layer("the_bn")
    bn.moving_variance.assign(np.linspace(1e-3, 1e-2, 6, dtype=np.float32))
    folded = fold_batch_norms(model)
    conv = model.get_layer("the_conv")
    gamma, beta, mean, variance = bn.get_weights()
    kernel, bias = conv.get_weights()
    right = fold_bn_arrays(kernel, bias, gamma, beta, mean, variance, epsilon)
    wrong = fold_bn_arrays(kernel, bias, gamma, beta, mean, variance, 1e-3)
    got = folded.get_layer("the_conv").get_weights()
    np.testing.assert_array_equal(got[0], right[0])
    np.testing.assert_array_equal(got[1], right[1])
    assert np.abs(wrong[0] / right[0] - 1).max() > 1e-2
    _assert_folded_equal(model, folded, images((2, 8, 8, 3)))


def _shared_conv_output():
    inputs = keras.Input((8, 8, 3))
    conv = layers.Conv2D(4, 3, padding="same", name="the_conv")(inputs)
    bn = layers.BatchNormalization(name="the_bn")(conv)
    return keras.Model(inputs, layers.Add()([bn, conv]))


def _conv_with_activation():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, activation="relu", name="the_conv")(inputs)
    return keras.Model(inputs, layers.BatchNormalization(name="the_bn")(x))


def _bn_after_relu():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="the_conv")(inputs)
    x = layers.ReLU()(x)
    return keras.Model(inputs, layers.BatchNormalization(name="the_bn")(x))


def _bn_over_height():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", name="the_conv")(inputs)
    return keras.Model(inputs, layers.BatchNormalization(axis=1, name="the_bn")(x))


def _dense_then_bn():
    inputs = keras.Input((5,))
    x = layers.Dense(4, name="the_conv")(inputs)
    return keras.Model(inputs, layers.BatchNormalization(name="the_bn")(x))


@pytest.mark.parametrize(
    "build",
    [_shared_conv_output, _conv_with_activation, _bn_after_relu, _bn_over_height, _dense_then_bn],
    ids=["conv_output_has_another_consumer", "conv_has_activation", "bn_after_relu", "bn_not_on_channels", "dense"],
)
def test_pairs_that_must_not_fold(build):
    """The conv keeps its weights; a BN on an image's channels becomes a 1x1 depthwise conv, any other stays."""
    model = randomize_batch_norms(build(), seed=3)
    folded = fold_batch_norms(model)
    for before, after in zip(model.get_layer("the_conv").get_weights(), folded.get_layer("the_conv").get_weights()):
        np.testing.assert_array_equal(before, after)
    bn = model.get_layer("the_bn")
    as_depthwise = bn.axis in ([3], [-1], 3, -1) and bn.input.shape.rank == 4
    assert type(folded.get_layer("the_bn")) is (layers.DepthwiseConv2D if as_depthwise else layers.BatchNormalization)
    assert kinds(fold_batch_norms(model, standalone_as_depthwise=False)) == kinds(model)
    x = images((2,) + tuple(model.input.shape[1:]))
    np.testing.assert_allclose(folded(x, training=False).numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_a_standalone_bn_becomes_the_same_affine_map_as_a_1x1_depthwise_conv():
    inputs = keras.Input((6, 6, 5))
    x = layers.Concatenate()([inputs, layers.Conv2D(3, 1)(inputs)])
    x = layers.BatchNormalization(epsilon=1e-3, name="pre_bn")(x)
    model = randomize_batch_norms(keras.Model(inputs, layers.ReLU()(x)), seed=4)
    folded = fold_batch_norms(model)
    depthwise = folded.get_layer("pre_bn")
    assert isinstance(depthwise, layers.DepthwiseConv2D) and depthwise.depthwise_kernel.shape == (1, 1, 8, 1)
    gamma, beta, mean, variance = model.get_layer("pre_bn").get_weights()
    np.testing.assert_allclose(depthwise.depthwise_kernel.numpy().ravel(), gamma / np.sqrt(variance + 1e-3), rtol=1e-6)
    x = images((3, 6, 6, 5))
    np.testing.assert_allclose(folded(x, training=False).numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


class _SignGate(layers.Layer):
    """A custom layer whose call branches on a tensor in Python: it needs AutoGraph inside a graph."""

    def call(self, inputs):
        if tf.reduce_mean(inputs) > 0:
            return inputs
        return -inputs


def test_rebuilding_keeps_autograph_for_custom_layers():
    """Keras' own layers are rebuilt without AutoGraph (faster); a user's layer is still converted."""
    inputs = keras.Input((6, 6, 3))
    x = layers.BatchNormalization()(layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, _SignGate()(x))
    folded = fold_batch_norms(model)
    x = images((2, 6, 6, 3))
    np.testing.assert_allclose(folded(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-5)
