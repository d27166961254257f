"""The `tfqat` command line: one small function pair per sub-command.

To add a sub-command, write `_add_<name>(subparsers)` (its arguments, and
`set_defaults(handler=_<name>)`) and `_<name>(args) -> int`, and list the adder
in _SUBCOMMANDS. Handlers import their modules lazily so `tfqat --help` and
`tfqat verify` start without loading TensorFlow.

Exit codes: 0 success, 1 a check failed, 2 unusable input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Sequence

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


def _add_verify(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check that a .tflite model is fully int8 with power-of-two (shift-only) requantization",
        description="Check that a .tflite model is fully int8, every scale is a power of two, "
        "weights have zero point 0, biases are int32 with scale input x weight, and every "
        "requantization is a shift. Ops that are inherently not shifts (MEAN, SOFTMAX, ...) "
        "are listed as named exceptions.",
    )
    parser.add_argument("path", help="the .tflite file")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--verbose", action="store_true", help="add the per-op table and every failure")
    parser.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from tfqat.verify import verify_tflite

    report = verify_tflite(args.path)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary(verbose=args.verbose))
    return EXIT_OK if report.passed else EXIT_FAILED


_SUBCOMMANDS: tuple[Callable, ...] = (_add_verify,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfqat", description="Power-of-two int8 QAT for Keras MobileNetV2.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tfqat` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_UNUSABLE
    # TensorFlow and LiteRT log to stderr at import; keep stderr for our one-line errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfqat.litert import TFLiteModelError

    try:
        return args.handler(args)
    except (TFLiteModelError, OSError) as error:
        print(f"tfqat {args.command}: error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
