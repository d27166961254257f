"""Image batches from arrays and iterables, as calibrate and equalize read them."""

from tfqat._keras import keras  # noqa: F401  (tf_keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from tfqat.data.batches import BATCH_SIZE, EAGER_BATCHES, image_batches, inference_outputs


def _images(count):
    return np.arange(count * 2 * 2 * 3, dtype=np.float64).reshape(count, 2, 2, 3)


def test_an_array_is_cut_into_batches_in_order():
    images = _images(BATCH_SIZE * 2 + 5)
    batches = list(image_batches(images))
    assert [len(b) for b in batches] == [BATCH_SIZE, BATCH_SIZE, 5]
    assert all(b.dtype == tf.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in batches]), images.astype(np.float32))


def test_labelled_batches_give_their_images_and_steps_limit_them():
    images = _images(6)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(6))).batch(2)
    batches = list(image_batches(dataset, steps=2))
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[1].numpy(), images[2:4].astype(np.float32))
    assert len(list(image_batches([images[:3], (images[3:], None)]))) == 2


@pytest.mark.parametrize(
    "data, steps, message",
    [
        (_images(4)[0], None, r"\[N, height, width, channels\].*\(2, 2, 3\)"),
        (_images(4), 0, "steps=0 must be a positive"),
    ],
)
def test_bad_input_is_named(data, steps, message):
    with pytest.raises(ValueError, match=message):
        image_batches(data, steps)


def test_inference_outputs_are_the_models_eager_or_traced_whatever_the_batch_sizes():
    """The first EAGER_BATCHES batches run eagerly, then one traced function takes every later batch size."""
    inputs = keras.Input((2, 2, 3))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
    sizes = [3] * EAGER_BATCHES + [5, 2, 7]
    batches = [tf.constant(np.random.default_rng(n).normal(size=(n, 2, 2, 3)), tf.float32) for n in sizes]
    outputs = list(inference_outputs(model, batches))
    assert [len(o) for o in outputs] == sizes
    for batch, output in zip(batches, outputs):
        np.testing.assert_allclose(output.numpy(), model(batch, training=False).numpy(), atol=1e-6)
