"""Flower photos for the pipeline: tfds scanning, hash splits, tf.data pipelines with augmentation.

Folders of class sub-folders are scanned by `tfqat.data.folders`; pixels follow the image
contract of `tfqat.data.images`.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import tensorflow as tf

from tfqat.preprocessing import DEFAULT_PREPROCESSING, preprocessing_named
from tfqat.data.folders import (
    Record, Scan, Skipped, check_batching, image_dataset, scan_folder, select_records, skip_reason,
)
from tfqat.data.images import IMAGE_SIZE, check_image_size, decode_image
from tfqat.flowers.augment import augment

# DataWarnings raised while loading flowers point past this module too (see tfqat.data.folders).
_DATA_WARNINGS_SKIP_MODULE = True

SPLITS = ("train", "validation", "test")


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


TFDS_PREFIX = "tfds:"


def scan_tfds(name: str = "tf_flowers", *, data_dir: str | os.PathLike | None = None) -> Scan:
    """Loads an image classification set of tensorflow-datasets (downloads on first use; every split of it,
    re-split by content hash like a folder) and scans it like a folder.

    The set needs an "image" feature and a "label" class feature (tf_flowers, beans, cats_vs_dogs,
    imagenette, ...). Images keep their encoded bytes (SkipDecoding), so a photo hashes, decodes and splits
    exactly as the same file in a local folder; label ids are mapped to names and re-indexed in sorted order.
    The encoded bytes are held in memory: for a set of many gigabytes, export it to a folder first.
    """
    import tensorflow_datasets as tfds  # imported here: only the online path needs it

    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    except Exception as error:  # tfds raises its own DatasetNotFoundError with a long message
        raise ValueError(f"tensorflow-datasets has no data set {name!r}: {(str(error).splitlines() or [''])[0]}") from error
    features = builder.info.features
    if "image" not in features or "label" not in features or not hasattr(features["label"], "names"):
        msg = f"tensorflow-datasets {name!r} is not an image classification set (it needs 'image' and 'label' features)"
        raise ValueError(msg)
    try:
        builder.download_and_prepare()
    except Exception as error:  # network, proxy and missing-dependency failures all look different here
        cause = (str(error).splitlines() or [""])[0]
        msg = (
            f"Could not download {name} with tensorflow-datasets ({type(error).__name__}: {cause}); "
            "without network access pass a local folder of class sub-folders instead."
        )
        raise RuntimeError(msg) from error
    names = list(features["label"].names)
    candidates, unreadable = [], []
    for split in sorted(builder.info.splits):
        dataset = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        for index, example in enumerate(tfds.as_numpy(dataset)):
            source, encoded = f"{name}/{split}[{index}]", bytes(example["image"])
            try:
                decode_image(encoded)
            except Exception as error:  # as in scan_folder: one bad image must not stop the scan
                unreadable.append(Skipped(source, skip_reason(error)))
                continue
            candidates.append((source, names[int(example["label"])], hashlib.sha256(encoded).hexdigest(), encoded))
    return select_records(candidates, sorted(names), unreadable, where=f"tensorflow-datasets {name}")


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
        source: a folder with one sub-folder per class; None or "tfds" for tensorflow-datasets tf_flowers;
            "tfds:NAME" for another image classification set of tensorflow-datasets.
        split: fractions of the train, validation and test splits.
        data_dir: tensorflow-datasets data directory (tfds only).
    """
    if not isinstance(split, SplitFractions):
        msg = f"split must be a SplitFractions, got {type(split).__name__}."
        raise ValueError(msg)
    if source is None or source == "tfds":
        scan, name = scan_tfds(data_dir=data_dir), "tfds:tf_flowers"
    elif isinstance(source, str) and source.startswith(TFDS_PREFIX):
        tfds_name = source[len(TFDS_PREFIX):]
        scan, name = scan_tfds(tfds_name, data_dir=data_dir), f"{TFDS_PREFIX}{tfds_name}"
    else:
        scan, name = scan_folder(source), os.fspath(source)
    groups = split_records(scan.records, split)
    return Flowers(name, scan.classes, groups["train"], groups["validation"], groups["test"], scan.skipped)


