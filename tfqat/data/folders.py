"""Labelled image folders: one sub-folder per class, scanned into records, loaded under the image contract.

Pixels follow the image contract of `tfqat.data.images`.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import numpy as np
import tensorflow as tf
from PIL import UnidentifiedImageError

from tfqat.data.images import IMAGE_SIZE, check_image_size, decode_image, preprocess
from tfqat.preprocessing import DEFAULT_PREPROCESSING

# A DataWarning points at the first caller outside the modules that set this flag (this one, and
# loaders built on it such as the flowers data), so the user sees the line that asked for the data.
_DATA_WARNINGS_SKIP_MODULE = True


class DataWarning(UserWarning):
    """Files or classes were left out of a data set; the message lists each one and why."""


@dataclass(frozen=True)
class Record:
    """One usable image: where it came from, its class index and the sha256 of its encoded bytes."""

    source: str
    label: int
    sha256: str
    # Images without a file to re-read (tfds) keep their encoded bytes in the record.
    encoded: bytes | None = field(default=None, repr=False, compare=False)

    def read(self) -> bytes:
        """Returns the encoded image bytes."""
        return self.encoded if self.encoded is not None else Path(self.source).read_bytes()


def load_image(record: Record, image_size: int = IMAGE_SIZE, preprocessing: str = DEFAULT_PREPROCESSING) -> np.ndarray:
    """Reads, decodes and preprocesses one record under the image contract; float32 [image_size, image_size, 3]."""
    return preprocess(decode_image(record.read()), image_size, preprocessing).numpy()


@dataclass(frozen=True)
class Skipped:
    """A file left out of the data set and the reason."""

    source: str
    reason: str


@dataclass(frozen=True)
class Scan:
    """Result of scanning a data source: class names (index = label), usable records, skipped files."""

    classes: tuple[str, ...]
    records: tuple[Record, ...]
    skipped: tuple[Skipped, ...]


# ---------------------------------------------------------------- scanning


def scan_folder(folder: str | os.PathLike) -> Scan:
    """Scans a folder with one sub-folder per class (names sorted = labels) and fully decodes every file.

    Top-level files (LICENSE.txt, README.md) and hidden files are ignored. Unreadable files, images
    whose content appears under two classes, repeated copies within a class and empty classes are
    left out and listed in one DataWarning.
    """
    root = Path(folder)
    if not root.is_dir():
        msg = f"Data folder {str(root)!r} does not exist or is not a folder."
        raise ValueError(msg)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(path, class_dir.name) for class_dir in class_dirs for path in _files_under(class_dir)]
    candidates, unreadable = [], []
    # Several files at a time: reading, hashing and decoding release the GIL, and a large folder's scan
    # would otherwise take as long as decoding every image on one core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for (path, class_name), checked in zip(files, pool.map(_checked_digest, (path for path, _ in files))):
            if isinstance(checked, Exception):
                unreadable.append(Skipped(str(path.relative_to(root)), skip_reason(checked)))
            else:
                candidates.append((str(path), class_name, checked, None))
    return select_records(candidates, [d.name for d in class_dirs], unreadable, where=str(root), root=root)


def _checked_digest(path: Path):
    """The sha256 of a file that decodes fully as an image, or the exception that says why it does not."""
    try:
        encoded = path.read_bytes()
        decode_image(encoded)
    except Exception as error:  # image decoders raise many types on hostile files; none may stop a scan
        return error
    return hashlib.sha256(encoded).hexdigest()


def _files_under(class_dir: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return files


def skip_reason(error: Exception) -> str:
    """Why an image that failed to decode is left out, in a few words."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image file Pillow can read"
    return f"{type(error).__name__}: {error}"


Candidate = tuple[str, str, str, bytes | None]  # source, class name, sha256, bytes the record keeps


