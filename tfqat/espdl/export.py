"""`export_espdl`: a tfqat int8 model as an `.espdl` file for ESP-DL on ESP32-S3 or ESP32-P4.

The file embeds a test input and the outputs tfqat's integer reference computes for it in the chip's
arithmetic (`tfqat.integer`, target "esp32s3" or "esp32p4"), so the board checks itself on first load:
ESP-DL's `Model::test()` compares int8 outputs exactly. A model is exported for the chip it was quantized
for (the file's recorded target): only then is ESP-DL's arithmetic the one the Keras model trained with.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfqat import __version__
from tfqat.espdl import convert
from tfqat.espdl.flatbuffer import espdl_bytes
from tfqat.espdl.model import Tensor
from tfqat.files import write_atomic
from tfqat.integer.executor import IntegerModel
from tfqat.integer.model import ExecutorError, read_graph
from tfqat.preprocessing import PREPROCESSING_METADATA
from tfqat.tflite.litert import (
    LABELS_METADATA, TARGET_METADATA, TensorSpec, model_label, quantize, read_metadata, read_model_bytes,
)

TEST_SEED = 0


@dataclass(frozen=True)
class EspdlExport:
    """What `export_espdl` wrote."""

    path: Path
    chip: str
    size: int  # bytes
    ops: tuple[str, ...]  # ESP-DL op types, in first-use order
    test_input: np.ndarray  # the embedded int8 input (NHWC)
    test_outputs: tuple[np.ndarray, ...]  # the embedded int8 outputs, from the integer reference


def export_espdl(
    model, path: str | os.PathLike, *, chip: str | None = None, test_input: np.ndarray | None = None
) -> EspdlExport:
    """Write `model` as an .espdl file for `chip`, with a test input and its outputs embedded.

    Args:
      model: a tfqat int8 .tflite file or its bytes, or a tfqat QAT Keras model (exported first).
      path: the .espdl file to write (atomically: a refused model leaves nothing behind).
      chip: "esp32s3" or "esp32p4"; default: the target the model was quantized for.
      test_input: one float image (H, W, C) or batch of one in the model's preprocessing, quantized to the
        int8 input; default: seeded random int8 values (the check needs no real image).

    Raises:
      EspdlExportError: the model was quantized for another target, or holds something ESP-DL cannot
        express (the message names the op and the reason).
    """
    content, label = _tflite(model)
    recorded = read_metadata(content, TARGET_METADATA)
    chip = convert.chip_target(chip or recorded).name  # a ValueError naming the chips
    if recorded != chip:
        raise convert.EspdlExportError(
            f"{label} was quantized for target {recorded!r}, not {chip!r}: its Keras model rounds as that runtime "
            f"does. Quantize for {chip!r} (quantize_model(..., target={chip!r})) or tfqat.retarget the QAT model, "
            "then export it again"
        )
    try:
        graph = read_graph(content, label)
    except ExecutorError as error:
        raise convert.EspdlExportError(str(error)) from None
    espdl = convert.to_espdl(graph, chip, name=Path(path).stem)
    reference = IntegerModel(content, ties=chip)
    [spec] = reference.inputs
    quantized = _test_input(spec, test_input)
    outputs = reference.run(quantized, keep_tensors=False).outputs
    espdl.test_inputs = [_value(espdl.inputs[0], quantized)]
    espdl.test_outputs = [_value(info, values) for info, values in zip(espdl.outputs, outputs)]
    for key in (LABELS_METADATA, PREPROCESSING_METADATA):
        text = read_metadata(content, key)
        if text is not None:
            espdl.metadata[key] = text
    data = espdl_bytes(espdl, version=__version__)
    written = write_atomic(path, data)
    ops = tuple(dict.fromkeys(node.op_type for node in espdl.nodes))
    return EspdlExport(written, chip, len(data), ops, quantized[0], tuple(o[0] for o in outputs))


def _tflite(model) -> tuple[bytes, str]:
    if hasattr(model, "layers"):  # a Keras QAT model: its own int8 export, verified
        from tfqat.tflite.export import export_tflite

        with tempfile.TemporaryDirectory() as folder:
            path = export_tflite(model, Path(folder) / "model.tflite")
            return path.read_bytes(), f"model {model.name!r}"
    return read_model_bytes(model), model_label(model)


def _test_input(spec, image) -> np.ndarray:
    """The embedded int8 input: the image quantized with the model input's scale and zero point (`spec`, the
    integer reference's input tensor), else seeded random values."""
    shape = (1, *spec.shape[1:])
    if image is None:
        return np.random.default_rng(TEST_SEED).integers(-128, 128, shape).astype(np.int8)
    image = np.asarray(image, np.float32)
    image = image[None] if image.ndim == len(shape) - 1 else image
    if image.shape != shape:
        raise ValueError(f"test_input has shape {image.shape[1:] if image.ndim == len(shape) else image.shape}; "
                         f"the model takes {shape[1:]}")
    input_spec = TensorSpec(spec.index, spec.name, np.dtype(spec.dtype).name, spec.shape, spec.scales[0], spec.zero_point)
    return quantize(image, input_spec)


def _value(info, values: np.ndarray) -> Tensor:
    """A test value: the variable's name, its NHWC integers and exponent."""
    values = np.asarray(values, np.int8).reshape(info.shape)
    return Tensor(info.name, info.shape, values, info.exponents)
