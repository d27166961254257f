"""Makes TensorFlow use tf_keras (Keras 2), which TFMOT needs, before anything imports TensorFlow."""

import os
import sys

_LEGACY_VALUES = ("1", "true", "True")


def _select_legacy_keras():
    if "tensorflow" not in sys.modules:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        return
    if os.environ.get("TF_USE_LEGACY_KERAS") in _LEGACY_VALUES:
        return
    import tensorflow as tf

    version = getattr(tf.keras, "version", lambda: "2")()
    if version.startswith("3."):
        msg = (
            "tfqat needs tf_keras (Keras 2), but TensorFlow was imported with Keras 3 "
            f"(tf.keras {version}). Set TF_USE_LEGACY_KERAS=1 before importing TensorFlow, "
            "or import tfqat first."
        )
        raise ImportError(msg)


_select_legacy_keras()

import tf_keras as keras  # noqa: E402  (must follow the environment setup)

__all__ = ["keras"]
