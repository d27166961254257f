"""Keeping TensorFlow's own logs off a command's output, and at hand when something fails.

TensorFlow, absl and the TFLite converter log from C++ straight to file
descriptor 2, before and regardless of Python's logging settings. `quiet`
points descriptor 2 at a log file for the duration of a command while Python's
`sys.stderr` (tfqat's errors and warnings, progress bars, and Python's fatal
error reports) stays on the terminal, and turns down the Python-side loggers
and warnings of the stack below tfqat. Everything is restored on leaving.
"""

import contextlib
import faulthandler
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


@contextlib.contextmanager
def quiet() -> Iterator[Path]:
    """Within the block, native code's descriptor-2 output goes to a log file, whose path is yielded.

    The caller owns the file: it is left in place (delete it, or keep it when the command failed).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # INFO off; warnings and errors still reach the log file
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    rebind = _writes_to_descriptor_2(sys.stderr)  # else (e.g. under pytest's capsys) it is not ours to move
    python_stderr = sys.stderr
    faults_on = faulthandler.is_enabled()
    terminal = handle = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=_WARNING_MODULES)
            for name in _LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
            sys.stderr.flush()
            terminal = os.dup(2)
            handle, name = tempfile.mkstemp(prefix="tfqat-tensorflow-", suffix=".log")
            if rebind:
                # Left open on exit: a logging handler made inside the block may still hold it.
                sys.stderr = os.fdopen(
                    os.dup(terminal), "w", buffering=1, encoding=getattr(python_stderr, "encoding", None),
                    errors="backslashreplace",
                )
                faulthandler.enable(sys.stderr)  # a crash's Python traceback still reaches the terminal
            os.dup2(handle, 2)
            yield Path(name)
    finally:
        sys.stderr.flush()
        if terminal is not None:
            os.dup2(terminal, 2)
            os.close(terminal)
        if handle is not None:
            os.close(handle)
        if rebind:
            sys.stderr = python_stderr
            if faults_on:
                faulthandler.enable(python_stderr)
            else:
                faulthandler.disable()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _writes_to_descriptor_2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False
