"""The one shared helper for loading and running a TFLite model with LiteRT.

LiteRT (ai_edge_litert) does not need TensorFlow, and neither does this module.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union, overload

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tfqat.progress import progress as progress_bar

ModelSource = Union[str, os.PathLike, bytes, Interpreter]
Kernels = Literal["builtin", "reference", "xnnpack"]

# The kernel sets disagree by one step at some rounding ties, which power-of-two scales make common
# (tfqat.targets measures each): a model is run by default on the kernels of the target it was made for
# (`target_kernels`), and a file without one on LiteRT's own default, XNNPACK.
_RESOLVERS = {
    "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    "reference": OpResolverType.BUILTIN_REF,
    "xnnpack": OpResolverType.AUTO,
}
KERNELS = tuple(_RESOLVERS)  # the kernel sets `load_interpreter(kernels=...)` runs

LITERT_DEFAULT: Kernels = "xnnpack"  # what `Interpreter(model_path=...)` applies
TARGET_METADATA = "tfqat_target"  # the runtime whose rounding the Keras model reproduced (tfqat.targets)
LABELS_METADATA = "tfqat_labels"  # the class names, one a line

# A TFLite flatbuffer carries this file identifier at bytes 4..8.
_TFLITE_IDENTIFIER = b"TFL3"


class TFLiteModelError(ValueError):
    """A file, buffer or model that LiteRT cannot use, explained in one sentence."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: dtype, shape and (per-tensor) quantization."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        # LiteRT reports scale 0 for tensors without quantization parameters.
        return self.scale != 0.0

    def describe(self) -> str:
        quant = f"scale {self.scale:g}, zero point {self.zero_point}" if self.quantized else "not quantized"
        return f"{self.name}: {self.dtype}{list(self.shape)}, {quant}"


@dataclass(frozen=True)
class ModelIO:
    """The inputs and outputs of a TFLite model."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def describe(self) -> str:
        lines = [f"input  {spec.describe()}" for spec in self.inputs]
        lines += [f"output {spec.describe()}" for spec in self.outputs]
        return "\n".join(lines)


def read_model_bytes(model: str | os.PathLike | bytes) -> bytes:
    """Returns the flatbuffer bytes of a path or buffer, or raises TFLiteModelError."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        content, label = bytes(model), "the model buffer"
    else:
        path = Path(model)
        if not path.exists():
            raise TFLiteModelError(f"TFLite model not found: {path}")
        if not path.is_file():
            raise TFLiteModelError(f"{path} is not a file (expected a .tflite model)")
        content, label = path.read_bytes(), str(path)
    if content[4:8] != _TFLITE_IDENTIFIER:
        raise TFLiteModelError(f"{label} is not a TFLite flatbuffer (no 'TFL3' file identifier)")
    return content


