"""Training augmentation of flower photos, on images already under the image contract of `tfqat.data.images`."""

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import tensorflow as tf


def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mild random flip, zoom, brightness and contrast of one preprocessed image; stays in [-1, 1].

    Deliberately no vertical flips, rotations or hue shifts: flowers are photographed upright and
    colour is what separates some classes (dandelion from sunflower). `seed` is an int [2] tensor.
    """
    seeds = tf.random.experimental.stateless_split(seed, 5)
    size = tf.shape(image)[:2]
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    # Zoom in by cropping 80-100% of each side at a random place, then resize back with the
    # contract's bilinear resampling; bilinear mixes keep values inside [-1, 1].
    side = tf.random.stateless_uniform([], seeds[1], 0.8, 1.0)
    corner = tf.random.stateless_uniform([2], seeds[2], 0.0, 1.0) * (1.0 - side)
    box = tf.concat([corner, corner + side], axis=0)[None]
    image = tf.image.crop_and_resize(image[None], box, tf.zeros([1], tf.int32), size, method="bilinear")[0]
    image = tf.image.stateless_random_brightness(image, 0.1, seeds[3])
    image = tf.image.stateless_random_contrast(image, 0.9, 1.1, seeds[4])
    return tf.clip_by_value(image, -1.0, 1.0)
