"""Unsigned activations (unsigned_activations=True): ReLU outputs on [0, 255] * 2**k, int8 zero point -128."""

from tfqat._keras import keras  # noqa: F401

import numpy as np
import pytest

import tfqat
from tfqat.quantization import pow2
from tfqat.quantization.quantizers import Pow2ActivationQuantizer
from tfqat.quantization.tensors import quantized_tensors
from tfqat.quantization.thresholds import TQTActivationQuantizer
from tfqat.tflite.agreement import keras_tflite_agreement
from tfqat.tflite.litert import load_interpreter

from test_thresholds import block_model, images


def test_unsigned_exponent_fits_the_max_in_255_steps():
    for high in (0.3, 1.0, 255 / 64, 6.0):
        k = float(pow2.activation_exponent(0.0, high, unsigned=True))
        assert high <= 255 * 2.0**k and high > 255 * 2.0 ** (k - 1)
        # At least one exponent finer than the signed grid for the same range (twice the resolution or more).
        assert k <= float(pow2.activation_exponent(0.0, high)) - 1


def test_unsigned_fake_quant_clamps_to_zero_and_255_steps():
    x = np.array([-1.0, 0.0, 0.26, 3.0, 10.0], np.float32)
    y = pow2.fake_quant_activations(x, -6.0, unsigned=True).numpy()
    np.testing.assert_array_equal(y, [0.0, 0.0, 17 / 64, 192 / 64, 255 / 64])


def test_configs_round_trip_and_old_configs_stay_signed():
    for quantizer in (Pow2ActivationQuantizer(unsigned=True), TQTActivationQuantizer(unsigned=True)):
        restored = type(quantizer).from_config(quantizer.get_config())
        assert restored == quantizer and restored.unsigned
    # A config saved before unsigned grids and targets existed: signed, and rounding for the builtin kernels.
    assert Pow2ActivationQuantizer.from_config({"ema_decay": 0.99}) == Pow2ActivationQuantizer(target="builtin")


@pytest.mark.parametrize("trained_thresholds", [False, True], ids=["ranges", "tqt"])
def test_only_relu_outputs_are_unsigned_and_the_export_is_shift_only(trained_thresholds, tmp_path):
    qat = tfqat.quantize_model(block_model(), unsigned_activations=True, trained_thresholds=trained_thresholds)
    tfqat.calibrate(qat, images(32, 1))
    flagged = {
        layer.name for layer in qat.layers
        if any(q.unsigned for q in getattr(layer, "_output_quantizers", None) or [] if isinstance(q, Pow2ActivationQuantizer))
    }
    assert flagged == {layer.name for layer in qat.layers if "re_lu" in layer.name} and len(flagged) == 2
    everything = [t.quantizer for t in quantized_tensors(qat) if isinstance(t.quantizer, Pow2ActivationQuantizer)]
    assert sum(q.unsigned for q in everything) == 2  # the input, the Add, the pooling and the logits stay signed
    path = tfqat.export_tflite(qat, tmp_path / "unsigned.tflite")
    assert tfqat.verify_tflite(path).passed
    interpreter = load_interpreter(path)
    zero_points = {
        d["name"]: int(d["quantization_parameters"]["zero_points"][0])
        for d in interpreter.get_tensor_details() if len(d["quantization_parameters"]["zero_points"]) == 1
    }
    assert sum(z == -128 for z in zero_points.values()) == 2  # the two ReLU6 outputs
    assert set(zero_points.values()) <= {0, -128}
    agreement = keras_tflite_agreement(qat, path, images(64, 4))
    assert agreement.top1_agreement >= 0.99 and agreement.max_steps <= 1
