"""Tests for tfqat.data.folders: scanning a folder of class sub-folders, and what it leaves out."""

import hashlib
import io
import os
from pathlib import Path

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import pytest
from PIL import Image

from tfqat.data.folders import DataWarning, scan_folder

from image_folders import make_folder, noise, save


def _messy_folder(root: Path) -> None:
    make_folder(root, {"daisy": 3, "roses": 3})
    save(Image.new("L", (30, 20), 77), root / "daisy" / "grey.jpg")
    save(noise(50).convert("CMYK"), root / "roses" / "cmyk.jpg")
    save(noise(51), root / "roses" / "photo.png")
    save(noise(52).convert("P"), root / "daisy" / "palette.gif")
    buffer = io.BytesIO()
    noise(53, (200, 200)).save(buffer, "JPEG")
    (root / "daisy" / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "roses" / "notes.jpg").write_text("not a picture")
    shared = noise(54)
    save(shared, root / "daisy" / "both.png")
    save(shared, root / "roses" / "both_again.png")
    repeated = noise(55)
    save(repeated, root / "daisy" / "copy_b.png")
    save(repeated, root / "daisy" / "copy_a.png")
    (root / "empty_class").mkdir()
    (root / "README.md").write_text("top-level files are not images")
    (root / "daisy" / ".DS_Store").write_bytes(b"\0\1hidden")


def test_scan_skips_bad_files_and_names_them_in_one_warning(tmp_path):
    _messy_folder(tmp_path)
    with pytest.warns(DataWarning) as caught:
        scan = scan_folder(tmp_path)
    assert len([w for w in caught if issubclass(w.category, DataWarning)]) == 1
    message = str(caught[0].message)
    for name in ("truncated.jpg", "notes.jpg", "both.png", "both_again.png", "copy_b.png", "empty_class"):
        assert name in message
    assert "copy_a.png" not in [s.source.split(os.sep)[-1] for s in scan.skipped]  # first copy kept
    reasons = {Path(s.source).name: s.reason for s in scan.skipped}
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "README.md" not in message and ".DS_Store" not in message

    assert scan.classes == ("daisy", "roses")  # empty class dropped, labels stay dense and sorted
    kept = {Path(r.source).relative_to(tmp_path).as_posix(): r.label for r in scan.records}
    assert kept == {
        **{f"daisy/{n}": 0 for n in ("copy_a.png", "grey.jpg", "img0.jpg", "img1.jpg", "img2.jpg", "palette.gif")},
        **{f"roses/{n}": 1 for n in ("cmyk.jpg", "img0.jpg", "img1.jpg", "img2.jpg", "photo.png")},
    }
    for record in scan.records:
        assert record.sha256 == hashlib.sha256(Path(record.source).read_bytes()).hexdigest()
    assert len({r.sha256 for r in scan.records}) == len(scan.records)


def test_scan_errors_name_the_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        scan_folder(missing)
    junk = tmp_path / "junk"
    (junk / "a").mkdir(parents=True)
    (junk / "a" / "x.jpg").write_text("text")
    (junk / "b").mkdir()
    with pytest.warns(DataWarning), pytest.raises(ValueError, match="No readable images found in .*junk"):
        scan_folder(junk)
    with pytest.raises(ValueError, match="No readable images"):
        scan_folder(tmp_path / "junk" / "b")
    single = tmp_path / "single"
    make_folder(single, {"tulips": 2})
    (single / "roses").mkdir()
    with pytest.warns(DataWarning), pytest.raises(ValueError, match="Only class 'tulips'.*single"):
        scan_folder(single)