# ---------------------------------------------------------------- tf.data pipelines


MEMORY_CACHE_BYTES = 4 * 2**30
"""`cache="auto"` keeps decoded images in memory up to this size (the flowers' 2,021 training images at 224 px
take 1.2 GB); a larger split streams from its files every epoch."""
SHUFFLE_BUFFER = 2048  # images, for a split cached on disk (read back in order, shuffled in a bounded window)


def make_dataset(
    records: tuple[Record, ...] | list[Record],
    *,
    image_size: int = IMAGE_SIZE,
    batch_size: int = 32,
    training: bool = False,
    seed: int = 0,
    cache: str | os.PathLike | None = "auto",
    preprocessing: str = DEFAULT_PREPROCESSING,
) -> tf.data.Dataset:
    """Batches of (float32 images [N, S, S, 3], int32 labels [N]) following the image contract.

    Images are cached and augmented in [-1, 1] (`tfqat.flowers.augment`), then, for another network's
    `preprocessing`, mapped to its inputs (`tfqat.preprocessing`) through the pixels they stand for.

    Args:
        training: shuffle (reshuffled each epoch) and augment, dropping the last partial batch;
            otherwise keep the records' order, never augment, keep every image.
        seed: seeds shuffling and augmentation; the same seed gives the same epochs.
        cache: "auto" caches decoded, resized images in memory when they fit in MEMORY_CACHE_BYTES and
            otherwise decodes every epoch with memory that does not grow with the data (records are shuffled
            before their files are read); "" caches in memory; a path caches in files there (a fingerprint
            of the records and size is appended, so a stale cache is never reused); None decodes every epoch.
    """
    check_image_size(image_size)
    records = check_batching(records, batch_size, "make_dataset")
    if training and len(records) < batch_size:
        # Training drops the last partial batch (its few images give noisy BN statistics), so fewer
        # images than one batch would leave nothing to train on.
        msg = f"batch_size {batch_size} is larger than the {len(records)} training images."
        raise ValueError(msg)
    if cache is not None and os.fspath(cache) == "auto":
        cache = "" if len(records) * image_size * image_size * 3 * 4 <= MEMORY_CACHE_BYTES else None
    if cache is None and training:  # streaming: shuffle the records, then read only what each batch needs
        indices = tf.data.Dataset.range(len(records)).shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
        dataset = image_dataset(records, image_size, indices=indices)
    else:
        dataset = image_dataset(records, image_size)
        if cache is not None:
            dataset = dataset.cache(_cache_name(cache, records, image_size))
        if training:
            in_memory = os.fspath(cache) == ""
            buffer = len(records) if in_memory else min(len(records), SHUFFLE_BUFFER)
            dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if training:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda pair, pair_seed: (augment(pair[0], pair_seed), pair[1]), num_parallel_calls=tf.data.AUTOTUNE
        )
        dataset = dataset.batch(batch_size, drop_remainder=True)
    else:
        dataset = dataset.batch(batch_size)
    if preprocessing != DEFAULT_PREPROCESSING:
        scaling = preprocessing_named(preprocessing)
        dataset = dataset.map(lambda images, labels: (scaling.apply((images + 1.0) * 127.5), labels))
    return dataset.prefetch(tf.data.AUTOTUNE)


def _cache_name(cache: str | os.PathLike, records: tuple[Record, ...], image_size: int) -> str:
    if os.fspath(cache) == "":
        return ""
    fingerprint = hashlib.sha256(str(image_size).encode())
    for record in records:
        fingerprint.update(f"{record.sha256}:{record.label};".encode())
    return f"{os.fspath(cache)}-{fingerprint.hexdigest()[:16]}"
