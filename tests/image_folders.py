"""Folders of tiny labelled test images: one sub-folder per class of distinct noise pictures."""

from pathlib import Path

import numpy as np
from PIL import Image


def noise(seed: int, size=(40, 30)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def save(image: Image.Image, path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt)
    return path


def make_folder(root: Path, per_class: dict[str, int], start: int = 0) -> None:
    """Writes `n` distinct noise JPEGs per class; seeds are unique per (class, index)."""
    for c, (name, count) in enumerate(sorted(per_class.items())):
        for i in range(count):
            save(noise(1000 * c + i + start), root / name / f"img{i + start}.jpg")
