"""A study's per-seed record, kept beside its published tables, so that a study resumes on another machine.

A seed's run folder holds its models, and a machine's folders do not outlive the machine. The record holds
what the study's tables need, each finished stage's results with its test predictions, and a fingerprint
of the seed's float model weights. On a machine without the run folder the seed's float model is trained
again; where its weights are the recorded ones bit for bit (the same kernels give the same training), the
recorded methods are paired with it and kept. Otherwise the record is kept beside it as an earlier machine's
(`seed<N>.<fingerprint>.json`): its methods stay, each paired with that machine's float model and control,
and the new machine runs its own float model, its control and the methods no earlier machine finished.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from tfqat.files import write_atomic
from tfqat.flowers.methods import FLOAT, FLOAT_WEIGHTS, STAGES
from tfqat.flowers.options import changed_settings

FINGERPRINT = "float_weights_sha256"


def record_path(folder, seed: int) -> Path:
    """Where a seed's record is kept in a record folder."""
    return Path(folder) / f"seed{seed}.json"


def earlier_paths(folder, seed: int) -> list[Path]:
    """The seed's records from earlier machines' float models (`keep_as_earlier`), in name order."""
    return sorted(Path(folder).glob(f"seed{seed}.*.json"))


def keep_as_earlier(record: Path, recorded: dict) -> Path:
    """Keep a record whose float model this machine did not reproduce, under its float weights' fingerprint."""
    path = record.with_name(f"{record.stem}.{recorded.get(FINGERPRINT, 'unknown')[:12]}.json")
    if path.exists():
        raise ValueError(f"{path} already exists: two records of one float model; keep one of them")
    write_atomic(path, (json.dumps(recorded, indent=2) + "\n").encode("utf-8"))
    return path


def kept_methods(earlier: list, control: Optional[str]) -> set:
    """The methods earlier machines finished that the study keeps: each with its own float model and, when
    the study has a `control`, with that machine's control (the float model and the control always run again)."""
    kept = set()
    for recorded in earlier:
        if control is None or control in recorded:
            kept |= {stage for stage in finished_stages(recorded) if stage not in (FLOAT, control)}
    return kept


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
    """A seed's record, or None where the seed has none yet."""
    if not record.is_file():
        return None
    try:
        recorded = json.loads(record.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{record} is not a study record ({error}); delete it to run its seed again") from None
    if not isinstance(recorded, dict) or "settings" not in recorded:
        raise ValueError(f"{record} is not a study record (no settings); delete it to run its seed again")
    return recorded


def finished_stages(recorded: dict) -> list:
    """The stages whose results a record holds, in the pipeline's order."""
    return [stage for stage in STAGES if stage in recorded]


def check_settings(recorded: dict, settings: dict, record: Path) -> None:
    """Refuse a record made with other settings: its methods could not be paired with this study's float model."""
    if changed := changed_settings(recorded["settings"], settings):
        raise ValueError(
            f"{record} was recorded with other settings ({'; '.join(changed)}); run the study with that record's "
            "settings, or give it another --record-dir"
        )


def same_float(recorded: dict, run_folder) -> tuple[bool, str]:
    """Whether a run folder's float model is the recorded one bit for bit, and a sentence saying so."""
    weights = Path(run_folder) / FLOAT_WEIGHTS
    if FINGERPRINT not in recorded or not weights.is_file():
        return False, "the record or the run folder has no float weights to compare"
    fingerprint = weights_fingerprint(weights)
    if fingerprint != recorded[FINGERPRINT]:
        return False, (
            f"the float model trained here differs from the recorded one (weights {fingerprint[:12]}, "
            f"recorded {recorded[FINGERPRINT][:12]}: another machine's kernels)"
        )
    return True, f"the float model trained here is the recorded one bit for bit ({fingerprint[:12]})"
