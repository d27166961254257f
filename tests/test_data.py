"""Tests for tfqat.flowers.data: hash splits, the tfds source, tf.data pipelines, the real photos."""

import hashlib
import sys
import time
import types
import warnings
from pathlib import Path

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import numpy as np
import pytest
import tensorflow as tf

from tfqat.data.folders import DataWarning, Record, load_image, scan_folder, to_arrays
from tfqat.data.images import decode_image, preprocess
from tfqat.flowers import data
from tfqat.flowers.data import SplitFractions, load_flowers, make_dataset, split_of, split_records

from image_folders import make_folder

REAL_FOLDER = Path("/work/shared/data/flower_photos")
SIZE = 32  # small contract size keeps pipeline tests fast


def _scan_quietly(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return scan_folder(folder)


# ---------------------------------------------------------------- splits


def test_split_fractions_are_validated():
    assert SplitFractions() == SplitFractions(0.7, 0.1, 0.2)
    with pytest.raises(ValueError, match="sum to 1"):
        SplitFractions(0.7, 0.2, 0.2)
    with pytest.raises(ValueError, match="SplitFractions.validation .* got 0"):
        SplitFractions(0.8, 0, 0.2)
    with pytest.raises(ValueError, match="SplitFractions.train"):
        SplitFractions("0.7", 0.1, 0.2)
    with pytest.raises(ValueError, match="SplitFractions"):
        load_flowers("anything", split=(0.7, 0.1, 0.2))


def test_split_of_is_a_pure_function_of_the_hash_with_the_right_proportions():
    assert split_of("0" * 64) == "train"
    assert split_of("f" * 64) == "test"  # the largest hash stays below 1.0
    assert split_of("b8" + "0" * 62) == "validation"  # 0xb8/256 = 0.71875
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20000)]
    counts = {name: sum(split_of(d) == name for d in digests) / len(digests) for name in data.SPLITS}
    assert abs(counts["train"] - 0.7) < 0.015 and abs(counts["validation"] - 0.1) < 0.01
    assert abs(counts["test"] - 0.2) < 0.015
    odd = SplitFractions(0.5, 0.25, 0.25)
    assert [split_of(d, odd) for d in digests[:50]] == [split_of(d, odd) for d in digests[:50]]


def test_split_does_not_depend_on_other_images_names_or_folders(tmp_path):
    make_folder(tmp_path / "v1", {"a": 12, "b": 12})
    first = load_flowers(tmp_path / "v1")
    where = {r.sha256: name for name in data.SPLITS for r in first.split(name)}
    assert sum(len(first.split(n)) for n in data.SPLITS) == 24

    # Same photos renamed, half removed, new ones added and an extra class: no photo moves.
    make_folder(tmp_path / "v2", {"a": 12, "b": 12, "c": 5}, start=0)
    for path in sorted((tmp_path / "v2").glob("*/img*.jpg"))[::2]:
        path.unlink()
    for path in sorted((tmp_path / "v2").glob("*/img*.jpg")):
        path.rename(path.with_name("renamed_" + path.name))
    make_folder(tmp_path / "v2", {"a": 3, "b": 3}, start=100)
    second = load_flowers(tmp_path / "v2")
    common = 0
    for name in data.SPLITS:
        for record in second.split(name):
            if record.sha256 in where:
                common += 1
                assert where[record.sha256] == name
    assert common >= 10
    assert split_records(first.train)["train"] == first.train
    with pytest.raises(ValueError, match="split must be one of"):
        first.split("val")


def test_tfds_source_splits_and_labels_like_the_folder(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    make_folder(tmp_path, {"daisy": 6, "roses": 6, "tulips": 6})
    folder = load_flowers(tmp_path)
    files = sorted(tmp_path.glob("*/*.jpg"))
    tfds_names = ["tulips", "daisy", "roses"]  # tfds ids are not in sorted order
    encoded = [f.read_bytes() for f in files]
    ids = [tfds_names.index(f.parent.name) for f in files]

    class FakeBuilder:
        info = types.SimpleNamespace(
            features={"image": object(), "label": types.SimpleNamespace(names=tfds_names)}, splits={"train": None}
        )

        def download_and_prepare(self):
            pass

        def as_dataset(self, split, decoders):
            assert split == "train" and "image" in decoders
            return tf.data.Dataset.from_tensor_slices({"image": encoded, "label": np.array(ids, np.int64)})

    asked = []
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: asked.append(name) or FakeBuilder())
    assert load_flowers("tfds:my_flowers").source == "tfds:my_flowers" and asked == ["my_flowers"]
    online = load_flowers(None)
    assert online.classes == folder.classes == ("daisy", "roses", "tulips")
    for name in data.SPLITS:
        by_hash = {r.sha256: r.label for r in folder.split(name)}
        assert {r.sha256: r.label for r in online.split(name)} == by_hash
    assert all(r.encoded is not None for r in online.train)

    class OfflineBuilder(FakeBuilder):
        def download_and_prepare(self):
            raise ConnectionError("Failed to resolve host\nlong traceback text")

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: OfflineBuilder())
    with pytest.raises(RuntimeError) as error:
        load_flowers("tfds")
    assert "\n" not in str(error.value) and "local folder" in str(error.value)

    class TextBuilder(FakeBuilder):
        info = types.SimpleNamespace(features={"text": object()}, splits={"train": None})

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: TextBuilder())
    with pytest.raises(ValueError, match="'imdb_reviews' is not an image classification set"):
        load_flowers("tfds:imdb_reviews")


# ---------------------------------------------------------------- pipelines


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> tuple[Record, ...]:
    root = tmp_path_factory.mktemp("flowers")
    make_folder(root, {"a": 5, "b": 5})
    return _scan_quietly(root).records


