"""The public entry points: quantize a float model, calibrate it, load it back."""

import contextlib
from pathlib import Path
from typing import Optional

from tfqat._keras import keras

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfqat.preprocessing import application_preprocessing, check_name as check_preprocessing
from tfqat.graph import functional
from tfqat.data.batches import image_batches, inference_outputs
from tfqat.graph.canonical import canonical_model
from tfqat.quantization.linking import link_accumulators
from tfqat.quantization.modes import collecting_ranges
from tfqat.quantization.saving import LOADING_OBJECTS, untrack_wrapped_weights
from tfqat.quantization.options import QuantizeOptions
from tfqat.quantization.rounding import ITERATIONS
from tfqat.quantization.registry import unsupported_reason
from tfqat.quantization.scheme import Pow2QuantizeScheme
from tfqat.quantization.tensors import quantized_tensors, set_preprocessing
from tfqat.targets import DEFAULT_TARGET, TARGETS, target_named
from tfqat.quantization.thresholds import init_thresholds


@contextlib.contextmanager
def quantize_scope():
    """The scope under which saved QAT models load, `.h5` and `.keras`, tfqat's scheme and TFMOT's default one.

    TFMOT's own scope, with its layer classes replaced by ones that load from `.keras` files
    (tfqat.quantization.saving); tfqat's quantizers and configs are registered with Keras.
    """
    with tfmot.quantization.keras.quantize_scope(), keras.utils.custom_object_scope(LOADING_OBJECTS):
        yield


def _check_supported(model) -> None:
    problems = [
        f"'{layer.name}' ({type(layer).__name__}): {reason}"
        for layer in model.layers
        if (reason := unsupported_reason(layer))
    ]
    if problems:
        msg = "cannot quantize layer " + "; ".join(problems[:5])
        if len(problems) > 5:
            msg += f"; and {len(problems) - 5} more"
        raise ValueError(msg)


def quantize_model(
    model, *, per_channel: bool = False, fold_bn: bool = True, ema_decay: float = 0.99,
    trained_thresholds: bool = False, unsigned_activations: bool = False, target: str = DEFAULT_TARGET,
    preprocessing: Optional[str] = None, strategy=None,
):
    """Return a QAT copy of a float Keras model with power-of-two int8 quantizers everywhere.

    Nested models (a MobileNetV2 base inside a classifier) are inlined and each
    Conv/DepthwiseConv + BatchNormalization pair is folded into one conv before
    its kernel is quantized. The result trains with `model.fit` (compile it
    first) and saves/loads (see `load_model`). Call `calibrate` before training
    or exporting to set the activation ranges from data.

    Args:
      model: a built tf_keras functional or Sequential model.
      per_channel: one weight scale per output channel (default one per tensor).
      fold_bn: fold BatchNormalization into the preceding conv (needed for
        power-of-two kernels in the exported model).
      ema_decay: decay of the moving-average activation ranges during training.
      trained_thresholds: learn every scale with the model (TQT): each weight and activation
        tensor gets a trainable log2-threshold, started at its plain power-of-two scale (the
        weights' now, the activations' by `calibrate`) and trained by `model.fit`.
      unsigned_activations: ReLU outputs become unsigned, [0, 255] * 2**k with int8 zero point
        -128: twice the resolution of the signed grid for tensors that are never negative.
      target: the runtime the int8 file will run on (`tfqat.targets.TARGETS`: "builtin", "reference",
        "xnnpack", "micro", "half_up", "half_even"); the model's inference rounds every requantization
        as that runtime does, and the export records it.
      preprocessing: how the model's float inputs are made from pixels (`tfqat.preprocessing`:
        "mobilenet", "caffe", "torch", "raw"); default: the model's own where it is a known Keras
        application. Recorded in the QAT model and its exported file, so the commands that feed it
        images (`tfqat evaluate`, `debug`, `execute`) need not be told.
      strategy: a `tf.distribute.Strategy` whose scope creates the QAT model's
        variables (default: the current strategy); compile and fit it in the
        same scope.
    """
    functional.check_functional(model)
    preprocessing = check_preprocessing(preprocessing) or application_preprocessing(model)
    options = QuantizeOptions(
        per_channel=bool(per_channel), thresholds="trained" if trained_thresholds else "ranges",
        unsigned_activations=bool(unsigned_activations), ema_decay=ema_decay, target=target,
    )
    # Only built-in layers and tfqat's quantizers from here on (_check_supported): none needs AutoGraph.
    with functional.autograph_off():
        qat = _quantize_model(model, fold_bn, strategy, Pow2QuantizeScheme(options))
    if preprocessing is not None:
        set_preprocessing(qat, preprocessing)
    return qat


