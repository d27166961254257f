"""Image batches from what Keras users pass for data, and a model's inference outputs on them.

Tracing a QAT MobileNetV2 into a graph costs 5-8 s (its quantizers add thousands
of ops), while an eager batch costs well under a second more than a traced one:
a few batches (a quick run's 32 calibration images, 64 test images) run
eagerly, and only longer inputs pay for a trace.
"""

from typing import Optional

import numpy as np
import tensorflow as tf

BATCH_SIZE = 32  # an array of images is cut into batches of this size, as Keras' predict does
EAGER_BATCHES = 4  # batches run eagerly before a traced function takes over


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


def inference_outputs(model, batches):
    """`model(batch, training=False)` for each batch: the first EAGER_BATCHES eagerly, the rest traced once
    (any batch size, without AutoGraph: the model's inference call has no tensor-dependent Python control flow).

    Quantizers read their modes (e.g. calibration's `collecting_ranges`) when called or traced, so the
    modes set around this loop hold for every batch.
    """
    function = None
    for index, batch in enumerate(batches):
        if index < EAGER_BATCHES:
            yield model(batch, training=False)
            continue
        if function is None:
            spec = tf.TensorSpec((None, *batch.shape[1:]), batch.dtype)
            function = tf.function(lambda x: model(x, training=False), input_signature=[spec], autograph=False)
        yield function(batch)
