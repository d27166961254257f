"""The flowers classifier: an ImageNet Keras application base nested in a new head, as transfer learning builds it."""

from pathlib import Path
from typing import Optional, Union

from tfqat._keras import keras

from tfqat.flowers.networks import DEFAULT_NETWORK, network_named


def _base(network: str, image_size: int, alpha: float, weights: Optional[Union[str, Path]]):
    spec = network_named(network)
    constructor = getattr(keras.applications, spec.name)
    arguments = dict(input_shape=(image_size, image_size, 3), include_top=False, **spec.build_kwargs(alpha))
    if weights is None or weights == "imagenet":
        try:
            return constructor(weights=weights, **arguments)
        except Exception as error:  # download failures surface as many exception types
            msg = (
                f"could not get ImageNet weights for {spec.name} ({error}); offline, pass a local weights file "
                f"such as {spec.weights_file}"
            )
            raise RuntimeError(msg) from error
    path = Path(weights)
    if not path.is_file():
        msg = f"weights file {path} does not exist"
        raise FileNotFoundError(msg)
    base = constructor(weights=None, **arguments)
    try:
        base.load_weights(str(path))
    except (ValueError, OSError, KeyError) as error:
        shown = ", ".join(f"{k}={v}" for k, v in spec.build_kwargs(alpha).items())
        msg = (
            f"weights file {path} does not fit {spec.name}({shown + ', ' if shown else ''}include_top=False): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        )
        raise ValueError(msg) from error
    return base


def build_classifier(
    num_classes: int,
    *,
    network: str = DEFAULT_NETWORK,
    image_size: int = 224,
    alpha: float = 1.0,
    weights: Optional[Union[str, Path]] = "imagenet",
    dropout: float = 0.2,
):
    """A Keras application base (frozen at first) + global average pooling + dropout + Dense logits.

    Inputs are images under the network's own preprocessing (`tfqat.flowers.networks`, `tfqat.preprocessing`);
    outputs are logits, so the int8 model's last op is the Dense layer and top-1 is an argmax.
    `alpha` is the width of the MobileNets (ignored by the others).

    Returns:
      (model, base): the classifier and its nested base.
    """
    if num_classes < 2:
        msg = f"num_classes={num_classes!r}: a classifier needs at least 2 classes"
        raise ValueError(msg)
    base = _base(network, image_size, alpha, weights)
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="image")
    # training=False keeps BatchNormalization on its ImageNet statistics while fine-tuning.
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"flowers_{network_named(network).slug}"), base
