"""The peers tfqat's models are compared with: the TFLite converter's own PTQ and TFMOT's default QAT."""

from typing import Iterable

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfqat.graph import functional
from tfqat.tflite import export


def convert_tflite_ptq(model, representative_images: Iterable[np.ndarray]) -> bytes:
    """The TFLite converter's own full-integer PTQ (per-channel float scales): a peer."""
    images = [np.asarray(image, np.float32) for image in representative_images]
    if not images:
        raise ValueError("convert_tflite_ptq needs at least one representative image")

    def representative_dataset():
        for image in images:
            yield [image[None]]

    converter = export.make_converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        return export.convert(converter, f"float model '{model.name}' with TFLite PTQ")
    except export.ExportError as error:
        raise PeerError(str(error)) from error


class PeerError(RuntimeError):
    """A peer tool that cannot take the network (TFMOT refuses EfficientNet's Rescaling and fails on
    MobileNetV3's operator layers): the run goes on without it and says why."""


def tfmot_default_qat(model):
    """TFMOT's default 8-bit QAT model of a float model (a peer; nested models are inlined)."""
    flat = functional.flatten(model)
    try:
        return tfmot.quantization.keras.quantize_model(flat)
    except Exception as error:  # TFMOT raises many types for layers its default scheme does not cover
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PeerError(f"TFMOT's default QAT cannot quantize '{model.name}': {type(error).__name__}: {reason}") from error
