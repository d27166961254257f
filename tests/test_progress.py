"""Tests for tfqat.progress: a bar on a terminal, a few lines in a log."""

import io

from tfqat.progress import LINE_STEPS, progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_line_per_quarter_and_one_at_the_end_not_one_per_update():
    log = io.StringIO()
    bar = progress(593, "qat LiteRT", file=log)
    for _ in range(0, 593, 32):
        bar.update(min(32, 593 - bar.done))
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == LINE_STEPS
    assert lines[0] == "qat LiteRT: 160/593 img" and lines[-1].startswith("qat LiteRT: 593/593 img in ")


def test_a_terminal_gets_the_redrawn_bar_and_no_description_means_silence():
    terminal = _Terminal()
    bar = progress(10, "float LiteRT", file=terminal)
    bar.update(10)
    bar.close()
    assert "\r" in terminal.getvalue() and "float LiteRT" in terminal.getvalue()
    quiet = io.StringIO()
    silent = progress(10, "", file=quiet)
    silent.update(10)
    silent.close()
    assert quiet.getvalue() == ""
