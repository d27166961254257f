"""tfqat: power-of-two int8 quantization-aware training for Keras MobileNetV2.

The public API is loaded on first use, so `import tfqat` (and `tfqat --help`)
does not start TensorFlow. Importing tfqat before TensorFlow still selects
tf_keras (Keras 2), which TFMOT needs.
"""

import importlib
import os
import sys

if "tensorflow" not in sys.modules:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tfqat._keras checks this again when TensorFlow is loaded

__version__ = "0.1.0"

# Public name -> the module that defines it.
_API = {
    "adaround": "tfqat.post_training.adaround",
    "calibrate": "tfqat.api",
    "correct_biases": "tfqat.post_training.bias_correction",
    "load_model": "tfqat.api",
    "ptq": "tfqat.api",
    "quantize_model": "tfqat.api",
    "quantize_scope": "tfqat.api",
    "retarget": "tfqat.api",
    "equalize": "tfqat.post_training.equalize",
    "execute_tflite": "tfqat.integer.executor",
    "export_espdl": "tfqat.espdl.export",
    "export_micro": "tfqat.tflite.micro",
    "export_tflite": "tfqat.tflite.export",
    "ExponentChanges": "tfqat.quantization.freeze",
    "fold_batch_norms": "tfqat.graph.folding",
    "FreezeThresholds": "tfqat.quantization.freeze",
    "Pow2QuantizeScheme": "tfqat.quantization.scheme",
    "verify_tflite": "tfqat.tflite.verify",
    "keras": "tfqat._keras",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # loaded once
        return value
    if name == "distribute":  # tf.distribute strategies by name (`tfqat.distribute.make_strategy`)
        return importlib.import_module("tfqat.distribute")
    raise AttributeError(f"module 'tfqat' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API) | {"distribute"})