def select_records(
    candidates: list[Candidate],
    class_names: list[str],
    skipped: list[Skipped],
    *,
    where: str,
    root: Path | None = None,
) -> Scan:
    """Drops ambiguous and repeated content and empty classes; warns once; returns the Scan."""
    skipped = list(skipped)
    by_hash: dict[str, list[tuple[str, str, bytes | None]]] = {}
    for source, class_name, digest, keep in candidates:
        by_hash.setdefault(digest, []).append((source, class_name, keep))

    def short(source: str) -> str:
        return str(Path(source).relative_to(root)) if root is not None else source

    kept: dict[str, list[tuple[str, str, bytes | None]]] = {name: [] for name in class_names}
    for digest, copies in by_hash.items():
        copies.sort(key=lambda copy: copy[0])  # the first path in sorted order is the copy kept
        classes_here = sorted({c for _, c, _ in copies})
        if len(classes_here) > 1:
            # The same picture under two labels is ambiguous, and keeping one copy could leak it across splits.
            reason = f"same content is in classes {', '.join(classes_here)}; all copies dropped"
            skipped.extend(Skipped(short(s), reason) for s, _, _ in copies)
            continue
        source, class_name, keep = copies[0]
        kept[class_name].append((source, digest, keep))
        reason = f"same content as {short(source)}; one copy kept"
        skipped.extend(Skipped(short(s), reason) for s, _, _ in copies[1:])

    classes = tuple(name for name in class_names if kept[name])
    empty = [name for name in class_names if not kept[name]]
    records = tuple(
        Record(source, label, digest, keep)
        for label, name in enumerate(classes)
        for source, digest, keep in sorted(kept[name], key=lambda item: item[0])
    )
    _warn(where, skipped, empty)
    if not records:
        msg = f"No readable images found in {where}; expected one sub-folder per class holding image files."
        raise ValueError(msg)
    if len(classes) < 2:
        msg = f"Only class {classes[0]!r} has usable images in {where}; classification needs at least two classes."
        raise ValueError(msg)
    return Scan(classes, records, tuple(sorted(skipped, key=lambda s: s.source)))


def _warn(where: str, skipped: list[Skipped], empty: list[str]) -> None:
    if not skipped and not empty:
        return
    lines = [f"{where}: left out {len(skipped)} file(s) and {len(empty)} class(es):"]
    lines += [f"  {s.source}: {s.reason}" for s in sorted(skipped, key=lambda s: s.source)]
    lines += [f"  class {name!r} dropped: its folder has no usable images" for name in empty]
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_globals.get("_DATA_WARNINGS_SKIP_MODULE"):
        frame, level = frame.f_back, level + 1
    warnings.warn("\n".join(lines), DataWarning, stacklevel=level)


# ---------------------------------------------------------------- loading


def check_batching(records: tuple[Record, ...] | list[Record], batch_size: int, caller: str) -> tuple[Record, ...]:
    """The records as a tuple; ValueError for a batch_size that is not a positive int or no records."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        msg = f"batch_size must be a positive int, got {batch_size!r}."
        raise ValueError(msg)
    records = tuple(records)
    if not records:
        msg = f"{caller} got no records; the split is empty."
        raise ValueError(msg)
    return records


def image_dataset(
    records: tuple[Record, ...], image_size: int = IMAGE_SIZE, preprocessing: str = DEFAULT_PREPROCESSING,
    indices: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """Unbatched (float32 image [S, S, 3], int32 label) of each record under the image contract: in order, or in
    the order of `indices` (a dataset of int64 record indices, e.g. shuffled before any image is decoded).

    Files are read and decoded as the dataset is iterated, several at a time (Pillow decodes outside the GIL),
    so memory does not grow with the number of records. A file whose content changed since it was scanned is
    an error, not a silently different image.
    """
    labels = tf.constant([record.label for record in records], tf.int32)

    def load(index: np.int64) -> np.ndarray:
        record = records[int(index)]
        encoded = record.read()
        if hashlib.sha256(encoded).hexdigest() != record.sha256:
            msg = f"{record.source} changed since it was scanned; scan the data again."
            raise ValueError(msg)
        return decode_image(encoded)

    def decode(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.numpy_function(load, [index], tf.uint8, stateful=False)
        pixels.set_shape([None, None, 3])
        return preprocess(pixels, image_size, preprocessing), labels[index]

    order = tf.data.Dataset.range(len(records)) if indices is None else indices
    return order.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def to_arrays(
    records: tuple[Record, ...] | list[Record], *, image_size: int = IMAGE_SIZE, batch_size: int = 64,
    preprocessing: str = DEFAULT_PREPROCESSING,
) -> tuple[np.ndarray, np.ndarray]:
    """All images of a split as numpy (float32 [N, S, S, 3], int32 [N]), in record order."""
    check_image_size(image_size)
    records = check_batching(records, batch_size, "to_arrays")
    dataset = image_dataset(records, image_size, preprocessing).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    batches = list(dataset.as_numpy_iterator())
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