def _quantize_model(model, fold_bn, strategy, scheme):
    flat = canonical_model(model, fold_bn)
    _check_supported(flat)
    annotated = tfmot.quantization.keras.quantize_annotate_model(flat)
    with (strategy or tf.distribute.get_strategy()).scope(), quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(annotated, scheme=scheme)
    untrack_wrapped_weights(qat)
    link_accumulators(qat)
    init_thresholds(qat, activations=False)
    return qat


def _range_flags(model):
    """The "seen" flag of every activation range of a QAT model (set once a range has seen data)."""
    return [t.variables["seen"] for t in quantized_tensors(model) if "seen" in t.variables]


def calibrate(qat_model, dataset, steps: Optional[int] = None):
    """Set every activation range of a tfqat QAT model from data; weights are unchanged.

    Ranges become the min/max over the batches seen (power-of-two scales follow),
    which makes the model a post-training-quantized one in the same scheme.
    Trained thresholds (`trained_thresholds=True`) start from these ranges' scales: calling this after
    training resets the activations' trained thresholds.

    Args:
      qat_model: a model returned by `quantize_model`.
      dataset: an array of images, or an iterable of image batches or (images, labels) batches.
      steps: how many batches to use (default: all).
    Returns:
      The number of batches used.
    """
    flags = _range_flags(qat_model)
    if not flags:
        msg = f"model '{qat_model.name}' has no tfqat activation quantizers; pass a model from tfqat.quantize_model"
        raise ValueError(msg)
    batches = image_batches(dataset, steps)
    for flag in flags:
        flag.assign(0.0)
    with collecting_ranges(qat_model):
        # Eager calls, or a fresh function traced while collecting, so Keras' cached predict is untouched.
        used = sum(1 for _ in inference_outputs(qat_model, batches))
    if used == 0:
        raise ValueError("calibrate got no batches from the dataset")
    init_thresholds(qat_model, weights=False)
    return used


