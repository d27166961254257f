"""The debugger's report: per-tensor rows, the worst tensors, markdown, CSV and a plot along the network."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfqat.quantization.kinds import kind_of_op

COLUMNS = (
    "kind", "op_index", "op", "layer", "tensor", "scale_exp", "scale_exp_max", "channels",
    "power_of_two", "zero_point", "clipped", "zeroed", "sqnr_db",
)


@dataclass(frozen=True)
class DebugReport:
    """Per-tensor quantization error of an int8 model against its float model.

    Attributes:
      rows: one dict per matched tensor (keys: COLUMNS), in execution order:
        the input, then per op its weights (kind "weight") and its output
        (kind "activation"). scale_exp..scale_exp_max is log2 of the scale(s),
        ints when power_of_two; clipped is the fraction of float values that
        saturate (see clipped_fraction); zeroed the fraction of nonzero float
        values held as the zero point; sqnr_db is inf when the int8 tensor equals
        the float one.
      images: how many images were run.
      unmatched: names of int8 tensors with no Keras counterpart (skipped).
      source: the TFLite model's path.
    """

    rows: list[dict]
    images: int
    unmatched: tuple[str, ...] = ()
    source: str = ""

    @property
    def activations(self) -> list[dict]:
        return [row for row in self.rows if row["kind"] == "activation"]

    @property
    def weights(self) -> list[dict]:
        return [row for row in self.rows if row["kind"] == "weight"]

    def worst(self, n: int = 5) -> list[dict]:
        """The n activations with the lowest SQNR, lowest first."""
        return sorted(self.activations, key=lambda row: row["sqnr_db"])[:n]

    def worst_drops(self, n: int = 5) -> list[dict]:
        """The n activations that lose the most SQNR against the activation before them in execution order
        (for MobileNetV2's chain, the layer's input): where the error enters, not where it has piled up.
        Each row is returned with `drop_db` added."""
        rows = self.activations
        drops = [
            {**row, "drop_db": before["sqnr_db"] - row["sqnr_db"]}
            for before, row in zip(rows, rows[1:])
            if math.isfinite(before["sqnr_db"]) and math.isfinite(row["sqnr_db"])
        ]
        return sorted(drops, key=lambda row: -row["drop_db"])[:n]

    def worst_weights(self, n: int = 5) -> list[dict]:
        """The n kernels with the lowest SQNR (their rounding alone), lowest first."""
        return sorted(self.weights, key=lambda row: row["sqnr_db"])[:n]

    def to_markdown(self) -> str:
        """Two tables, activations and weights, with a line saying what was matched and skipped."""
        lines = [
            f"Quantization error of {self.source or 'the int8 model'} against its float model on {self.images} "
            f"images: {len(self.activations)} activation and {len(self.weights)} weight tensors matched, "
            f"{len(self.unmatched)} tensors unmatched (skipped). Activation SQNR includes the error carried "
            "from earlier layers.",
        ]
        for title, rows in (("Activations", self.activations), ("Weights", self.weights)):
            lines += ["", f"## {title}", "", "| # | layer | op | scale | clipped | zeroed | SQNR (dB) |",
                      "|---:|---|---|---|---:|---:|---:|"]
            lines += [
                f"| {row['op_index']} | {row['layer']} | {row['op']} | {_scale_text(row)} | "
                f"{100 * row['clipped']:.2f} % | {100 * row['zeroed']:.2f} % | {row['sqnr_db']:.1f} |"
                for row in rows
            ]
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Every row, one line each, columns COLUMNS (an infinite SQNR is written 'inf')."""
        path = Path(path)
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def plot(self, path: str | os.PathLike) -> Path:
        """PNG of activation SQNR along the network (depthwise marked) above weight SQNR per layer."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        width = max(8.0, 0.14 * len(self.activations))
        fig = Figure(figsize=(width, 8.0), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        titles = (
            f"Activation SQNR: int8 tensors against the float layer outputs ({self.images} images)",
            "Weight SQNR: int8 kernels against the BN-folded float kernels",
        )
        for ax, title, rows in zip(fig.subplots(2, 1), titles, (self.activations, self.weights)):
            _plot_sqnr(ax, rows, title)
        path = Path(path)
        fig.savefig(path, format="png")
        return path


def _scale_text(row: dict) -> str:
    low, high = row["scale_exp"], row["scale_exp_max"]
    if not row["power_of_two"]:
        text = f"2^{low:.3f}..2^{high:.3f} (not 2^k)" if low != high else f"2^{low:.3f} (not 2^k)"
    else:
        text = f"2^{low}" if low == high else f"2^{low}..2^{high} ({row['channels']} ch)"
    return text + (f", zero point {row['zero_point']}" if row["zero_point"] else "")


def _plot_sqnr(ax, rows: list[dict], title: str) -> None:
    x = np.arange(len(rows))
    # An infinite SQNR (an exact tensor) has no height; it is drawn as a gap.
    sqnr = np.array([row["sqnr_db"] if math.isfinite(row["sqnr_db"]) else np.nan for row in rows])
    depthwise = np.array([_grouped(row["op"]) for row in rows], bool)
    ax.plot(x, sqnr, color="#8c8c8c", linewidth=0.8)
    ax.scatter(x[~depthwise], sqnr[~depthwise], s=14, color="#2f6db3", label="other ops", zorder=3)
    ax.scatter(x[depthwise], sqnr[depthwise], s=22, marker="v", color="#d1495b", label="depthwise", zorder=3)
    ax.set_xticks(x, [row["layer"] for row in rows], rotation=90, fontsize=5)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _grouped(op: str) -> bool:
    """Whether `op` is the TFLite op of a depthwise (one input channel per output channel) layer."""
    kind = kind_of_op(op)
    return kind is not None and kind.grouped
