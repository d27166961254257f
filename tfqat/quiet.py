"""Keeping TensorFlow's own logs off a command's output, and at hand when something fails.

TensorFlow, absl and the TFLite converter log from C++ straight to file
descriptor 2, before and regardless of Python's logging settings. `native_logs`
points descriptor 2 at a file for the duration of a command while Python's
`sys.stderr` (tfqat's errors and warnings, progress bars) stays on the
terminal; the caller keeps the file when the command fails.
"""

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

# Python-side loggers and warning sources of the stack below tfqat.
_LOGGERS = ("tensorflow", "absl", "h5py")
_WARNING_MODULES = r"(tensorflow|tf_keras|keras|tensorflow_model_optimization|absl|ai_edge_litert|h5py)(\.|$)"


def silence_python_logs() -> None:
    """TensorFlow's Python logger and the stack's own warnings (deprecations, retracing notes) off; tfqat's stay."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=_WARNING_MODULES)


@contextlib.contextmanager
def native_logs() -> Iterator[Path]:
    """Within the block, what native code writes to descriptor 2 goes to a temporary file (yielded).

    Python's sys.stderr is rebound to the terminal's descriptor, so Python output is unaffected.
    The file is removed on leaving the block; copy it first to keep it.
    """
    sys.stderr.flush()
    terminal = os.dup(2)
    handle, name = tempfile.mkstemp(prefix="tfqat-native-", suffix=".log")
    python_stderr = sys.stderr
    rebind = _writes_to_descriptor_2(python_stderr)  # else (e.g. under pytest's capsys) it is not ours to move
    if rebind:
        sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, encoding=getattr(python_stderr, "encoding", None))
    os.dup2(handle, 2)
    try:
        yield Path(name)
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        os.close(handle)
        if rebind:
            sys.stderr.close()
            sys.stderr = python_stderr
        with contextlib.suppress(OSError):
            os.unlink(name)


def _writes_to_descriptor_2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False
