"""Flower photos for the pipeline: folder/tfds scanning, hash splits, tf.data pipelines, labels.

Pixels follow the image contract of `tfqat.flowers.images`.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import numpy as np
import tensorflow as tf
from PIL import UnidentifiedImageError

from tfqat.files import write_atomic
from tfqat.flowers.images import IMAGE_SIZE, augment, check_image_size, decode_image, preprocess

SPLITS = ("train", "validation", "test")


class DataWarning(UserWarning):
    """Files or classes were left out of a data set; the message lists each one and why."""


@dataclass(frozen=True)
class SplitFractions:
    """Fractions of images in the train, validation and test splits; positive and summing to 1."""

    train: float = 0.7
    validation: float = 0.1
    test: float = 0.2

    def __post_init__(self) -> None:
        for name in SPLITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                msg = f"SplitFractions.{name} must be a number strictly between 0 and 1, got {value!r}."
                raise ValueError(msg)
        total = self.train + self.validation + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            msg = f"SplitFractions must sum to 1, got train+validation+test = {total!r}."
            raise ValueError(msg)


@dataclass(frozen=True)
class Record:
    """One usable image: where it came from, its class index and the sha256 of its encoded bytes."""

    source: str
    label: int
    sha256: str
    # tfds images have no file to re-read, so their encoded bytes travel with the record.
    encoded: bytes | None = field(default=None, repr=False, compare=False)

    def read(self) -> bytes:
        """Returns the encoded image bytes."""
        return self.encoded if self.encoded is not None else Path(self.source).read_bytes()


def load_image(record: Record, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Reads, decodes and preprocesses one record under the image contract; float32 [image_size, image_size, 3]."""
    return preprocess(decode_image(record.read()), image_size).numpy()


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


@dataclass(frozen=True)
class Flowers:
    """Classes and the records of each split, plus what was skipped while scanning."""

    source: str
    classes: tuple[str, ...]
    train: tuple[Record, ...]
    validation: tuple[Record, ...]
    test: tuple[Record, ...]
    skipped: tuple[Skipped, ...]

    def split(self, name: str) -> tuple[Record, ...]:
        """Returns the records of split `name` ("train", "validation" or "test")."""
        if name not in SPLITS:
            msg = f"split must be one of {', '.join(SPLITS)}, got {name!r}."
            raise ValueError(msg)
        return getattr(self, name)


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
    candidates, unreadable = [], []
    for class_dir in class_dirs:
        for path in _files_under(class_dir):
            name = str(path.relative_to(root))
            try:
                encoded = path.read_bytes()
                decode_image(encoded)
            except Exception as error:  # image decoders raise many types on hostile files; none may stop a scan
                unreadable.append(Skipped(name, _reason(error)))
                continue
            candidates.append((str(path), class_dir.name, hashlib.sha256(encoded).hexdigest(), None))
    return _select(candidates, [d.name for d in class_dirs], unreadable, where=str(root), root=root)


