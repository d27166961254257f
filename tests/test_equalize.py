"""Cross-layer equalization: the same function, and equal ranges on both sides of each pair."""

from tfqat._keras import keras

import numpy as np
import pytest
import tensorflow as tf

import tfqat
from tfqat.graph import functional
from tfqat.post_training.equalize import clipped_fractions, equalization_scales, equalize, find_pairs


def _spread_batch_norms(model, seed=0):
    """BN statistics whose per-channel gains span three decades, as trained depthwise layers have."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            gain = 10.0 ** rng.uniform(-2, 1, gamma.shape)
            layer.set_weights([gain, rng.normal(0, 0.5, beta.shape), rng.normal(0, 0.1, mean.shape), variance])
    return model


def _block(relu_max=None, depthwise_clip=True):
    """expand -> ReLU -> pad -> depthwise -> ReLU -> project; ReLUs clip at `relu_max` (the second one only if asked)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 1, use_bias=False, name="expand")(inputs)
    x = keras.layers.BatchNormalization(name="expand_bn")(x)
    x = keras.layers.ReLU(relu_max, name="expand_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pad")(x)
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="depthwise")(x)
    x = keras.layers.BatchNormalization(name="depthwise_bn")(x)
    x = keras.layers.ReLU(relu_max if depthwise_clip else None, name="depthwise_relu")(x)
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="project")(x)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return _spread_batch_norms(keras.Model(inputs, keras.layers.Dense(3, name="logits")(x)))


def _images(count=8, size=12, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (count, size, size, 3)).astype(np.float32)


def _ranges(model, name, side):
    kernel = model.get_layer(name).get_weights()[0]
    if side == "in" or isinstance(model.get_layer(name), keras.layers.DepthwiseConv2D):
        return np.abs(kernel).max(axis=(0, 1, 3))
    return np.abs(kernel).max(axis=(0, 1, 2))


def test_scales_give_both_kernels_the_geometric_mean_range_and_never_grow_the_first():
    first, second = np.array([8.0, 9.0, 1.0, 0.0, 2.0]), np.array([2.0, 1.0, 4.0, 3.0, 0.0])
    scales = equalization_scales(first, second)
    np.testing.assert_allclose(scales, [2.0, 3.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose((first / scales)[:2], (second * scales)[:2])


def test_pairs_reach_across_relu_and_padding_but_not_pooling():
    pairs = find_pairs(tfqat.fold_batch_norms(_block()))
    assert [(p.first, p.second) for p in pairs] == [("expand", "depthwise"), ("depthwise", "project")]
    assert [p.clip for p in pairs] == [None, None]
    assert [p.clip for p in find_pairs(tfqat.fold_batch_norms(_block(relu_max=6.0)))] == [6.0, 6.0]


def test_equalized_model_computes_the_same_function():
    model = _block()
    equalized = equalize(model)
    np.testing.assert_allclose(equalized(_images()).numpy(), model(_images()).numpy(), rtol=1e-4, atol=1e-5)


def test_every_pair_ends_with_the_first_no_wider_than_the_second():
    folded = tfqat.fold_batch_norms(_block())
    equalized = equalize(folded)
    for pair in find_pairs(equalized):
        before = _ranges(folded, pair.first, "out"), _ranges(folded, pair.second, "in")
        after = _ranges(equalized, pair.first, "out"), _ranges(equalized, pair.second, "in")
        assert np.all(after[0] <= after[1] * (1 + 1e-3))  # wider first channels were shrunk to meet the second
        assert after[0].max() < before[0].max()  # so the first kernel's per-tensor range shrank
    # Some channel was wider in the first kernel, so the test has something to check.
    assert np.any(_ranges(folded, "expand", "out") > _ranges(folded, "depthwise", "in"))


def test_relu6_stays_and_the_function_is_kept_below_its_clip():
    model = _block(relu_max=6.0)
    equalized = equalize(model)
    assert equalized.get_layer("expand_relu").max_value == 6.0
    # Inputs small enough that no pre-activation reaches 6: there the clip never acts and the models agree.
    images = _images() * 0.05
    pre_activations = keras.Model(model.inputs, [model.get_layer(n).input for n in ("expand_relu", "depthwise_relu")])
    assert max(float(np.max(t)) for t in pre_activations(images)) < 6.0
    np.testing.assert_allclose(equalized(images).numpy(), model(images).numpy(), rtol=1e-4, atol=1e-5)


def _fractions_above(model, name, images, clip=6.0):
    outputs = keras.Model(model.inputs, model.get_layer(name).output)(images).numpy()
    return (outputs > clip).mean(axis=(0, 1, 2))


def test_clipped_fractions_count_the_positions_above_the_clip():
    folded = tfqat.fold_batch_norms(_block(relu_max=6.0))
    images = _images(count=6) * 10  # large enough that some ReLU6 clips act
    fractions = clipped_fractions(folded, find_pairs(folded), [images[:4], (images[4:], None)])
    assert set(fractions) == {"expand", "depthwise"}
    expected = _fractions_above(folded, "expand", images)
    assert 0 < expected.max() < 1  # some channels clip somewhere, so the count is tested
    np.testing.assert_allclose(fractions["expand"], expected)
    np.testing.assert_allclose(fractions["depthwise"], _fractions_above(folded, "depthwise", images))
    # One clipped pair (the other ReLU has no max), and a limit on the batches.
    folded = tfqat.fold_batch_norms(_block(relu_max=6.0, depthwise_clip=False))
    fractions = clipped_fractions(folded, find_pairs(folded), [images[:3], images[3:]], steps=1)
    assert set(fractions) == {"expand"}
    np.testing.assert_allclose(fractions["expand"], _fractions_above(folded, "expand", images[:3]))
    assert not np.allclose(fractions["expand"], expected)  # the second batch would have changed the count
    # An array of images is read in batches.
    np.testing.assert_allclose(clipped_fractions(folded, find_pairs(folded), images)["expand"], expected)


def test_with_images_channels_that_clip_keep_their_scale_and_the_function():
    model = _block(relu_max=6.0)
    images = _images() * 10  # large enough that some ReLU6 clips act
    without_data = equalize(model)
    with_data = equalize(model, [images], max_clipped=0.0)
    assert np.abs(without_data(images).numpy() - model(images).numpy()).max() > 1e-3  # moved clips change outputs
    np.testing.assert_allclose(with_data(images).numpy(), model(images).numpy(), rtol=1e-4, atol=1e-5)
    folded = tfqat.fold_batch_norms(model)
    shrunk = _ranges(with_data, "depthwise", "out") < _ranges(folded, "depthwise", "out") * (1 - 1e-3)
    assert shrunk.any()  # channels that never clip were still equalized


def test_max_clipped_is_the_largest_fraction_a_scaled_channel_may_clip():
    model = _block(relu_max=6.0)
    images = _images() * 10
    folded = tfqat.fold_batch_norms(model)
    fractions = _fractions_above(folded, "expand", images)
    scaled = _ranges(equalize(model), "expand", "out") < _ranges(folded, "expand", "out") * (1 - 1e-3)
    candidates = np.flatnonzero(scaled & (fractions > 0))
    assert candidates.size  # a channel that clips sometimes and that equalization shrinks
    channel = candidates[0]

    def shrunk(max_clipped):
        equalized = equalize(model, images, max_clipped=max_clipped)
        return _ranges(equalized, "expand", "out")[channel] < _ranges(folded, "expand", "out")[channel] * (1 - 1e-3)

    assert shrunk(float(fractions[channel]))
    assert not shrunk(float(fractions[channel]) * 0.99)


@pytest.fixture(scope="module")
def mobilenet():
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, include_top=False)
    _spread_batch_norms(base)
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(base(inputs)))
    return keras.Model(inputs, outputs)


