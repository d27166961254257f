"""Tests for tfqat.quantization.saving: QAT models round-trip through `.keras` (and `.h5`) and train on."""

from tfqat._keras import keras

import numpy as np
import pytest

import tfqat
from tfqat.tflite import export
from tfqat.flowers import baselines

from test_thresholds import block_model, images

SCHEMES = {
    "pow2_per_tensor": lambda m: tfqat.quantize_model(m),
    "pow2_per_channel": lambda m: tfqat.quantize_model(m, per_channel=True),
    "pow2_tqt_unsigned": lambda m: tfqat.quantize_model(m, trained_thresholds=True, unsigned_activations=True),
    "tfmot_default": baselines.tfmot_default_qat,
}


def _compiled(model):
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_save_load_gives_identical_outputs_and_training_resumes(scheme, suffix, tmp_path):
    qat = SCHEMES[scheme](block_model())
    if scheme != "tfmot_default":
        tfqat.calibrate(qat, images(32, 1))
    x, y = images(16, 2), np.arange(16) % 5
    _compiled(qat).fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / f"qat{suffix}")
    qat.save(path)
    loaded = tfqat.load_model(path, compile=False)
    probe = images(8, 3)
    np.testing.assert_array_equal(loaded(probe, training=False).numpy(), qat(probe, training=False).numpy())
    assert len(loaded.get_weights()) == len(qat.get_weights())
    for a, b in zip(loaded.get_weights(), qat.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Training goes on from the loaded model exactly as from the model it was saved from.
    _compiled(loaded).fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    _compiled(qat).fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(loaded.get_weights(), qat.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_plain_keras_loading_works_inside_quantize_scope(tmp_path):
    qat = tfqat.quantize_model(block_model())
    tfqat.calibrate(qat, images(32, 1))
    qat.save(str(tmp_path / "qat.keras"))
    with tfqat.quantize_scope():
        loaded = keras.models.load_model(str(tmp_path / "qat.keras"), compile=False)
    assert len(loaded.get_weights()) == len(qat.get_weights())


@pytest.mark.parametrize(
    "scheme, suffix", [("pow2_per_tensor", ".weights.h5"), ("pow2_tqt_unsigned", ".weights.h5"), ("pow2_per_channel", ".h5")]
)
def test_weights_of_a_trained_model_load_into_a_fresh_one(scheme, suffix, tmp_path):
    """The Keras way to resume: quantize the float network again, then `load_weights` what a used model saved
    (calibrated and trained: its wrapped layers have stopped listing the weights their wrappers own)."""
    qat = SCHEMES[scheme](block_model())
    tfqat.calibrate(qat, images(32, 1))
    _compiled(qat).fit(images(16, 2), np.arange(16) % 5, batch_size=8, epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / f"qat{suffix}")
    qat.save_weights(path)
    fresh = SCHEMES[scheme](block_model(seed=1))
    fresh.load_weights(path)
    for a, b in zip(fresh.get_weights(), qat.get_weights()):
        np.testing.assert_array_equal(a, b)
    probe = images(8, 3)
    np.testing.assert_array_equal(fresh(probe, training=False).numpy(), qat(probe, training=False).numpy())
