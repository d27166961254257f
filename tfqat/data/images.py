"""The image contract: decoding, resizing and scaling pixels the same way everywhere; sample images from a folder."""

from __future__ import annotations

import io
from pathlib import Path

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import numpy as np
import tensorflow as tf
from PIL import Image

from tfqat.preprocessing import DEFAULT_PREPROCESSING, preprocessing_named

IMAGE_SIZE = 224


def image_contract(preprocessing: str = DEFAULT_PREPROCESSING) -> str:
    """The image contract under one preprocessing (quotable in reports)."""
    scaling = preprocessing_named(preprocessing)
    return (
        "Images are decoded with Pillow and converted to 8-bit RGB (grayscale, palette, CMYK and 16-bit "
        "images are converted, alpha is dropped, EXIF orientation is ignored), resized to 224x224 (the "
        "default image_size) with bilinear resampling (tf.image.resize, no crop, no antialiasing, aspect "
        f"ratio not kept) and preprocessed as '{scaling.name}': {scaling.summary}."
    )


IMAGE_CONTRACT = image_contract()
"""The image contract of the flowers MobileNetV2, shared by training, evaluation and TFLite checks."""


def decode_image(encoded: bytes) -> np.ndarray:
    """Decodes JPEG/PNG/GIF/BMP/... bytes fully into an HxWx3 uint8 RGB array (raises on corrupt data)."""
    with Image.open(io.BytesIO(encoded)) as image:
        image.load()  # full decode: a truncated JPEG fails here, not just at the header
        if image.mode.startswith("I") or image.mode == "F":
            # Pillow clips 16-bit and float pixels to 255 when converting; scale them instead.
            pixels = np.asarray(image, dtype=np.float64)
            if image.mode != "F":
                pixels = pixels * (255.0 / 65535.0)
            gray = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def preprocess(
    image: np.ndarray | tf.Tensor, image_size: int = IMAGE_SIZE, preprocessing: str = DEFAULT_PREPROCESSING
) -> tf.Tensor:
    """Applies the image contract to uint8 RGB pixels ([H, W, 3] or [N, H, W, 3]).

    Returns float32 inputs of shape [..., image_size, image_size, 3] under `preprocessing`
    (`tfqat.preprocessing`; the default maps 0 to -1 and 255 to 1).
    """
    check_image_size(image_size)
    scaling = preprocessing_named(preprocessing)
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        # Float input usually means pixels were already scaled; scaling twice would silently ruin accuracy.
        msg = f"preprocess expects uint8 pixels in 0..255, got dtype {image.dtype.name}."
        raise ValueError(msg)
    resized = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=False)
    return scaling.apply(tf.cast(resized, tf.float32))


def check_image_size(image_size: int) -> None:
    """Raises ValueError unless image_size is a positive int."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        msg = f"image_size must be a positive int (pixels per side, e.g. 224), got {image_size!r}."
        raise ValueError(msg)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def folder_images(
    folder, count: int, image_size: int = IMAGE_SIZE, preprocessing: str = DEFAULT_PREPROCESSING
) -> np.ndarray:
    """Up to `count` images found anywhere under `folder` (no labels needed), under the image contract.

    Files are taken in sorted order at even spacing, so the sample spans every sub-folder and is the same
    on every run; files that do not decode are skipped.
    """
    if count < 1:
        raise ValueError(f"count={count!r} must be a positive number of images")
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    picked = [files[i] for i in np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).astype(int))]
    decoded = []
    for path in picked:
        try:
            decoded.append(preprocess(decode_image(path.read_bytes()), image_size, preprocessing).numpy())
        except (OSError, ValueError):
            continue
    if not decoded:
        raise ValueError(f"none of the {len(picked)} images picked under {root} could be decoded")
    return np.stack(decoded)