def test_eval_pipeline_is_deterministic_and_matches_the_contract(records):
    dataset = make_dataset(records, image_size=SIZE, batch_size=4)
    first = list(dataset.as_numpy_iterator())
    second = list(dataset.as_numpy_iterator())
    assert [b[0].shape for b in first] == [(4, SIZE, SIZE, 3), (4, SIZE, SIZE, 3), (2, SIZE, SIZE, 3)]
    assert first[0][0].dtype == np.float32 and first[0][1].dtype == np.int32
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    images, labels = to_arrays(records, image_size=SIZE)
    np.testing.assert_array_equal(images, np.concatenate([b[0] for b in first]))
    np.testing.assert_array_equal(labels, [r.label for r in records])
    expected = preprocess(decode_image(Path(records[3].source).read_bytes()), SIZE).numpy()
    np.testing.assert_array_equal(images[3], expected)
    np.testing.assert_array_equal(load_image(records[3], SIZE), expected)


def test_training_pipeline_shuffles_augments_and_repeats_with_the_seed(records):
    def epochs(seed):
        dataset = make_dataset(records, image_size=SIZE, batch_size=4, training=True, seed=seed)
        return [list(dataset.as_numpy_iterator()) for _ in range(2)]

    run = epochs(7)
    again = epochs(7)
    for epoch in run:
        assert len(epoch) == 2  # 10 images, batches of 4, last partial batch dropped
        for images, labels in epoch:
            assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == np.float32
            assert labels.dtype == np.int32
            assert images.min() >= -1.0 and images.max() <= 1.0
    for epoch, same in zip(run, again):
        for (x1, y1), (x2, y2) in zip(epoch, same):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(run[0][0][0], run[1][0][0])  # new shuffle/augmentation each epoch
    clean, _ = to_arrays(records, image_size=SIZE)
    augmented = np.concatenate([x for x, _ in run[0]])
    assert not any(np.array_equal(a, c) for a in augmented for c in clean)
    with pytest.raises(ValueError, match="batch_size 11 is larger than the 10 training images"):
        make_dataset(records, image_size=SIZE, batch_size=11, training=True)
    with pytest.raises(ValueError, match="no records"):
        make_dataset((), image_size=SIZE)


def test_a_split_too_large_for_memory_streams_every_image_once_per_epoch_in_a_new_order(records, monkeypatch):
    """Over MEMORY_CACHE_BYTES, "auto" caches nothing: the records are shuffled, then only what each batch needs
    is read; every image still comes once per epoch, the seed repeats the epochs, and eval keeps the order."""
    monkeypatch.setattr(data, "MEMORY_CACHE_BYTES", 1)
    clean, labels = to_arrays(records, image_size=SIZE)
    ordered = np.concatenate([x for x, _ in make_dataset(records, image_size=SIZE, batch_size=4).as_numpy_iterator()])
    np.testing.assert_array_equal(ordered, clean)

    def label_orders(seed):
        dataset = make_dataset(records, image_size=SIZE, batch_size=5, training=True, seed=seed)
        return [np.concatenate([y for _, y in dataset.as_numpy_iterator()]).tolist() for _ in range(2)]

    first = label_orders(3)
    assert first == label_orders(3) and all(sorted(epoch) == sorted(labels.tolist()) for epoch in first)
    reads = []
    monkeypatch.setattr(Record, "read", lambda self: reads.append(self.source) or Path(self.source).read_bytes())
    list(make_dataset(records, image_size=SIZE, batch_size=5, training=True, seed=3).as_numpy_iterator())
    assert sorted(reads) == sorted(r.source for r in records)  # each file read once in the epoch


def test_file_cache_is_keyed_by_records_and_size(records, tmp_path):
    cache = tmp_path / "cache"
    plain = to_arrays(records, image_size=SIZE)[0]
    for _ in range(2):  # the second pass reads the cache files
        batches = list(make_dataset(records, image_size=SIZE, batch_size=16, cache=cache).as_numpy_iterator())
        np.testing.assert_array_equal(batches[0][0], plain)
    list(make_dataset(records[:4], image_size=SIZE, batch_size=16, cache=cache).as_numpy_iterator())
    prefixes = {p.name.split(".")[0] for p in tmp_path.iterdir() if p.name.startswith("cache-")}
    assert len(prefixes) == 2


# ---------------------------------------------------------------- the real photos


@pytest.mark.skipif(not REAL_FOLDER.is_dir(), reason="offline flower_photos folder not present")
def test_real_flower_photos(record_property):
    start = time.perf_counter()
    with pytest.warns(DataWarning) as caught:
        flowers = load_flowers(REAL_FOLDER)
    seconds = time.perf_counter() - start
    record_property("scan_seconds", round(seconds, 2))
    sizes = {name: len(flowers.split(name)) for name in data.SPLITS}
    print(f"\nscanned {REAL_FOLDER} in {seconds:.1f} s; splits {sizes}", file=sys.stderr)
    assert seconds < 60
    assert flowers.classes == ("daisy", "dandelion", "roses", "sunflowers", "tulips")
    skipped = {s.source for s in flowers.skipped}
    assert {"roses/15922772266_1167a06620.jpg", "tulips/15922772266_1167a06620.jpg"} <= skipped
    assert len(skipped) == 4 and "15922772266_1167a06620.jpg" in str(caught[0].message)
    total = sum(sizes.values())
    assert total == 2934 - 4
    assert abs(sizes["train"] / total - 0.7) < 0.03
    assert abs(sizes["validation"] / total - 0.1) < 0.02
    assert abs(sizes["test"] / total - 0.2) < 0.03