def test_mobilenet_v2_pairs_and_function(mobilenet):
    folded = tfqat.fold_batch_norms(mobilenet)
    pairs = find_pairs(folded)
    depthwise = {layer.name for layer in folded.layers if isinstance(layer, keras.layers.DepthwiseConv2D)}
    # Every one of the 17 depthwise layers is equalized with the conv before it and the one after it.
    assert sorted(p.second for p in pairs if p.second in depthwise) == sorted(depthwise)
    assert sorted(p.first for p in pairs if p.first in depthwise) == sorted(depthwise)
    # With every ReLU6 made ReLU, the clip is out of the way and the function is kept exactly.
    relu = _relu_for_relu6(mobilenet)
    images = _images(size=32)
    np.testing.assert_allclose(equalize(relu)(images).numpy(), relu(images).numpy(), rtol=1e-3, atol=1e-4)


def test_mobilenet_v2_with_images_and_no_clipping_allowed_keeps_its_function(mobilenet):
    images = _images(size=32)
    np.testing.assert_allclose(
        equalize(mobilenet, images, max_clipped=0.0)(images).numpy(), mobilenet(images).numpy(), rtol=1e-3, atol=1e-4
    )
    assert np.abs(equalize(mobilenet)(images).numpy() - mobilenet(images).numpy()).max() > 1e-2  # clips were moved


def _relu_for_relu6(model):
    def hook(layer, args, kwargs):
        if isinstance(layer, keras.layers.ReLU):
            return keras.layers.ReLU(name=layer.name)(*args, **kwargs)
        return None

    return functional.rebuild(model, hook)


def test_power_of_two_quantization_of_the_equalized_model_is_closer_to_its_float(mobilenet):
    images = _images(count=32, size=32)

    def relative_error(float_model):
        qat = tfqat.quantize_model(float_model)
        tfqat.calibrate(qat, tf.data.Dataset.from_tensor_slices(images).batch(16))
        expected = float_model(images).numpy()
        return np.linalg.norm(qat(images, training=False).numpy() - expected) / np.linalg.norm(expected)

    assert relative_error(equalize(mobilenet)) < 0.8 * relative_error(mobilenet)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="rounds"):
        equalize(_block(), rounds=0)
    with pytest.raises(ValueError, match="max_clipped"):
        equalize(_block(), [_images()], max_clipped=2.0)
    for model in (_block(relu_max=6.0), _block()):
        with pytest.raises(ValueError, match="no image batches"):
            equalize(model, [])
    with pytest.raises(ValueError, match=r"\[N, height, width, channels\]"):
        equalize(_block(relu_max=6.0), _images()[0])
    with pytest.raises(TypeError, match="tf_keras Model"):
        equalize("model.h5")
