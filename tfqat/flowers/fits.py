"""The fits a run folder finished, so a run stopped after a fit but before its stage's end resumes after the fit.

A QAT stage trains for most of its time, then exports, verifies and evaluates for a few minutes. A fit's
epochs already resume (BackupAndRestore), but its backup is gone once the fit ends: without this list, a stop
in those minutes trains the whole fit again. Each entry names the weights the fit ended with and the float
weights it started from, by fingerprint, so a fit is kept only with the very files it left: a float model
trained again (state.json deleted, say) or a weights file written by anything else sends the stage back to
training.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

from tfqat.files import write_atomic
from tfqat.flowers.study_record import weights_fingerprint

FITS = "fits.json"


def save_weights_atomic(model, path: Path) -> None:
    """`model.save_weights` via a temporary file in the same folder: `path` holds whole weights or none.

    The temporary name ends as `path` does, since Keras picks the file's format by the name's ending.
    """
    path = Path(path)
    handle, temp = tempfile.mkstemp(prefix=".", suffix=f".{path.name}", dir=path.parent)
    os.close(handle)
    try:
        model.save_weights(temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class FinishedFits:
    """<out>/fits.json: stage -> {weights_sha256, start_sha256, same_fit_as} of each fit that ended."""

    def __init__(self, folder):
        self.path = Path(folder) / FITS
        self.fits = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def save(self, stage: str, weights: Path, start: Path, same_fit_as: Optional[str] = None) -> None:
        """Record that `stage`'s fit ended with the weights in `weights`, having started from those in `start`."""
        self.fits[stage] = {
            "weights_sha256": weights_fingerprint(weights),
            "start_sha256": weights_fingerprint(start),
            "same_fit_as": same_fit_as,
        }
        write_atomic(self.path, json.dumps(self.fits, indent=2) + "\n")

    def kept(self, stage: str, weights: Path, start: Path) -> Optional[dict]:
        """The entry of `stage`'s fit when `weights` and `start` are still the files it recorded; else None."""
        entry = self.fits.get(stage)
        if entry is None or not (Path(weights).is_file() and Path(start).is_file()):
            return None
        if weights_fingerprint(weights) != entry["weights_sha256"] or weights_fingerprint(start) != entry["start_sha256"]:
            return None
        return entry