def _files_under(class_dir: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return files


def _reason(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not an image file Pillow can read"
    return f"{type(error).__name__}: {error}"


_Candidate = tuple[str, str, str, bytes | None]  # source, class name, sha256, bytes the record keeps


def _select(
    candidates: list[_Candidate],
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
    # Point the warning at the caller's line, not at whichever helper of this module emitted it.
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn("\n".join(lines), DataWarning, stacklevel=level)


def scan_tfds(*, data_dir: str | os.PathLike | None = None) -> Scan:
    """Loads tf_flowers through tensorflow-datasets (downloads on first use) and scans it like a folder.

    Images keep their encoded bytes (SkipDecoding), so a photo hashes, decodes and splits exactly as
    the same file in a local folder; tfds label ids are mapped to names and re-indexed in sorted order.
    """
    import tensorflow_datasets as tfds  # imported here: only the online path needs it

    builder = tfds.builder("tf_flowers", data_dir=None if data_dir is None else os.fspath(data_dir))
    try:
        builder.download_and_prepare()
    except Exception as error:  # network, proxy and missing-dependency failures all look different here
        cause = (str(error).splitlines() or [""])[0]
        msg = (
            f"Could not download tf_flowers with tensorflow-datasets ({type(error).__name__}: {cause}); "
            "without network access pass a local folder in the flower_photos layout instead."
        )
        raise RuntimeError(msg) from error
    names = list(builder.info.features["label"].names)
    dataset = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    candidates, unreadable = [], []
    for index, example in enumerate(tfds.as_numpy(dataset)):
        source, encoded = f"tf_flowers[{index}]", bytes(example["image"])
        try:
            decode_image(encoded)
        except Exception as error:  # as in scan_folder: one bad image must not stop the scan
            unreadable.append(Skipped(source, _reason(error)))
            continue
        candidates.append((source, names[int(example["label"])], hashlib.sha256(encoded).hexdigest(), encoded))
    return _select(candidates, sorted(names), unreadable, where="tensorflow-datasets tf_flowers")


# ---------------------------------------------------------------- splits


def split_of(sha256: str, fractions: SplitFractions = SplitFractions()) -> str:
    """Names the split of an image from its content hash alone, so no other image can move it."""
    # The top 53 bits give an exact float in [0, 1); more bits could round up to 1.0.
    position = (int(sha256, 16) >> (256 - 53)) / 2.0**53
    if position < fractions.train:
        return "train"
    if position < fractions.train + fractions.validation:
        return "validation"
    return "test"


def split_records(
    records: tuple[Record, ...] | list[Record], fractions: SplitFractions = SplitFractions()
) -> dict[str, tuple[Record, ...]]:
    """Groups records by split_of(record.sha256), keeping their order."""
    groups: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for record in records:
        groups[split_of(record.sha256, fractions)].append(record)
    return {name: tuple(group) for name, group in groups.items()}


def load_flowers(
    source: str | os.PathLike | None,
    *,
    split: SplitFractions = SplitFractions(),
    data_dir: str | os.PathLike | None = None,
) -> Flowers:
    """Scans flower photos and splits them by content hash.

    Args:
        source: a folder with one sub-folder per class, or None / "tfds" for tensorflow-datasets tf_flowers.
        split: fractions of the train, validation and test splits.
        data_dir: tensorflow-datasets data directory (tfds only).
    """
    if not isinstance(split, SplitFractions):
        msg = f"split must be a SplitFractions, got {type(split).__name__}."
        raise ValueError(msg)
    if source is None or source == "tfds":
        scan, name = scan_tfds(data_dir=data_dir), "tfds:tf_flowers"
    else:
        scan, name = scan_folder(source), os.fspath(source)
    groups = split_records(scan.records, split)
    return Flowers(name, scan.classes, groups["train"], groups["validation"], groups["test"], scan.skipped)


# ---------------------------------------------------------------- tf.data pipelines


def make_dataset(
    records: tuple[Record, ...] | list[Record],
    *,
    image_size: int = IMAGE_SIZE,
    batch_size: int = 32,
    training: bool = False,
    seed: int = 0,
    cache: str | os.PathLike | None = "",
) -> tf.data.Dataset:
    """Batches of (float32 images [N, S, S, 3] in [-1, 1], int32 labels [N]) following the image contract.

    Args:
        training: shuffle (reshuffled each epoch) and augment, dropping the last partial batch;
            otherwise keep the records' order, never augment, keep every image.
        seed: seeds shuffling and augmentation; the same seed gives the same epochs.
        cache: "" caches decoded, resized images in memory, a path caches them in files there (a
            fingerprint of the records and size is appended, so a stale cache is never reused), None
            decodes every epoch.
    """
    check_image_size(image_size)
    records = tuple(records)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        msg = f"batch_size must be a positive int, got {batch_size!r}."
        raise ValueError(msg)
    if not records:
        msg = "make_dataset got no records; the split is empty."
        raise ValueError(msg)
    if training and len(records) < batch_size:
        # Training drops the last partial batch (its few images give noisy BN statistics), so fewer
        # images than one batch would leave nothing to train on.
        msg = f"batch_size {batch_size} is larger than the {len(records)} training images."
        raise ValueError(msg)
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
        return preprocess(pixels, image_size), labels[index]

    dataset = tf.data.Dataset.range(len(records)).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    if cache is not None:
        dataset = dataset.cache(_cache_name(cache, records, image_size))
    if training:
        dataset = dataset.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda pair, pair_seed: (augment(pair[0], pair_seed), pair[1]), num_parallel_calls=tf.data.AUTOTUNE
        )
        dataset = dataset.batch(batch_size, drop_remainder=True)
    else:
        dataset = dataset.batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _cache_name(cache: str | os.PathLike, records: tuple[Record, ...], image_size: int) -> str:
    if os.fspath(cache) == "":
        return ""
    fingerprint = hashlib.sha256(str(image_size).encode())
    for record in records:
        fingerprint.update(f"{record.sha256}:{record.label};".encode())
    return f"{os.fspath(cache)}-{fingerprint.hexdigest()[:16]}"


def to_arrays(
    records: tuple[Record, ...] | list[Record], *, image_size: int = IMAGE_SIZE, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """All images of a split as numpy (float32 [N, S, S, 3] in [-1, 1], int32 [N]), in record order."""
    batches = list(make_dataset(records, image_size=image_size, batch_size=batch_size, cache=None).as_numpy_iterator())
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


# ---------------------------------------------------------------- labels


def write_labels(path: str | os.PathLike, classes: tuple[str, ...] | list[str]) -> None:
    """Writes one class name per line (UTF-8), atomically so a reader never sees half a file."""
    classes = list(classes)
    for name in classes:
        if not isinstance(name, str) or not name.strip() or "\n" in name or "\r" in name or name != name.strip():
            msg = f"Class names must be non-empty single-line strings without surrounding spaces, got {name!r}."
            raise ValueError(msg)
    if not classes or len(set(classes)) != len(classes):
        msg = f"Labels must be a non-empty list of distinct class names, got {classes!r}."
        raise ValueError(msg)
    write_atomic(path, "".join(f"{name}\n" for name in classes))


def read_labels(path: str | os.PathLike) -> tuple[str, ...]:
    """Reads a labels file written by write_labels; line i names class i."""
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        msg = f"Labels file {str(target)!r} does not exist."
        raise ValueError(msg) from None
    except UnicodeDecodeError:
        msg = f"Labels file {str(target)!r} is not UTF-8 text."
        raise ValueError(msg) from None
    classes = [line.strip() for line in text.splitlines()]
    while classes and not classes[-1]:
        classes.pop()
    if not classes or "" in classes:
        msg = f"Labels file {str(target)!r} is empty or has blank lines; expected one class name per line."
        raise ValueError(msg)
    if len(set(classes)) != len(classes):
        msg = f"Labels file {str(target)!r} names a class twice."
        raise ValueError(msg)
    return tuple(classes)
