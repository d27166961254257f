import numpy as np
import pytest

import tflite_models as tm
from tfqat.tflite import litert
from tfqat.tflite.litert import TFLiteModelError


def test_describe_reports_int8_power_of_two_io():
    io = litert.describe(tm.pow2_int8_tflite())
    (inp,), (out,) = io.inputs, io.outputs
    assert (inp.dtype, inp.shape, inp.scale, inp.zero_point) == ("int8", (-1, *tm.IMAGE_SHAPE), 2.0**tm.INPUT_LOG2, 0)
    assert (out.dtype, out.shape, out.scale, out.zero_point) == ("int8", (-1, tm.NUM_CLASSES), 2.0**tm.OUTPUT_LOG2, 0)
    assert "scale 0.0078125" in io.describe()


def test_describe_float_model_is_not_quantized(tmp_path):
    path = tm.write(tmp_path, "float.tflite", tm.float_tflite())
    (inp,) = litert.describe(path).inputs
    assert inp.dtype == "float32" and not inp.quantized


def test_round_half_away_from_zero_is_exact_at_and_near_ties():
    values = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 3.2, -3.7], np.float32)
    expected = [1, -1, 2, -2, 3, -3, 0, 0, 3, -4]
    np.testing.assert_array_equal(litert.round_half_away_from_zero(values), expected)


def test_quantize_saturates_and_dequantize_inverts_on_the_grid():
    spec = litert.TensorSpec(0, "x", "int8", (-1, 4), 2.0**-7, 0)
    q = litert.quantize(np.array([-2.0, -1.0, 0.5 / 128, 1.5], np.float32), spec)
    np.testing.assert_array_equal(q, np.array([-128, -128, 1, 127], np.int8))
    grid = np.arange(-128, 128, dtype=np.int8)
    np.testing.assert_array_equal(litert.quantize(litert.dequantize(grid, spec), spec), grid)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_predict_batches_agree_with_single_images(batch_size):
    images = tm.random_images(20, seed=3)
    single = litert.predict(tm.pow2_int8_tflite(), images, batch_size=1)
    batched = litert.predict(tm.pow2_int8_tflite(), images, batch_size=batch_size)
    np.testing.assert_array_equal(batched, single)
    assert batched.shape == (20, tm.NUM_CLASSES) and batched.dtype == np.float32


def test_predict_return_raw_gives_int8_that_dequantizes_to_the_values():
    values, raw = litert.predict(tm.pow2_int8_tflite(), tm.random_images(6), return_raw=True)
    assert raw.dtype == np.int8
    np.testing.assert_array_equal(values, raw.astype(np.float32) * 2.0**tm.OUTPUT_LOG2)


def test_predict_falls_back_to_batch_one_for_a_fixed_batch_model():
    images = tm.random_images(5, seed=1)
    outputs = litert.predict(tm.fixed_batch_float_tflite(), images, batch_size=4)
    np.testing.assert_allclose(outputs, images.reshape(5, -1)[:, : tm.NUM_CLASSES] * 2.0)


@pytest.mark.parametrize("kernels", ["reference", "xnnpack"])
def test_other_kernels_stay_within_one_output_step(kernels):
    # LiteRT's kernels round requantization ties differently (XNNPACK in
    # float32, builtin/reference in fixed point), so allow one step, no more.
    images = tm.random_images(16, seed=2)
    builtin = litert.predict(tm.pow2_int8_tflite(), images, num_threads=1)
    other = litert.predict(tm.pow2_int8_tflite(), images, num_threads=1, kernels=kernels)
    assert np.abs(other - builtin).max() <= 2.0**tm.OUTPUT_LOG2


def test_predict_reuses_a_loaded_interpreter():
    interpreter = litert.load_interpreter(tm.pow2_int8_tflite(), num_threads=1)
    images = tm.random_images(3)
    np.testing.assert_array_equal(litert.predict(interpreter, images), litert.predict(interpreter, images))


def test_predict_empty_images_gives_empty_outputs():
    out = litert.predict(tm.pow2_int8_tflite(), np.zeros((0, *tm.IMAGE_SHAPE), np.float32))
    assert out.shape == (0, tm.NUM_CLASSES)


def _assert_one_line(error: pytest.ExceptionInfo, fragment: str):
    message = str(error.value)
    assert fragment in message and "\n" not in message


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(TFLiteModelError) as error:
        litert.load_interpreter(tmp_path / "nope.tflite")
    _assert_one_line(error, "not found")


def test_directory_is_a_one_line_error(tmp_path):
    with pytest.raises(TFLiteModelError) as error:
        litert.load_interpreter(tmp_path)
    _assert_one_line(error, "is not a file")


def test_garbage_file_is_a_one_line_error(tmp_path):
    path = tm.write(tmp_path, "garbage.tflite", b"this is not a flatbuffer at all")
    with pytest.raises(TFLiteModelError) as error:
        litert.load_interpreter(path)
    _assert_one_line(error, "is not a TFLite flatbuffer")


def test_corrupt_flatbuffer_is_a_one_line_error():
    content = tm.pow2_int8_tflite()
    with pytest.raises(TFLiteModelError) as error:
        litert.load_interpreter(content[:8] + bytes(200))
    _assert_one_line(error, "LiteRT cannot load")


def test_invalid_options_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"kernels='gpu'.*\['builtin', 'reference', 'xnnpack'\]"):
        litert.load_interpreter(tm.pow2_int8_tflite(), kernels="gpu")
    with pytest.raises(ValueError, match="num_threads=0"):
        litert.load_interpreter(tm.pow2_int8_tflite(), num_threads=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        litert.predict(tm.pow2_int8_tflite(), tm.random_images(1), batch_size=0)


def test_wrong_image_shape_is_explained():
    with pytest.raises(ValueError, match=r"expected \[N, 12, 12, 3\]"):
        litert.predict(tm.pow2_int8_tflite(), np.zeros((2, 8, 8, 3), np.float32))
