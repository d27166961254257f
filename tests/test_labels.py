"""Tests for tfqat.data.labels: labels files written atomically and read back, with clear errors."""

import os

import pytest

from tfqat.data.labels import read_labels, write_labels


def test_labels_round_trip_atomically(tmp_path):
    path = tmp_path / "labels.txt"
    classes = ("daisy", "dandelion", "roses", "sunflowers", "tulips", "löwenzahn")
    write_labels(path, classes)
    assert read_labels(path) == classes
    assert path.read_bytes().decode("utf-8") == "".join(f"{c}\n" for c in classes)
    write_labels(path, ["a", "b"])  # replaces, leaves no temp file behind
    assert read_labels(path) == ("a", "b") and sorted(os.listdir(tmp_path)) == ["labels.txt"]


def test_labels_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="missing.txt.*does not exist"):
        read_labels(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt.*empty"):
        read_labels(tmp_path / "empty.txt")
    (tmp_path / "twice.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match="twice"):
        read_labels(tmp_path / "twice.txt")
    for bad in ([], ["a", "a"], ["a\nb", "c"], ["", "b"]):
        with pytest.raises(ValueError):
            write_labels(tmp_path / "bad.txt", bad)
    assert not (tmp_path / "bad.txt").exists()
