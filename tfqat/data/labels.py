"""Labels files: one class name per line, line i naming class i (stored beside or inside exported models)."""

from __future__ import annotations

import os
from pathlib import Path

from tfqat.files import write_atomic


def write_labels(path: str | os.PathLike, classes: tuple[str, ...] | list[str]) -> None:
    """Writes one class name per line (UTF-8), atomically so a reader never sees half a file."""
    classes = list(classes)
    for name in classes:
        if not isinstance(name, str) or not name.strip() or "\n" in name or "\r" in name or name != name.strip():
            msg = f"Class names must be non-empty single-line strings without surrounding spaces, got {name!r}."
            raise ValueError(msg)
    if not classes or len(set(classes)) != len(classes):
        msg = f"Labels must be a non-empty list of distinct class names, got {classes!r}."
        raise ValueError(msg)
    write_atomic(path, "".join(f"{name}\n" for name in classes))


def read_labels(path: str | os.PathLike) -> tuple[str, ...]:
    """Reads a labels file written by write_labels; line i names class i."""
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        msg = f"Labels file {str(target)!r} does not exist."
        raise ValueError(msg) from None
    except UnicodeDecodeError:
        msg = f"Labels file {str(target)!r} is not UTF-8 text."
        raise ValueError(msg) from None
    classes = [line.strip() for line in text.splitlines()]
    while classes and not classes[-1]:
        classes.pop()
    if not classes or "" in classes:
        msg = f"Labels file {str(target)!r} is empty or has blank lines; expected one class name per line."
        raise ValueError(msg)
    if len(set(classes)) != len(classes):
        msg = f"Labels file {str(target)!r} names a class twice."
        raise ValueError(msg)
    return tuple(classes)
