"""Tests for tfqat.flowers.augment: training augmentation keeps shape and range and repeats with its seed."""

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import numpy as np
import pytest
import tensorflow as tf

from tfqat.flowers.augment import augment

SIZE = 32  # small contract size keeps the tests fast


@pytest.mark.parametrize("fill", [-1.0, 1.0, None])
def test_augment_keeps_shape_and_range(fill):
    rng = np.random.default_rng(3)
    image = np.full((SIZE, SIZE, 3), fill, np.float32) if fill is not None else rng.uniform(-1, 1, (SIZE, SIZE, 3))
    image = tf.constant(image, tf.float32)
    for seed in range(8):
        out = augment(image, tf.constant([seed, 1], tf.int64)).numpy()
        assert out.shape == (SIZE, SIZE, 3) and out.min() >= -1.0 and out.max() <= 1.0
    np.testing.assert_array_equal(augment(image, tf.constant([5, 5])), augment(image, tf.constant([5, 5])))
