"""Conversion to TFLite: tfqat's power-of-two int8 export and the float export.

The int8 export takes every range from the QAT model's FakeQuant ops, so the
file holds exactly the power-of-two scales the model trained with. Files are
written atomically and carry their class labels as TFLite metadata.
"""

import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

from tfqat._keras import keras

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from tfqat.graph import functional
from tfqat.files import write_atomic
from tfqat.quantization.modes import tracing_for_export
from tfqat.preprocessing import PREPROCESSING_METADATA, check_name as check_preprocessing
from tfqat.quantization.tensors import model_preprocessing, model_target
from tfqat.tflite.constants import requantize_shared_constants
from tfqat.tflite.litert import LABELS_METADATA, TARGET_METADATA, read_metadata


class ExportError(RuntimeError):
    """A conversion that failed; no file was written."""


def make_converter(model):
    """A converter over the inference-mode function of `model` (no training branches)."""
    specs = [tf.TensorSpec((1,) + tuple(t.shape[1:]), t.dtype) for t in model.inputs]
    # Without AutoGraph: inference has no tensor-dependent Python control flow, and converting the
    # quantizers' code took a third of the trace.
    function = tf.function(lambda *x: model(x[0] if len(x) == 1 else list(x), training=False), autograph=False)
    with tracing_for_export(model):
        concrete = function.get_concrete_function(*specs)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    # Freeze the function directly: lowering to a SavedModel first re-traces every
    # Keras layer and takes most of a minute even for a tiny model.
    converter.experimental_lower_to_saved_model = False
    return converter


def convert(converter, what: str) -> bytes:
    try:
        with warnings.catch_warnings():
            # The input's range comes from the model's own QuantizeLayer, not from "statistics".
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return converter.convert()
    except Exception as error:  # the converter raises many types; the user needs one sentence
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"TFLite conversion of the {what} failed: {first_line}") from error


def convert_int8(qat_model) -> bytes:
    """Fully int8 TFLite bytes (int8 input and output) from a QAT model's own ranges."""
    converter = make_converter(qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    tflite = convert(converter, f"QAT model '{qat_model.name}'")
    # Equal constants (MobileNetV3's hard-sigmoid 3.0 and 1/6) are merged and lose their FakeQuant range.
    return requantize_shared_constants(tflite)[0]


def convert_float(model) -> bytes:
    """Float32 TFLite bytes, the reference the int8 models are compared with."""
    return convert(make_converter(model), f"float model '{model.name}'")


def with_metadata(tflite_bytes: bytes, name: str, text: str) -> bytes:
    """The same model with `text` stored as the TFLite metadata entry `name` (replacing one of that name)."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    buffer = schema_fb.BufferT()
    buffer.data = np.frombuffer(text.encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    metadata = schema_fb.MetadataT()
    metadata.name = name
    metadata.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != name.encode()] + [metadata]
    return flatbuffer_utils.convert_object_to_bytearray(model)


def with_labels(tflite_bytes: bytes, labels: Sequence[str]) -> bytes:
    """The same model with its class labels stored as TFLite metadata (`tfqat_labels`)."""
    return with_metadata(tflite_bytes, LABELS_METADATA, "\n".join(labels))


def read_labels_metadata(tflite_bytes: bytes) -> Optional[list]:
    """Class labels stored by `with_labels`, or None."""
    text = read_metadata(tflite_bytes, LABELS_METADATA)
    return None if text is None else text.split("\n")


def read_target_metadata(tflite_bytes: bytes) -> Optional[str]:
    """The runtime the file was trained for (`tfqat.targets`), as `export_tflite` records it, or None."""
    return read_metadata(tflite_bytes, TARGET_METADATA)


def save_tflite(
    tflite_bytes: bytes, path, labels: Optional[Sequence[str]] = None, preprocessing: Optional[str] = None
) -> Path:
    """Write a TFLite file atomically; with labels, also store them inside and in `<name>.labels.txt`; with a
    preprocessing (`tfqat.preprocessing`), record it in the metadata."""
    if labels is not None:
        tflite_bytes = with_labels(tflite_bytes, labels)
    if preprocessing is not None:
        tflite_bytes = with_metadata(tflite_bytes, PREPROCESSING_METADATA, check_preprocessing(preprocessing))
    path = write_atomic(path, tflite_bytes)
    if labels is not None:
        write_atomic(labels_path(path), ("\n".join(labels) + "\n").encode("utf-8"))
    return path


def labels_path(tflite_path) -> Path:
    path = Path(tflite_path)
    return path.with_name(path.stem + ".labels.txt")


def export_tflite(qat_model, path, *, labels: Optional[Sequence[str]] = None, verify: bool = True) -> Path:
    """Convert a tfqat QAT model to a fully int8 TFLite file with power-of-two scales.

    int8 input and output, int8 weights and activations, int32 biases, builtin
    integer ops only. The file is written atomically: a failed conversion leaves
    no partial file and keeps an existing one.

    Args:
      qat_model: a model from `tfqat.quantize_model`, trained and/or calibrated.
      path: the `.tflite` file to write.
      labels: class names, stored in the model's metadata and beside it.
      verify: refuse (ExportError, nothing written) a conversion that is not
        fully int8 with power-of-two, shift-only requantization.
    The runtime the model was quantized for (`quantize_model(target=...)`) and the preprocessing of its
    inputs are recorded in the file's metadata (`read_target_metadata`, `read_preprocessing_metadata`).
    Returns:
      The path written.
    """
    if not isinstance(qat_model, keras.Model):
        msg = f"export_tflite needs a tf_keras QAT model, got {type(qat_model).__name__}"
        raise TypeError(msg)
    tflite = convert_int8(qat_model)
    if verify:
        from tfqat.tflite.verify import verify_tflite  # the verifier needs LiteRT, the converter does not

        report = verify_tflite(tflite)
        if not report.passed:
            shown = "; ".join(report.failures[:3])
            more = f" (and {len(report.failures) - 3} more)" if len(report.failures) > 3 else ""
            msg = (
                f"the int8 conversion of '{qat_model.name}' is not shift-only, nothing was written: {shown}{more}; "
                "is it a model from tfqat.quantize_model, calibrated or trained?"
            )
            raise ExportError(msg)
    return save_tflite(with_model_metadata(tflite, qat_model), path, labels)


def with_model_metadata(tflite_bytes: bytes, qat_model) -> bytes:
    """The file with what its QAT model records: the target it rounds for (`tfqat_target`, so that LiteRT
    runs it on that target's kernels by default, `tfqat.tflite.litert.target_kernels`) and the preprocessing
    of its inputs (`tfqat_preprocessing`, read by `tfqat evaluate`, `debug` and `execute`)."""
    recorded = {TARGET_METADATA: model_target(qat_model), PREPROCESSING_METADATA: model_preprocessing(qat_model)}
    for name, value in recorded.items():
        if value is not None:
            tflite_bytes = with_metadata(tflite_bytes, name, value)
    return tflite_bytes


def read_preprocessing_metadata(tflite_bytes) -> Optional[str]:
    """The preprocessing of the model's inputs (`tfqat.preprocessing`) as the export recorded it, or None."""
    return read_metadata(tflite_bytes, PREPROCESSING_METADATA)
