"""How closely a TFLite model reproduces the Keras model it was exported from.

Differences are counted in output quantization steps (the TFLite output
scale): a power-of-two int8 model run by LiteRT should sit within a step or so
of its fake-quant Keras graph, because the two differ only in rounding (LiteRT
rounds biases to int32 and requantizes in fixed point; fake-quant rounds in
float).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from tfqat._keras import keras
from tfqat.data.batches import EAGER_BATCHES
from tfqat.tflite.litert import Kernels, describe, load_interpreter, predict

_BINS = ("0", "1", "2", ">2")


@dataclass(frozen=True)
class AgreementReport:
    """Keras vs TFLite on the same images.

    Attributes:
      count: number of images.
      top1_agreement: fraction of images whose arg-max class is the same.
      step: the size of one output step (the TFLite output scale, or as given).
      max_steps, mean_steps: |keras - tflite| over every output value, in steps.
      histogram: how many output values differ by 0, 1, 2 or more than 2
        steps, after rounding the difference half up to whole steps.
      max_abs_error: the largest |keras - tflite| in output units.
    """

    count: int
    top1_agreement: float
    step: float
    max_steps: float
    mean_steps: float
    histogram: Mapping[str, int]
    max_abs_error: float

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "top1_agreement": self.top1_agreement,
            "step": self.step,
            "max_steps": self.max_steps,
            "mean_steps": self.mean_steps,
            "histogram": dict(self.histogram),
            "max_abs_error": self.max_abs_error,
        }


def keras_tflite_agreement(
    keras_model: keras.Model,
    tflite_model: str | os.PathLike | bytes,
    images: np.ndarray,
    *,
    batch_size: int = 32,
    step: float | None = None,
    num_threads: int | None = None,
    kernels: Kernels | None = None,
) -> AgreementReport:
    """Runs both models on the same float images and compares their outputs.

    Args:
      keras_model: single-output Keras model, called in inference mode.
      tflite_model: path or bytes of the TFLite model (see tfqat.tflite.litert).
      images: float images [N, ...] as the Keras model takes them.
      batch_size: images per Keras call and per LiteRT invoke.
      step: size of one output step; defaults to the TFLite output scale and
        must be given for a float TFLite model, which has none.
      num_threads, kernels: LiteRT options (see tfqat.tflite.litert.load_interpreter; by default the kernels
        of the target the file was made for).
    """
    images = np.asarray(images, np.float32)
    if len(images) == 0:
        raise ValueError("images is empty; agreement needs at least one image")
    interpreter = load_interpreter(tflite_model, num_threads=num_threads, kernels=kernels)
    output_spec = describe(interpreter).outputs[0]
    if step is None:
        if not output_spec.quantized:
            raise ValueError(
                f"the TFLite output is {output_spec.dtype} with no scale, so pass step= "
                "(e.g. the output scale of the int8 model you compare against)"
            )
        step = output_spec.scale
    if step <= 0:
        raise ValueError(f"step={step} is not valid; it must be > 0")
    expected = keras_outputs(keras_model, images, batch_size)
    actual = predict(interpreter, images, batch_size=batch_size)
    return compare_outputs(expected, actual, step)


def compare_outputs(expected: np.ndarray, actual: np.ndarray, step: float) -> AgreementReport:
    """The agreement of two models' outputs on the same images, `step` being one output step."""
    if step <= 0:
        raise ValueError(f"step={step} is not valid; it must be > 0")
    if expected.shape != actual.shape:
        raise ValueError(f"Keras outputs {expected.shape} but TFLite outputs {actual.shape} for the same images")
    error = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    steps = error / step
    # Half up, not half to even, so a difference of 0.5 steps counts as 1.
    whole = np.floor(steps + 0.5).astype(np.int64).ravel()
    counts = np.bincount(np.minimum(whole, 3), minlength=4)
    classes = expected.shape[-1]
    same_class = expected.reshape(-1, classes).argmax(-1) == actual.reshape(-1, classes).argmax(-1)
    return AgreementReport(
        count=len(expected),
        top1_agreement=float(same_class.mean()),
        step=float(step),
        max_steps=float(steps.max()),
        mean_steps=float(steps.mean()),
        histogram={name: int(n) for name, n in zip(_BINS, counts)},
        max_abs_error=float(error.max()),
    )


def keras_outputs(model: keras.Model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Outputs of a single-output Keras model in inference mode, batch by batch.

    A few batches run eagerly (tracing a QAT model costs more than they do); more run through the model's
    traced `predict` (about twice as fast per batch, and traced once per model, not once per call).
    """
    images = np.asarray(images, np.float32)
    if len(images) == 0:
        raise ValueError("keras_outputs got no images")
    if len(images) <= EAGER_BATCHES * batch_size:
        starts = range(0, len(images), batch_size)
        outputs = [model(images[start : start + batch_size], training=False) for start in starts]
        if any(isinstance(output, (list, tuple, dict)) for output in outputs):
            raise ValueError("keras_tflite_agreement needs a single-output Keras model")
        return np.concatenate([np.asarray(output, np.float32) for output in outputs])
    result = model.predict(images, batch_size=batch_size, verbose=0)
    if isinstance(result, (list, tuple, dict)):
        raise ValueError("keras_tflite_agreement needs a single-output Keras model")
    return np.asarray(result, np.float32)
