"""How a network wants its pixels: the preprocessings of the Keras applications, by name, and which is whose.

A network is calibrated, evaluated and debugged on the inputs it was trained on,
so the preprocessing is part of a model's contract: `tfqat.quantize_model` stores
it in the QAT model (its input quantizer's config) and the export in the .tflite
metadata, and the commands read it from there. A model that is a known Keras
application gets its own by default; any other model needs it named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

PREPROCESSING_METADATA = "tfqat_preprocessing"


@dataclass(frozen=True)
class Preprocessing:
    """One mapping of RGB pixels in [0, 255] to a network's float inputs."""

    name: str
    summary: str  # how it computes, for help texts, errors and reports
    networks: str  # the Keras applications trained on it
    low: float  # the smallest and largest input it produces from pixels in [0, 255]
    high: float
    offset: tuple = (0.0, 0.0, 0.0)  # input = (pixel[channels] - offset) / divisor, per channel
    divisor: tuple = (1.0, 1.0, 1.0)
    bgr: bool = False  # channels reversed to BGR first

    def apply(self, pixels):
        """Float inputs from float32 RGB pixels in [0, 255] (a tf.Tensor or array, channels last)."""
        if self.bgr:
            pixels = pixels[..., ::-1]
        if self.offset == (0.0, 0.0, 0.0) and self.divisor == (1.0, 1.0, 1.0):
            return pixels
        offset = np.asarray(self.offset, np.float32)
        divisor = np.asarray(self.divisor, np.float32)
        if len(set(self.offset)) == 1 and len(set(self.divisor)) == 1:  # a scalar: x / 127.5 - 1 exactly as before
            return pixels / divisor[0] - offset[0] / divisor[0]
        return (pixels - offset) / divisor


_IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

PREPROCESSINGS = {
    p.name: p
    for p in (
        Preprocessing(
            "mobilenet", "x / 127.5 - 1: inputs in [-1, 1] (Keras's 'tf' mode)",
            "MobileNet, MobileNetV2, ResNet V2, Inception, Xception", -1.0, 1.0, (127.5,) * 3, (127.5,) * 3,
        ),
        Preprocessing(
            "caffe", "RGB to BGR, minus the ImageNet mean (103.939, 116.779, 123.68) per channel (Keras's 'caffe' mode)",
            "ResNet50/101/152, VGG16/19", -123.68, 255 - 103.939, _CAFFE_MEAN_BGR, bgr=True,
        ),
        Preprocessing(
            "torch", "x / 255 minus the ImageNet mean (0.485, 0.456, 0.406), divided by its standard deviation "
            "(0.229, 0.224, 0.225) (Keras's 'torch' mode)",
            "DenseNet121/169/201", -0.485 / 0.229, (1 - 0.406) / 0.225, _IMAGENET_MEAN_RGB, _IMAGENET_STD_RGB,
        ),
        Preprocessing(
            "raw", "pixels as they are, 0 to 255 (the network rescales them itself)",
            "EfficientNet, EfficientNetV2, MobileNetV3, ConvNeXt, RegNet", 0.0, 255.0,
        ),
    )
}
DEFAULT_PREPROCESSING = "mobilenet"  # the flowers MobileNetV2's


def preprocessing_named(name: str) -> Preprocessing:
    """The preprocessing called `name`; a ValueError lists the valid ones."""
    if name not in PREPROCESSINGS:
        raise ValueError(f"unknown preprocessing {name!r}; choose from {describe_choices()}")
    return PREPROCESSINGS[name]


def describe_choices() -> str:
    return "; ".join(f"{p.name}: {p.summary}, for {p.networks}" for p in PREPROCESSINGS.values())


# Keras application model names (as keras.applications builds them) -> preprocessing. A network that rescales
# its own input does so with a Rescaling layer; MobileNetV3 and EfficientNetV2 built without it
# (include_preprocessing=False) take [-1, 1] instead.
_APPLICATION_NAMES = (
    (r"mobilenet_\d", "mobilenet"),
    (r"mobilenetv2_", "mobilenet"),
    (r"mobilenetv3(small|large)", "raw-if-rescaling"),
    (r"resnet\d+v2", "mobilenet"),
    (r"resnet(50|101|152)", "caffe"),
    (r"densenet\d+", "torch"),
    (r"efficientnetb\d", "raw"),
    (r"efficientnetv2-", "raw-if-rescaling"),
    (r"vgg1[69]", "caffe"),
    (r"(inception_v3|inception_resnet_v2|xception|nasnet)", "mobilenet"),
    (r"(convnext_|regnet)", "raw"),
)
# The same networks flattened into a model of the user's (layer names the applications give).
_APPLICATION_LAYERS = (
    ({"Conv1", "block_1_expand"}, "mobilenet"),
    ({"conv1", "conv_dw_1"}, "mobilenet"),
    ({"Conv", "expanded_conv/depthwise"}, "raw-if-rescaling"),
    ({"conv1_conv", "conv2_block1_preact_bn"}, "mobilenet"),
    ({"conv1_conv", "conv2_block1_0_conv"}, "caffe"),
    ({"conv1/conv", "conv2_block1_0_bn"}, "torch"),
    ({"stem_conv", "top_conv"}, "raw-if-rescaling"),
    ({"block1_conv1", "block5_conv3"}, "caffe"),
)


def application_preprocessing(model) -> Optional[str]:
    """The preprocessing of a Keras application (the model itself, one nested in it, or its layers inlined in
    it), or None for any other model. Reads only names and layer classes."""
    models = [model, *(layer for layer in getattr(model, "layers", ()) if hasattr(layer, "layers"))]
    layer_names, rescales = set(), False
    for each in models:
        for layer in getattr(each, "layers", ()):
            layer_names.add(layer.name)
            rescales = rescales or type(layer).__name__ == "Rescaling"
    found = None
    for each in models:
        for pattern, name in _APPLICATION_NAMES:
            if re.match(pattern, each.name, re.IGNORECASE):
                found = found or name
    if found is None:
        found = next((name for names, name in _APPLICATION_LAYERS if names <= layer_names), None)
    if found == "raw-if-rescaling":
        return "raw" if rescales else "mobilenet"
    return found


def check_name(name) -> Optional[str]:
    """`name` if it is None or a preprocessing's name; else a ValueError listing them."""
    if name is not None:
        preprocessing_named(name)
    return name


def resolve(given: Optional[str], *, stored: Optional[str] = None, model=None, source: str = "the model") -> str:
    """The preprocessing to feed `source` with: the one `given` (a --preprocessing flag), else the one the
    model or file records (`stored`), else a known Keras application's (`model`, a float Keras model).

    A flag that contradicts what the file records is refused (it is almost always the wrong file or flag),
    and a model with none of the three gets an error that says what to pass.
    """
    check_name(given)
    check_name(stored)
    if given is not None and stored is not None and given != stored:
        raise ValueError(
            f"--preprocessing {given} contradicts the preprocessing '{stored}' recorded in {source}; "
            "leave the flag out to use the recorded one"
        )
    found = given or stored or (application_preprocessing(model) if model is not None else None)
    if found is None:
        raise ValueError(
            f"{source} does not record how its inputs are preprocessed and is not a known Keras application: "
            f"pass --preprocessing (preprocessing= in Python) with one of: {describe_choices()}"
        )
    return found
