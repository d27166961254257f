import json

import numpy as np
import pytest

import tflite_models as tm
from tfqat._keras import keras
from tfqat.tflite.agreement import keras_outputs, keras_tflite_agreement
from tfqat.data.batches import EAGER_BATCHES

# Step used for the float comparison: the int8 softmax output step, 1/256.
SOFTMAX_STEP = 2.0**-8


def test_keras_model_agrees_with_its_float_tflite():
    images = tm.random_images(64, seed=5)
    report = keras_tflite_agreement(tm.tiny_float_keras_model(), tm.float_tflite(), images, step=SOFTMAX_STEP)
    assert report.count == 64 and report.top1_agreement == 1.0
    # Only float32 summation order differs: far below one int8 step.
    assert report.max_steps < 1e-3
    assert report.histogram == {"0": 64 * tm.NUM_CLASSES, "1": 0, "2": 0, ">2": 0}


def test_fake_quant_keras_graph_agrees_with_its_int8_tflite_within_one_step():
    """Tolerance: every output within 1 step, at most 5% of outputs off by 1, top-1 >= 95%.

    Both sides are on the same 2**-3 output grid, so differences are whole
    steps. They come from rounding only: the Keras graph keeps float biases
    (TFLite rounds them to int32 at scale s_in * s_w), FakeQuant rounds half up
    where LiteRT's fixed-point multiplier rounds twice (x/2 then >> k-1, both
    half away from zero), and MEAN divides by 144 in integers. Each of the five
    requantizations can move a value by one step; measured on 256 images: max 1
    step, ~3% of outputs off by 1, top-1 100%. A 1-step change flips the top-1
    class only when the two largest logits are within a step, hence 95%.
    """
    images = tm.random_images(256, seed=7)
    report = keras_tflite_agreement(tm.pow2_keras_model(), tm.pow2_int8_tflite(), images, batch_size=64)
    assert report.step == 2.0**tm.OUTPUT_LOG2
    assert report.max_steps <= 1.0
    assert report.max_steps in (0.0, 1.0)  # whole steps: both outputs sit on the grid
    assert report.histogram["2"] == report.histogram[">2"] == 0
    assert report.histogram["1"] <= 0.05 * 256 * tm.NUM_CLASSES
    assert report.top1_agreement >= 0.95


def test_ptq_model_is_measured_in_its_own_output_steps():
    report = keras_tflite_agreement(tm.tiny_float_keras_model(), tm.ptq_int8_tflite(), tm.random_images(32, seed=9))
    assert report.step == pytest.approx(2.0**-8)  # LiteRT's fixed int8 softmax scale
    assert sum(report.histogram.values()) == 32 * tm.NUM_CLASSES


def test_report_to_dict_is_json():
    report = keras_tflite_agreement(tm.pow2_keras_model(), tm.pow2_int8_tflite(), tm.random_images(8))
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == {"count", "top1_agreement", "step", "max_steps", "mean_steps", "histogram", "max_abs_error"}
    assert list(data["histogram"]) == ["0", "1", "2", ">2"]


def test_float_tflite_needs_an_explicit_step():
    with pytest.raises(ValueError, match="pass step="):
        keras_tflite_agreement(tm.tiny_float_keras_model(), tm.float_tflite(), tm.random_images(2))


def test_empty_images_are_refused():
    with pytest.raises(ValueError, match="at least one image"):
        keras_tflite_agreement(tm.pow2_keras_model(), tm.pow2_int8_tflite(), np.zeros((0, *tm.IMAGE_SHAPE)))


def test_keras_outputs_refuses_a_two_output_model():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(3)(inputs)])
    for count in (2, 200):  # eager and traced
        with pytest.raises(ValueError, match="single-output"):
            keras_outputs(model, np.zeros((count, 4), np.float32))
    with pytest.raises(ValueError, match="no images"):
        keras_outputs(tm.tiny_float_keras_model(), np.zeros((0, *tm.IMAGE_SHAPE), np.float32))


@pytest.mark.parametrize("batch_size", [16, 8], ids=["eager batches", "traced predict"])
def test_keras_outputs_match_eager_calls_and_keep_every_image(batch_size):
    """3 batches run eagerly, 5 (more than EAGER_BATCHES) through Keras' predict: the same outputs."""
    model = tm.tiny_float_keras_model()
    images = tm.random_images(37, seed=2)  # a partial last batch
    assert (37 / batch_size <= EAGER_BATCHES) == (batch_size == 16)
    got = keras_outputs(model, images, batch_size=batch_size)
    assert got.shape == (37, tm.NUM_CLASSES) and got.dtype == np.float32
    np.testing.assert_allclose(got, model(images, training=False).numpy(), atol=1e-6)
