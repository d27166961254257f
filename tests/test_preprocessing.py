"""Tests for tfqat.preprocessing: each network's own pixels, found from the model, kept with the QAT model
and its file, and the int8 input each one gives."""

from tfqat._keras import keras

import numpy as np
import pytest

import tfqat
from tfqat import preprocessing
from tfqat.data.images import preprocess
from tfqat.quantization.tensors import model_preprocessing
from tfqat.tflite import export, litert

APPLICATIONS = [  # (constructor, keyword arguments, its preprocessing)
    ("MobileNet", dict(alpha=0.25), "mobilenet"),
    ("MobileNetV2", dict(alpha=0.35), "mobilenet"),
    ("MobileNetV3Small", dict(alpha=0.75), "raw"),
    ("MobileNetV3Small", dict(alpha=0.75, include_preprocessing=False), "mobilenet"),
    ("ResNet50", {}, "caffe"),
    ("ResNet50V2", {}, "mobilenet"),
    ("DenseNet121", {}, "torch"),
    ("EfficientNetB0", {}, "raw"),
    ("VGG16", {}, "caffe"),
]


@pytest.mark.parametrize("name, kwargs, expected", APPLICATIONS, ids=[f"{a[0]}-{a[2]}" for a in APPLICATIONS])
def test_a_keras_application_is_known_by_name_nested_or_inlined(name, kwargs, expected):
    base = getattr(keras.applications, name)(input_shape=(32, 32, 3), weights=None, include_top=False, **kwargs)
    inputs = keras.Input((32, 32, 3))
    nested = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(base(inputs))), name="mine")
    inlined = keras.Model(base.inputs, base.outputs, name="renamed")
    assert [preprocessing.application_preprocessing(m) for m in (base, nested, inlined)] == [expected] * 3


def test_a_model_of_ones_own_is_not_known():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="block1_conv1")])
    assert preprocessing.application_preprocessing(model) is None


@pytest.mark.parametrize("name", ["caffe", "torch"])
def test_caffe_and_torch_compute_what_keras_preprocess_input_does(name):
    from tf_keras.applications import imagenet_utils

    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.float32)
    expected = imagenet_utils.preprocess_input(pixels.copy(), mode=name)
    np.testing.assert_allclose(preprocess(pixels.astype(np.uint8), 8, name).numpy(), expected, rtol=1e-6, atol=1e-5)


def test_mobilenet_is_the_flowers_image_contract_bit_for_bit_and_raw_keeps_pixels():
    pixels = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    np.testing.assert_array_equal(preprocess(pixels, 8).numpy(), pixels.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_array_equal(preprocess(pixels, 8, "raw").numpy(), pixels.astype(np.float32))


# The int8 input of each preprocessing, on images that reach black and white (the README's table).
INPUT_GRIDS = {"mobilenet": (2.0**-6, 0), "caffe": (2.0, 0), "torch": (2.0**-5, 0), "raw": (1.0, -128)}


@pytest.mark.parametrize("name", sorted(INPUT_GRIDS))
def test_each_preprocessing_gives_its_int8_input_and_is_recorded_in_the_model_and_the_file(name, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(features))
    pixels = np.random.default_rng(2).integers(0, 256, (16, 8, 8, 3)).astype(np.uint8)
    pixels[0], pixels[1] = 0, 255
    pixels[2, ..., 0], pixels[2, ..., 2] = 255, 0  # the extremes of caffe's per-channel means
    pixels[3, ..., 0], pixels[3, ..., 2] = 0, 255
    qat = tfqat.quantize_model(model, preprocessing=name)
    tfqat.calibrate(qat, preprocess(pixels, 8, name).numpy())
    assert model_preprocessing(qat) == model_preprocessing(tfqat.retarget(qat, "builtin")) == name
    path = tfqat.export_tflite(qat, tmp_path / "m.tflite")
    spec = litert.describe(path).inputs[0]
    assert (spec.scale, spec.zero_point) == INPUT_GRIDS[name]
    assert export.read_preprocessing_metadata(path.read_bytes()) == name
    qat.save(tmp_path / "m.keras")
    assert model_preprocessing(tfqat.load_model(tmp_path / "m.keras")) == name


def test_trained_threshold_models_record_it_too_and_a_known_application_needs_no_name():
    base = keras.applications.DenseNet121(input_shape=(32, 32, 3), weights=None, include_top=False, pooling="avg")
    assert model_preprocessing(tfqat.quantize_model(base, trained_thresholds=True)) == "torch"
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3)])
    assert model_preprocessing(tfqat.quantize_model(plain)) is None


def test_resolve_prefers_the_flag_then_the_record_then_the_application_and_says_what_to_pass():
    mobilenet = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, include_top=False)
    assert preprocessing.resolve("raw", model=mobilenet) == "raw"
    assert preprocessing.resolve(None, stored="torch", model=mobilenet) == "torch"
    assert preprocessing.resolve(None, model=mobilenet) == "mobilenet"
    with pytest.raises(ValueError, match="--preprocessing caffe contradicts the preprocessing 'torch' recorded in f.tflite"):
        preprocessing.resolve("caffe", stored="torch", source="f.tflite")
    expected = r"mine.keras does not record .* pass --preprocessing \(preprocessing= in Python\) with one of: mobilenet: "
    with pytest.raises(ValueError, match=expected):
        preprocessing.resolve(None, model=keras.Sequential([keras.Input((4, 4, 3))]), source="mine.keras")
    with pytest.raises(ValueError, match="unknown preprocessing 'tf'; choose from mobilenet"):
        tfqat.quantize_model(mobilenet, preprocessing="tf")
