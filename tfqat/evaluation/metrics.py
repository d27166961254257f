"""Accuracy of a classifier (Keras or TFLite) on labelled images: overall, per class, confusion."""

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfqat.data.folders import scan_folder, to_arrays
from tfqat.data.labels import read_labels
from tfqat.preprocessing import resolve
from tfqat.evaluation.stats import CONFIDENCE, wilson_interval
from tfqat.files import write_atomic
from tfqat.tflite import export, litert


def classification_metrics(labels: np.ndarray, outputs: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy and its 95 % interval, per-class accuracy (recall), confusion matrix (rows true, columns predicted)."""
    labels = np.asarray(labels, np.int64)
    predicted = np.asarray(outputs).argmax(axis=-1)
    if len(labels) == 0:
        raise ValueError("no images to evaluate")
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {
        name: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
        for i, name in enumerate(classes)
    }
    correct = int((predicted == labels).sum())
    return {
        "accuracy": correct / len(labels),
        "accuracy_interval": list(wilson_interval(correct, len(labels), CONFIDENCE)),
        "count": int(len(labels)),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def evaluate_tflite(
    model, images: np.ndarray, labels: np.ndarray, classes: Sequence[str], batch_size: int = 32, progress: str = ""
) -> dict:
    """Metrics of a TFLite model (int8 or float) on float images under the image contract."""
    outputs = litert.predict(model, images, batch_size=batch_size, progress=progress)
    return classification_metrics(labels, outputs, classes)


def model_labels(model_path, labels_file: Optional[os.PathLike] = None) -> tuple:
    """The class names of an exported model: a labels file, else its metadata, else `<name>.labels.txt`."""
    if labels_file is not None:
        return tuple(read_labels(labels_file))
    stored = export.read_labels_metadata(litert.read_model_bytes(model_path))
    if stored:
        return tuple(stored)
    beside = export.labels_path(model_path)
    if beside.is_file():
        return tuple(read_labels(beside))
    msg = f"{model_path} carries no class labels; pass a labels file (one class name per line)"
    raise ValueError(msg)


def evaluate_folder(
    model_path, folder, *, labels_file=None, out_json=None, batch_size: int = 32, preprocessing: Optional[str] = None
) -> dict:
    """Evaluate an exported model on every image of a folder of class sub-folders.

    Folder classes are matched to the model's labels by name; a folder class the
    model does not know is a clear error. The image size comes from the model, the
    preprocessing from the file's metadata unless given (`tfqat.preprocessing`).
    """
    stored = export.read_preprocessing_metadata(litert.read_model_bytes(model_path))
    preprocessing = resolve(preprocessing, stored=stored, source=str(model_path))
    classes = model_labels(model_path, labels_file)
    scan = scan_folder(folder)
    unknown = sorted(set(scan.classes) - set(classes))
    if unknown:
        msg = f"folder {folder} has classes the model does not know: {unknown}; the model's classes are {list(classes)}"
        raise ValueError(msg)
    image_size = litert.describe(model_path).inputs[0].shape[1]
    images, folder_labels = to_arrays(scan.records, image_size=image_size, preprocessing=preprocessing)
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[scan.classes[label]] for label in folder_labels], np.int64)
    result = evaluate_tflite(model_path, images, labels, classes, batch_size, progress=Path(model_path).name)
    result.update(
        model=str(model_path), data=str(folder), preprocessing=preprocessing, skipped=[s.source for s in scan.skipped]
    )
    if out_json is not None:
        write_atomic(out_json, json.dumps(result, indent=2).encode("utf-8"))
    return result


def format_metrics(result: dict) -> str:
    """A short readable summary: overall accuracy, then each class."""
    lines = [f"accuracy {result['accuracy']:.4f} on {result['count']} images"]
    if result.get("accuracy_interval"):
        low, high = result["accuracy_interval"]
        lines[0] += f" (95 % interval {low:.4f} to {high:.4f}, Wilson)"
    for name, value in result["per_class"].items():
        lines.append(f"  {name:<20} {'-' if value is None else f'{value:.4f}'}")
    return "\n".join(lines)


def file_size(path) -> int:
    return Path(path).stat().st_size
