"""tfqat: power-of-two int8 quantization-aware training for Keras MobileNetV2."""

from tfqat._keras import keras  # first: selects tf_keras before TensorFlow loads

from tfqat.api import calibrate, load_model, quantize_model, quantize_scope
from tfqat.transforms.equalize import equalize
from tfqat.tflite.export import export_tflite
from tfqat.transforms.folding import fold_batch_norms
from tfqat.quantization.scheme import Pow2QuantizeScheme
from tfqat.tflite.verify import verify_tflite
from tfqat import distribute  # noqa: E402  (tf.distribute strategies by name)

__all__ = [
    "calibrate",
    "equalize",
    "export_tflite",
    "fold_batch_norms",
    "keras",
    "load_model",
    "quantize_model",
    "quantize_scope",
    "verify_tflite",
    "Pow2QuantizeScheme",
]
__version__ = "0.1.0"
