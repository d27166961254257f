"""The Keras applications `tfqat run --model` trains on flowers: each one's constructor, preprocessing and file
name. No TensorFlow at import time, so the CLI and the run options can read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Network:
    """One Keras application as the flowers workflow builds it (ImageNet base without its top, new head)."""

    name: str  # keras.applications constructor, and --model
    slug: str  # in file names: flowers_<slug>_int8_<method>.tflite
    preprocessing: str  # tfqat.preprocessing: the inputs the base was trained on
    weights_file: str = ""  # Keras's own name for the ImageNet no-top weights, for the offline error
    has_width: bool = False  # the constructor takes `alpha` (the MobileNets)

    def build_kwargs(self, alpha: float) -> dict:
        """The constructor's own keyword arguments: the width `alpha` where it has one."""
        return {"alpha": alpha} if self.has_width else {}


NETWORKS = {
    n.name: n
    for n in (
        Network("MobileNetV2", "mobilenet_v2", "mobilenet",
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", has_width=True),
        Network("MobileNet", "mobilenet", "mobilenet", "mobilenet_1_0_224_tf_no_top.h5", has_width=True),
        Network("MobileNetV3Small", "mobilenet_v3_small", "raw", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
                has_width=True),
        Network("MobileNetV3Large", "mobilenet_v3_large", "raw", "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
                has_width=True),
        Network("ResNet50", "resnet50", "caffe", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        Network("DenseNet121", "densenet121", "torch", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        Network("EfficientNetB0", "efficientnetb0", "raw", "efficientnetb0_notop.h5"),
    )
}
DEFAULT_NETWORK = "MobileNetV2"  # the published flowers model


def network_named(name: str) -> Network:
    """The network called `name`; a ValueError lists the valid ones."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}")
    return NETWORKS[name]


def file_name(default_name: str, network: str) -> str:
    """A published file name (flowers_mobilenet_v2_...) for `network`'s run."""
    return default_name.replace(NETWORKS[DEFAULT_NETWORK].slug, network_named(network).slug, 1)