def _check_saved_model_file(path) -> None:
    """A clear error for files that are not a whole saved Keras model (weights only, a TFLite model, ...)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist")
    if path.suffix == ".tflite":
        raise ValueError(f"{path} is a TFLite model; load_model takes a Keras model saved with model.save (.h5 or .keras)")
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as file:
                has_config = "model_config" in file.attrs
        except OSError as error:
            raise ValueError(f"{path} is not a readable HDF5 file ({error})") from None
        if not has_config:
            msg = (
                f"{path} holds weights only (saved with save_weights); this needs a whole model saved with "
                "model.save(...), or build the model, then load the weights into it with model.load_weights"
            )
            raise ValueError(msg)


def load_model(path, **kwargs):
    """Load a saved tfqat QAT model (any format `keras.models.load_model` reads)."""
    _check_saved_model_file(path)
    with quantize_scope():
        model = keras.models.load_model(path, **kwargs)
    link_accumulators(model)
    return model


def retarget(qat_model, target: str):
    """A copy of a tfqat QAT model with the same weights whose inference rounds as another runtime does.

    Training never uses the exact rounding (only inference and the export's metadata do), so a model
    trained for one target is, with its weights unchanged, the model for another: `retarget` it before
    checking it against, or exporting it for, that runtime. The int8 file's tensors are the same, except
    for a target that adds raw int8 values (ESP-DL): there an Add's inputs take the widest of their and its
    output's scales, as `quantize_model` for that target would have made them.

    Args:
      qat_model: a model from `quantize_model`, `ptq` or `load_model`.
      target: a key of `tfqat.targets.TARGETS`.

    Raises:
      ValueError: the model uses what the target cannot run (per-channel weights on ESP32-S3, unsigned
        activations where there are no zero points).
    """
    runtime = target_named(target)
    target = runtime.name
    tensors = quantized_tensors(qat_model)
    if not tensors:
        raise ValueError(f"model {qat_model.name!r} has no tfqat quantizers; retarget takes a tfqat QAT model")
    if not runtime.per_channel_weights and any(getattr(t.quantizer, "per_channel", False) for t in tensors):
        raise ValueError(f"model {qat_model.name!r} has per-channel weights; target {target!r} takes one weight "
                         "scale per tensor: quantize it again with per_channel=False")
    if not runtime.zero_points and any(getattr(t.quantizer, "unsigned", False) for t in tensors):
        raise ValueError(f"model {qat_model.name!r} has unsigned activations (zero point -128); target {target!r} "
                         "has no zero points: quantize it again with unsigned_activations=False")

    def with_target(node):
        if isinstance(node, dict):
            return {k: target if k == "target" and v in TARGETS else with_target(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(with_target(v) for v in node)
        return node

    with quantize_scope(), functional.autograph_off():
        model = type(qat_model).from_config(with_target(qat_model.get_config()))
    model.set_weights(qat_model.get_weights())
    link_accumulators(model)
    return model


def ptq(
    model, images, *, equalize: bool = True, bias_correction: bool = True, adaround: bool = True,
    per_channel: bool = False, unsigned_activations: bool = False, trained_thresholds: bool = False,
    target: str = DEFAULT_TARGET, preprocessing: Optional[str] = None, steps: Optional[int] = None,
    iterations: int = ITERATIONS, verbose: bool = True,
):
    """Label-free power-of-two post-training quantization in one call; returns the quantized (QAT) model.

    Cross-layer equalization (`tfqat.equalize`, with the images, so channels whose ReLU6 clips keep
    their scale), then `quantize_model`, `calibrate`, and adaptive rounding (`tfqat.adaround`, layer by
    layer against the float model's outputs) with bias correction, each on the same images. Without
    adaround, bias correction is `tfqat.correct_biases`. The result exports, verifies and fine-tunes
    like any model of `quantize_model`.

    Args:
      model: a trained float tf_keras model.
      images: sample inputs (no labels needed): an array, or a re-iterable batch source such as a
        tf.data.Dataset (it is read up to four times); 512 to 1,024 images are plenty.
      equalize, bias_correction, adaround: the steps around calibration; all on by default.
      per_channel, unsigned_activations, trained_thresholds, target, preprocessing: as in `quantize_model`
        (trained thresholds start from the calibrated scales, and AdaRound rounds on them: a QAT start).
      steps: how many batches each step reads (default: all).
      iterations: AdaRound's optimizer steps per layer.
      verbose: adaround's progress, one line per layer on stderr.
    """
    if iter(images) is images:
        msg = "ptq reads the images more than once; pass an array or a tf.data.Dataset, not a one-pass iterator"
        raise ValueError(msg)
    from tfqat.post_training.adaround import adaround as adaround_model
    from tfqat.post_training.bias_correction import correct_biases
    from tfqat.post_training.equalize import equalize as equalize_model

    preprocessing = check_preprocessing(preprocessing) or application_preprocessing(model)
    float_model = equalize_model(model, images, steps=steps) if equalize else model
    qat = quantize_model(
        float_model, per_channel=per_channel, unsigned_activations=unsigned_activations,
        trained_thresholds=trained_thresholds, target=target, preprocessing=preprocessing,
    )
    calibrate(qat, images, steps)
    if adaround:
        adaround_model(
            qat, float_model, images, bias_correction=bias_correction, steps=steps, iterations=iterations,
            verbose=verbose,
        )
    elif bias_correction:
        correct_biases(qat, images, steps)
    return qat