def read_metadata(model: str | os.PathLike | bytes, name: str) -> str | None:
    """The text of the TFLite metadata entry `name`, or None (the schema's generated reader: no TensorFlow)."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(read_model_bytes(model), 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if (entry.Name() or b"").decode() == name:
            return root.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8")
    return None


def target_kernels(model: str | os.PathLike | bytes) -> Kernels:
    """The LiteRT kernels that compute as the file's recorded target (`tfqat.targets`) does: that target's
    runtime where LiteRT runs it; the reference kernels for TFLite Micro (its kernels are their ports; they
    differ on FULLY_CONNECTED's ties and LOGISTIC); else (a chip, or no target recorded) LiteRT's default."""
    from tfqat.targets import TARGETS

    target = TARGETS.get(read_metadata(model, TARGET_METADATA) or "")
    runtime = None if target is None else target.runtime
    return "reference" if runtime == "micro" else runtime if runtime in _RESOLVERS else LITERT_DEFAULT


def load_interpreter(
    model: ModelSource, *, num_threads: int | None = None, kernels: Kernels | None = None,
    preserve_all_tensors: bool = False,
) -> Interpreter:
    """Loads a TFLite model from a path or bytes into a LiteRT Interpreter.

    Args:
      model: path to a .tflite file, its bytes, or an Interpreter (returned as is).
      num_threads: CPU threads for LiteRT kernels; None lets LiteRT choose.
      kernels: "builtin" (LiteRT CPU kernels, no delegate), "reference"
        (LiteRT reference kernels, slow) or "xnnpack" (LiteRT's default delegate); None: the kernels of
        the target the file was made for (`target_kernels`).
      preserve_all_tensors: keep every intermediate tensor readable after invoke (the debugger's need).

    Raises:
      TFLiteModelError: the file is missing or is not a model LiteRT can load.
    """
    if isinstance(model, Interpreter):
        return model
    if kernels is not None and kernels not in _RESOLVERS:
        raise ValueError(f"kernels={kernels!r} is not valid; choose one of {sorted(_RESOLVERS)}")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads={num_threads} is not valid; use None or an integer >= 1")
    content = read_model_bytes(model)
    kernels = target_kernels(content) if kernels is None else kernels
    try:
        with warnings.catch_warnings():
            # LiteRT warns that keeping every tensor costs memory: asked for, it is the point.
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            return Interpreter(
                model_content=content,
                num_threads=num_threads,
                experimental_op_resolver_type=_RESOLVERS[kernels],
                experimental_preserve_all_tensors=preserve_all_tensors,
            )
    except (ValueError, RuntimeError) as error:
        raise TFLiteModelError(f"LiteRT cannot load {model_label(model)}: {_first_line(error)}") from None


def model_label(model: ModelSource) -> str:
    """How messages name a model given as a path or as bytes."""
    return "the model buffer" if isinstance(model, (bytes, bytearray, memoryview)) else str(model)


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _spec(details: dict) -> TensorSpec:
    scale, zero_point = details["quantization"]
    return TensorSpec(
        index=int(details["index"]),
        name=str(details["name"]),
        dtype=np.dtype(details["dtype"]).name,
        shape=tuple(int(d) for d in details["shape_signature"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


def describe(model: ModelSource) -> ModelIO:
    """Describes a model's inputs and outputs (shape -1 marks a resizable dimension)."""
    interpreter = load_interpreter(model, kernels="builtin")  # any kernels describe it; no delegate to set up
    return ModelIO(
        inputs=tuple(_spec(d) for d in interpreter.get_input_details()),
        outputs=tuple(_spec(d) for d in interpreter.get_output_details()),
    )


def round_half_away_from_zero(values: np.ndarray) -> np.ndarray:
    """Rounds like std::round, exactly (no x + 0.5 precision loss near .5)."""
    whole = np.trunc(values)
    fraction = values - whole  # exact: removing the integer part of a float loses nothing
    return whole + np.where(np.abs(fraction) >= 0.5, np.sign(values), 0)


def quantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float to the tensor's integer type with its scale and zero point, saturating.

    Rounds half away from zero because LiteRT's QUANTIZE kernel does
    (TfLiteRound, i.e. std::round, of value / scale): feeding these integers to
    an int8-input model equals feeding the floats to the same model with a
    float input and a QUANTIZE op. The division is in float32, as in LiteRT.
    """
    info = np.iinfo(spec.dtype)
    steps = np.asarray(values, np.float32) / np.float32(spec.scale)
    rounded = round_half_away_from_zero(steps) + spec.zero_point
    return np.clip(rounded, info.min, info.max).astype(spec.dtype)


def dequantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Integers back to float32: (q - zero_point) * scale."""
    return (np.asarray(values, np.float32) - spec.zero_point) * np.float32(spec.scale)


@overload
def predict(
    model: ModelSource,
    float_images: np.ndarray,
    *,
    batch_size: int = ...,
    num_threads: int | None = ...,
    kernels: Kernels | None = ...,
    return_raw: Literal[False] = ...,
    progress: str = ...,
) -> np.ndarray: ...


@overload
def predict(
    model: ModelSource,
    float_images: np.ndarray,
    *,
    batch_size: int = ...,
    num_threads: int | None = ...,
    kernels: Kernels | None = ...,
    return_raw: Literal[True],
    progress: str = ...,
) -> tuple[np.ndarray, np.ndarray]: ...


def predict(model, float_images, *, batch_size=32, num_threads=None, kernels=None, return_raw=False, progress=""):
    """Runs a single-input, single-output TFLite model on float images.

    Quantized models get their input quantized with the model's own scale and
    zero point, and their output dequantized; float models run unchanged.

    Args:
      model: path, bytes or Interpreter (see load_interpreter).
      float_images: float array [N, ...] matching the model input's shape.
      batch_size: images per invoke; a model whose batch size cannot change
        runs one image at a time instead.
      num_threads, kernels: see load_interpreter (ignored for an Interpreter).
      return_raw: also return the output exactly as LiteRT produced it
        (int8 for a quantized model).
      progress: a label to show a progress bar on stderr under (empty: none).

    Returns:
      float32 outputs [N, ...], or (float outputs, raw outputs) with return_raw.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is not valid; use an integer >= 1")
    interpreter = load_interpreter(model, num_threads=num_threads, kernels=kernels)
    io = describe(interpreter)
    if len(io.inputs) != 1 or len(io.outputs) != 1:
        raise TFLiteModelError(
            f"predict needs a model with one input and one output; this one has "
            f"{len(io.inputs)} inputs and {len(io.outputs)} outputs"
        )
    input_spec, output_spec = io.inputs[0], io.outputs[0]
    images = _checked_images(float_images, input_spec)
    feed = quantize(images, input_spec) if input_spec.quantized else images.astype(input_spec.dtype)
    raw = _run_batches(interpreter, feed, batch_size, input_spec, output_spec, progress)
    values = dequantize(raw, output_spec) if output_spec.quantized else raw.astype(np.float32)
    return (values, raw) if return_raw else values


def _checked_images(float_images: np.ndarray, spec: TensorSpec) -> np.ndarray:
    images = np.asarray(float_images)
    item_shape = spec.shape[1:]
    matches = images.ndim == len(spec.shape) and all(
        expected in (-1, actual) for expected, actual in zip(item_shape, images.shape[1:])
    )
    if not matches:
        raise ValueError(
            f"images of shape {images.shape} do not fit the model input {list(spec.shape)} "
            f"(expected [N, {', '.join(map(str, item_shape))}])"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be float (the model quantizes them itself); got {images.dtype}")
    return images.astype(np.float32, copy=False)


def _run_batches(interpreter, feed, batch_size, input_spec, output_spec, progress="") -> np.ndarray:
    if len(feed) == 0:
        item_shape = interpreter.get_output_details()[0]["shape"][1:]
        return np.zeros((0, *item_shape), output_spec.dtype)
    results, start, size, allocated = [], 0, batch_size, None
    bar = progress_bar(len(feed), progress)
    while start < len(feed):
        chunk = feed[start : start + size]
        try:
            if chunk.shape != allocated:
                allocated = None
                interpreter.resize_tensor_input(input_spec.index, list(chunk.shape))
                interpreter.allocate_tensors()
                allocated = chunk.shape
            results.append(_invoke(interpreter, chunk, input_spec.index, output_spec.index))
        except (RuntimeError, ValueError) as error:
            if size == 1:
                raise TFLiteModelError(f"LiteRT failed to run the model: {_first_line(error)}") from None
            # Some graphs fix the batch size (e.g. a RESHAPE to a constant
            # [1, N]); such a model still runs one image at a time.
            size = 1
            continue
        start += len(chunk)
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(results)


def _invoke(interpreter: Interpreter, chunk: np.ndarray, input_index: int, output_index: int) -> np.ndarray:
    interpreter.set_tensor(input_index, chunk)
    interpreter.invoke()
    output = interpreter.get_tensor(output_index)
    if output.shape[0] != len(chunk):
        raise ValueError(f"output batch {output.shape[0]} != input batch {len(chunk)}")
    return output.copy()
