"""Application cases for `pytest.mark.parametrize`, those left to `--all-applications` marked (tests/conftest.py)."""

import pytest


def cases(names, left_out):
    """`names` in order; each one in `left_out` runs only with --all-applications."""
    unknown = set(left_out) - set(names)
    assert not unknown, f"not among the cases: {sorted(unknown)}"
    return [pytest.param(name, marks=pytest.mark.all_applications) if name in left_out else name for name in names]
