"""The flowers classifier and its weights: local files load, bad ones are clear errors."""

from pathlib import Path

from tfqat._keras import keras

import numpy as np
import pytest

from tfqat.flowers import models

SHARED_WEIGHTS = (
    Path(__file__).resolve().parents[2] / "shared" / "weights"
    / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
)


def test_classifier_shape_and_nested_frozen_base():
    model, base = models.build_classifier(5, image_size=64, alpha=0.35, weights=None)
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 5)
    assert base.name == "mobilenetv2_0.35_64"  # the width asked for
    assert base in model.layers and not base.trainable
    assert model.layers[-1].get_config()["activation"] == "linear"  # logits


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="shared ImageNet weights not here")
def test_local_imagenet_weights_load():
    _, base = models.build_classifier(5, image_size=96, weights=str(SHARED_WEIGHTS))
    reference = keras.applications.MobileNetV2(input_shape=(96, 96, 3), include_top=False, weights=None)
    reference.load_weights(str(SHARED_WEIGHTS))
    for a, b in zip(base.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.h5 does not exist"):
        models.build_classifier(5, image_size=64, weights=str(tmp_path / "nothing.h5"))


def test_wrong_shape_weights_file(tmp_path):
    other = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, include_top=False, weights=None)
    path = tmp_path / "alpha_035.h5"
    other.save_weights(str(path))
    with pytest.raises(ValueError, match="does not fit MobileNetV2"):
        models.build_classifier(5, image_size=64, alpha=1.0, weights=str(path))


def test_not_a_weights_file(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("not hdf5")
    with pytest.raises(ValueError, match="does not fit"):
        models.build_classifier(5, image_size=64, weights=str(path))


def test_one_class_is_an_error():
    with pytest.raises(ValueError, match="at least 2 classes"):
        models.build_classifier(1, weights=None)
