"""A study's per-seed record, kept beside its published tables, so that a study resumes on another machine.

A seed's run folder holds its models, and a machine's folders do not outlive the machine. The record holds
what the study's tables need, each finished stage's results with its test predictions, and a fingerprint
of the seed's float model weights. On a machine without the run folder the seed's float model is trained
again; where its weights are the recorded ones bit for bit (the same kernels give the same training), the
recorded methods are paired with it and kept; otherwise they run again on the new float model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from tfqat.files import write_atomic
from tfqat.flowers.methods import FLOAT_WEIGHTS

FINGERPRINT = "float_weights_sha256"


def record_path(folder, seed: int) -> Path:
    return Path(folder) / f"seed{seed}.json"


def weights_fingerprint(path) -> str:
    """SHA-256 of a Keras weights file's arrays (names, dtypes, shapes and values, in name order).

    The file's own bytes also carry HDF5 metadata that can differ between two saves of the same weights.
    """
    import h5py

    digest = hashlib.sha256()
    with h5py.File(path, "r") as weights:
        arrays = []
        weights.visititems(lambda name, item: arrays.append(name) if isinstance(item, h5py.Dataset) else None)
        for name in sorted(arrays):
            array = weights[name][()]
            digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def write_record(run_folder, record: Path) -> None:
    """Copy a run folder's results (state.json) and its float model's fingerprint to `record`."""
    run_folder = Path(run_folder)
    results = json.loads((run_folder / "state.json").read_text())
    weights = run_folder / FLOAT_WEIGHTS
    if weights.is_file():
        results[FINGERPRINT] = weights_fingerprint(weights)
    write_atomic(record, (json.dumps(results, indent=2) + "\n").encode("utf-8"))


def read_record(record: Path) -> Optional[dict]:
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{record} is not a study record ({error}); delete it to run its seed again") from None


def stages_to_restore(recorded: dict, run_folder, settings: dict) -> tuple[list, str]:
    """The recorded stages a run folder may take over, and why (or why none).

    The run folder must have trained its float model with the recorded settings, to the recorded weights.
    """
    stages = [name for name, value in recorded.items() if isinstance(value, dict) and "accuracy" in value]
    if recorded.get("settings") != settings:
        return [], "the record was made with other settings"
    weights = Path(run_folder) / FLOAT_WEIGHTS
    if FINGERPRINT not in recorded or not weights.is_file():
        return [], "the record or the run folder has no float weights to compare"
    fingerprint = weights_fingerprint(weights)
    if fingerprint != recorded[FINGERPRINT]:
        return [], (
            f"the float model trained here differs from the recorded one (weights {fingerprint[:12]}, "
            f"recorded {recorded[FINGERPRINT][:12]}: another machine's kernels)"
        )
    return stages, f"the float model trained here is the recorded one bit for bit ({fingerprint[:12]})"
