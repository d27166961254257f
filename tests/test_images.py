"""Tests for tfqat.data.images: the image contract (decoding, resizing, scaling)."""

import io

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfqat.data import images
from tfqat.data.images import decode_image, preprocess

SIZE = 32  # small contract size keeps the tests fast


def test_preprocess_maps_0_to_minus_1_and_255_to_1_exactly():
    image = np.zeros((5, 7, 3), np.uint8)
    image[:, :, 1] = 255
    image[:, :, 2] = 51
    out = preprocess(image, 9)
    assert out.shape == (9, 9, 3) and out.dtype == tf.float32
    assert np.all(out[..., 0] == -1.0) and np.all(out[..., 1] == 1.0)
    np.testing.assert_allclose(out[..., 2], 51 / 127.5 - 1, rtol=0, atol=1e-7)


def test_preprocess_is_half_pixel_bilinear_without_antialias():
    # Upscaling one row [0, 255] to 4 samples at half-pixel centres gives 0, 63.75, 191.25, 255.
    up = np.tile(np.array([0, 255], np.uint8)[None, :, None], (4, 1, 3))
    np.testing.assert_allclose(preprocess(up, 4)[0, :, 0], [-1.0, -0.5, 0.5, 1.0], atol=1e-6)
    # Downscaling [0, 0, 255, 0] by 2 averages neighbour pairs only; antialiasing would spread 255 wider.
    down = np.tile(np.array([0, 0, 255, 0], np.uint8)[None, :, None], (4, 1, 3))
    np.testing.assert_allclose(preprocess(down, 2)[0, :, 0], [-1.0, 0.0], atol=1e-6)


def test_preprocess_batches_and_rejects_bad_input():
    batch = np.random.default_rng(0).integers(0, 256, (3, 50, 20, 3), dtype=np.uint8)
    out = preprocess(batch, SIZE).numpy()
    assert out.shape == (3, SIZE, SIZE, 3) and out.min() >= -1 and out.max() <= 1
    with pytest.raises(ValueError, match="uint8"):
        preprocess(batch.astype(np.float32) / 127.5 - 1, SIZE)
    for bad in (0, -3, 2.5, True, "224"):
        with pytest.raises(ValueError, match="image_size"):
            preprocess(batch, bad)


@pytest.mark.parametrize(
    ("mode", "fmt", "color"),
    [
        ("RGB", "JPEG", (200, 30, 10)),
        ("RGB", "PNG", (200, 30, 10)),
        ("L", "JPEG", 120),
        ("L", "PNG", 120),
        ("P", "PNG", 3),
        ("P", "GIF", 3),
        ("CMYK", "JPEG", (0, 255, 255, 0)),
        ("RGBA", "PNG", (10, 20, 30, 0)),
        ("LA", "PNG", (90, 128)),
        ("1", "PNG", 1),
    ],
)
def test_decode_image_gives_rgb_uint8_for_every_mode(mode, fmt, color):
    buffer = io.BytesIO()
    Image.new(mode, (6, 4), color).save(buffer, fmt)
    pixels = decode_image(buffer.getvalue())
    assert pixels.shape == (4, 6, 3) and pixels.dtype == np.uint8
    if mode == "CMYK":  # pure magenta+yellow ink is red
        assert pixels[0, 0, 0] > 200 and pixels[0, 0, 1] < 60 and pixels[0, 0, 2] < 60
    if mode == "RGBA":  # alpha is dropped, colour kept
        np.testing.assert_array_equal(pixels[0, 0], [10, 20, 30])
    if mode == "L" and fmt == "PNG":
        np.testing.assert_array_equal(pixels[0, 0], [120, 120, 120])


def test_decode_image_scales_16_bit_grey_instead_of_clipping():
    grey = np.array([[0, 257 * 100, 65535]], np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")
    np.testing.assert_array_equal(decode_image(buffer.getvalue())[0, :, 0], [0, 100, 255])


def test_contract_text_names_every_step():
    for words in ("RGB", "224x224", "bilinear", "no crop", "no antialiasing", "x / 127.5 - 1"):
        assert words in images.IMAGE_CONTRACT
