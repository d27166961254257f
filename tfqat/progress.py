"""Progress that fits where it goes: a redrawn bar on a terminal, a few plain lines in a log file or CI."""

from __future__ import annotations

import sys
import time

LINE_STEPS = 4  # without a terminal: a line at each quarter of the work, and one at the end


class _Lines:
    """tqdm's update/close for a stream that is not a terminal: a line per quarter, none per redraw."""

    def __init__(self, total: int, desc: str, unit: str, file):
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.done, self.next_line, self.start = 0, total / LINE_STEPS, time.perf_counter()

    def update(self, count: int = 1) -> None:
        self.done += count
        if self.done < self.total and self.done >= self.next_line:
            print(f"{self.desc}: {self.done}/{self.total} {self.unit}", file=self.file, flush=True)
            while self.next_line <= self.done:
                self.next_line += self.total / LINE_STEPS

    def close(self) -> None:
        seconds = time.perf_counter() - self.start
        print(f"{self.desc}: {self.done}/{self.total} {self.unit} in {seconds:.1f} s", file=self.file, flush=True)


class _Silent:
    def update(self, count: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, unit: str = "img", file=None):
    """A progress reporter with update(n) and close(): tqdm's bar on a terminal, `_Lines` otherwise, nothing
    for an empty `desc`."""
    file = file or sys.stderr
    if not desc:
        return _Silent()
    if getattr(file, "isatty", lambda: False)():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False, file=file)
    return _Lines(total, desc, unit, file)
