"""The Keras applications edge users deploy: quantize, calibrate, export fully int8, verify, agree with LiteRT.

At 96 px, narrow, random weights as built (benchmarks/applications.py builds and checks them; its table,
with one training step, is in the README; tests/test_integer_applications.py checks every runtime bit for bit).
A layer the scheme does not cover must still fail with the clear error that names the
layer and its class.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import applications  # noqa: E402
import sweeps  # noqa: E402

# network -> the ops its int8 model runs that are not a single rescale, each named by the verifier (at 96 px
# the last feature map is 3 x 3: the global average pooling's MEAN divides by 9)
NOT_SHIFTS = {
    "MobileNet": {"MEAN", "SOFTMAX"},
    "MobileNetV2": {"MEAN", "SOFTMAX"},
    "MobileNetV3Small": {"MEAN", "SOFTMAX"},
    "MobileNetV3Large": {"MEAN", "SOFTMAX"},
    "EfficientNetB0": {"LOGISTIC", "MEAN", "SOFTMAX"},
    "ResNet50": {"MEAN", "SOFTMAX"},
    "DenseNet121": {"AVERAGE_POOL_2D", "MEAN", "SOFTMAX"},
}


# The plain network and the one with sigmoids (LOGISTIC): every network exports bit-exact on every runtime in
# tests/test_integer_applications.py; the rest run here with --all-applications and in benchmarks/applications.py.
IN_EVERY_RUN = ("MobileNetV2", "EfficientNetB0")


@pytest.mark.parametrize("name", sweeps.cases(NOT_SHIFTS, left_out=set(NOT_SHIFTS) - set(IN_EVERY_RUN)))
def test_network_as_built_and_calibrated_only_exports_fully_int8_at_96_px_and_agrees_with_litert(name, tmp_path):
    """A user's first try: random weights, untrained batch normalizations, calibrated, no training step (an
    untrained DenseNet's equal BN kernels are merged by the converter: tfqat.tflite.constants)."""
    row = applications.check(name, tmp_path, size=96, trained=False)
    assert row["verified"], row
    assert set(row["not_shifts"]) == NOT_SHIFTS[name], row
    assert row["top1_agreement"] >= 0.99, row
    assert row["logits_within_2_steps"] >= 0.99, row


def test_densenet_concatenations_share_one_scale_per_block():
    """DenseNet's chained concatenations join one scale group per dense block (4 blocks), and its
    pre-activation BatchNormalizations became 1x1 depthwise convs."""
    import tfqat
    from tfqat._keras import keras
    from tfqat.quantization.linking import share_scales

    build, size, _ = applications.NETWORKS["DenseNet121"]
    model = build(size)
    qat = tfqat.quantize_model(model)
    assert share_scales(qat) == 4
    depthwise = [l for l in qat.layers if isinstance(getattr(l, "layer", None), keras.layers.DepthwiseConv2D)]
    standalone = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)
                  and not isinstance(l._inbound_nodes[0].inbound_layers, keras.layers.Conv2D)]
    assert len(depthwise) == len(standalone) == 62


def test_a_layer_still_unsupported_fails_naming_layer_and_class():
    """A MobileNetV3 whose hard-swish is replaced by a GELU: refused, naming every such layer and class."""
    import tensorflow as tf

    import tfqat
    from tfqat._keras import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, name="stem")(inputs)
    x = keras.layers.Activation("gelu", name="stem_gelu")(x)
    x = tf.math.square(x)
    model = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(ValueError, match=r"cannot quantize layer 'stem_gelu' \(Activation\): activation 'gelu' .*"
                       r"'tf.math.square[_0-9]*' \(TFOpLambda\)"):
        tfqat.quantize_model(model)


def test_squeeze_and_excitation_multiply_exports_shift_only_and_agrees(tmp_path):
    """Multiply (x * sigmoid(gate)), as squeeze-and-excitation blocks build it: a MUL whose multiplier
    s_x * s_gate / s_out is a power of two; LOGISTIC is the only op named as not a shift."""
    import numpy as np

    import tfqat
    from tfqat._keras import keras
    from tfqat.tflite.agreement import keras_tflite_agreement

    layers = keras.layers
    keras.utils.set_random_seed(2)
    inputs = keras.Input((16, 16, 3))
    x = layers.ReLU(6.0)(layers.Conv2D(8, 3, padding="same")(inputs))
    gate = layers.Dense(8, activation="sigmoid")(layers.Dense(4, activation="relu")(layers.GlobalAveragePooling2D()(x)))
    x = layers.Multiply()([x, layers.Reshape((1, 1, 8))(gate)])
    model = keras.Model(inputs, layers.Dense(5)(layers.GlobalAveragePooling2D()(x)))
    images = np.random.default_rng(3).uniform(-1, 1, (64, 16, 16, 3)).astype(np.float32)
    qat = tfqat.quantize_model(model)
    tfqat.calibrate(qat, images)
    path = tmp_path / "se.tflite"
    tfqat.export_tflite(qat, path)
    report = tfqat.verify_tflite(path)
    assert report.passed and "MUL" in report.summary()
    assert {line.split(" ")[2] for line in report.exceptions} <= {"LOGISTIC", "MEAN"}
    # MUL, MEAN (16x16, a power of two) and LOGISTIC round as LiteRT does: bit for bit.
    agreement = keras_tflite_agreement(qat, path, images)
    assert agreement.top1_agreement == 1.0 and agreement.max_steps == 0


@pytest.mark.parametrize("name", sorted(sweeps.CUT_AFTER))
def test_a_network_the_default_run_cuts_keeps_every_layer_kind_of_the_whole(name):
    """The suite's default run checks DenseNet121 and ResNet50 cut after their first stages (tests/sweeps.py):
    the cut must still hold every kind of layer the whole network has, the head's included."""
    whole = sweeps.network(name, whole=True)[0](32)
    cut = sweeps.network(name, whole=False)[0](32)
    assert {type(layer) for layer in cut.layers} == {type(layer) for layer in whole.layers}
    assert len(cut.layers) < len(whole.layers) / 3 and cut.output_shape == whole.output_shape
    assert cut.layers[-1].activation is whole.layers[-1].activation
