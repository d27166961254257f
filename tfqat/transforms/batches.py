"""Image batches from what Keras users pass for data: an array of images or an iterable of batches."""

from typing import Optional

import numpy as np
import tensorflow as tf

BATCH_SIZE = 32  # an array of images is cut into batches of this size, as Keras' predict does


def image_batches(data, steps: Optional[int] = None):
    """The float32 image batches of `data`, at most `steps` of them.

    `data` is an array of images [N, height, width, channels], or an iterable
    (a tf.data.Dataset, a list) of image batches or of (images, labels) batches.
    """
    if steps is not None and steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive number of batches")
    if isinstance(data, np.ndarray) or tf.is_tensor(data):
        if len(data.shape) != 4:
            shape = tuple(data.shape)
            msg = f"images must be an array [N, height, width, channels] or batches of them, got shape {shape}"
            raise ValueError(msg)
        data = [data[start : start + BATCH_SIZE] for start in range(0, int(data.shape[0]), BATCH_SIZE)]
    return _take(data, steps)


def _take(data, steps):
    for used, batch in enumerate(data):
        if steps is not None and used >= steps:
            return
        yield tf.cast(batch[0] if isinstance(batch, (tuple, list)) else batch, tf.float32)
