"""The flowers classifier: an ImageNet MobileNetV2 base nested in a new head, as transfer learning builds it."""

from pathlib import Path
from typing import Optional, Union

from tfqat._keras import keras

MOBILENET_V2_WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5"


def _base(image_size: int, alpha: float, weights: Optional[Union[str, Path]]):
    shape = (image_size, image_size, 3)
    if weights is None or weights == "imagenet":
        try:
            return keras.applications.MobileNetV2(input_shape=shape, alpha=alpha, include_top=False, weights=weights)
        except Exception as error:  # download failures surface as many exception types
            msg = (
                f"could not get ImageNet weights for MobileNetV2 (alpha={alpha}) ({error}); offline, pass a "
                f"local weights file such as {MOBILENET_V2_WEIGHTS_FILE.format(alpha='1.0', size=224)}"
            )
            raise RuntimeError(msg) from error
    path = Path(weights)
    if not path.is_file():
        msg = f"weights file {path} does not exist"
        raise FileNotFoundError(msg)
    base = keras.applications.MobileNetV2(input_shape=shape, alpha=alpha, include_top=False, weights=None)
    try:
        base.load_weights(str(path))
    except (ValueError, OSError, KeyError) as error:
        msg = (
            f"weights file {path} does not fit MobileNetV2(alpha={alpha}, include_top=False): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        )
        raise ValueError(msg) from error
    return base


def build_classifier(
    num_classes: int,
    *,
    image_size: int = 224,
    alpha: float = 1.0,
    weights: Optional[Union[str, Path]] = "imagenet",
    dropout: float = 0.2,
):
    """MobileNetV2 base (frozen at first) + global average pooling + dropout + Dense logits.

    Inputs are images in [-1, 1] (the image contract of `tfqat.data.images`); outputs are
    logits, so the int8 model's last op is the Dense layer and top-1 is an argmax.

    Returns:
      (model, base): the classifier and its nested MobileNetV2 base.
    """
    if num_classes < 2:
        msg = f"num_classes={num_classes!r}: a classifier needs at least 2 classes"
        raise ValueError(msg)
    base = _base(image_size, alpha, weights)
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="image")
    # training=False keeps BatchNormalization on its ImageNet statistics while fine-tuning.
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="flowers_mobilenet_v2"), base
