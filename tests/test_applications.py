"""The Keras applications edge users deploy: quantize, train a step, export fully int8, verify, agree with LiteRT.

Small inputs and widths, random weights (benchmarks/applications.py builds and checks them; its table is
in the README). The networks the scheme does not cover yet must still fail with the clear error that
names the layer and its class.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import applications  # noqa: E402

SUPPORTED = ["MobileNet", "MobileNetV2", "ResNet50", "DenseNet121"]
# network -> a layer class the error must name
NOT_YET = {"MobileNetV3Small": "Rescaling", "MobileNetV3Large": "TFOpLambda", "EfficientNetB0": "Normalization"}


@pytest.mark.parametrize("name", SUPPORTED)
def test_network_exports_shift_only_and_agrees_with_litert(name, tmp_path):
    row = applications.check(name, tmp_path)
    assert row["verified"], row
    # Only ops whose int8 kernels are not a single rescale, each named by the verifier.
    assert set(row["not_shifts"]) <= {"MEAN", "AVERAGE_POOL_2D", "SOFTMAX"}, row
    assert row["top1_agreement"] >= 0.99, row
    assert row["logits_within_2_steps"] >= 0.99, row


def test_densenet_concatenations_share_one_scale_per_block():
    """DenseNet's chained concatenations join one scale group per dense block (4 blocks), and its
    pre-activation BatchNormalizations became 1x1 depthwise convs."""
    import tfqat
    from tfqat._keras import keras
    from tfqat.quantization.linking import share_concatenation_scales

    build, size = applications.NETWORKS["DenseNet121"]
    model = build(size)
    qat = tfqat.quantize_model(model)
    assert share_concatenation_scales(qat) == 4
    depthwise = [l for l in qat.layers if isinstance(getattr(l, "layer", None), keras.layers.DepthwiseConv2D)]
    standalone = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)
                  and not isinstance(l._inbound_nodes[0].inbound_layers, keras.layers.Conv2D)]
    assert len(depthwise) == len(standalone) == 62


@pytest.mark.parametrize("name", sorted(NOT_YET))
def test_networks_not_yet_covered_fail_naming_layer_and_class(name, tmp_path):
    with pytest.raises(ValueError, match=rf"cannot quantize layer .*'[^']+' \({NOT_YET[name]}\): "):
        applications.check(name, tmp_path)


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
    agreement = keras_tflite_agreement(qat, path, images)
    assert agreement.top1_agreement >= 0.99 and agreement.max_steps <= 2
