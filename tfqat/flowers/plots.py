"""PNG plots of a pipeline run: accuracy per network, confusion matrices, per-channel weight ranges.

Each plot is a pure function of (part of) the results dict the pipeline saves
as results.json. The short network names and the network order live here and
are shared with the report, so plots and text label networks alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from tfqat.flowers.methods import FLOAT, METHODS
from tfqat.flowers.ranges import layer_range_stats

# Short names of the networks, in the order of the pipeline's stages (tfqat.flowers.methods).
NETWORKS = {FLOAT: "float", **{name: method.label for name, method in METHODS.items()}}
PEERS = frozenset(name for name, method in METHODS.items() if method.peer)
_KIND_COLORS = {"depthwise": "#d1495b", "conv": "#2f6db3", "dense": "#3c9d5d"}


def ordered_models(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The non-empty models of results["models"]: those of NETWORKS in its order first, then the rest."""
    models = results.get("models") or {}
    order = [k for k in NETWORKS if k in models] + [k for k in models if k not in NETWORKS]
    return {k: models[k] for k in order if models[k]}


_PHASES = {"head": "head", "fine_tune": "fine-tuning"}


def training_fits(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Every logged fit of the run, by a readable name ("float, head", "QAT int8", ...), in network order."""
    fits = {}
    for key, model in ordered_models(results).items():
        for fit, record in (model.get("training") or {}).items():
            if record.get("epochs"):
                name = NETWORKS.get(key, key)
                fits[f"{name}, {_PHASES.get(fit, fit)}" if fit != key else name] = record
    return fits


def format_ratio(value: float) -> str:
    """A max/min spread as text: whole with thousands separators from 100 on, else 3 significant digits."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def plot_accuracy(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Bar chart of the test accuracy of every network, with its 95 % interval and the reference values marked."""
    models = {k: m for k, m in ordered_models(results).items() if "accuracy" in m}
    reference = results.get("reference") or {}
    fig = _figure(max(6.0, 1.5 * len(models) + 2), 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(models))
    colors = ["#8c8c8c" if k == "float" else "#e08a2c" if k in PEERS else "#2f6db3" for k in models]
    accuracies = [m["accuracy"] for m in models.values()]
    bars = ax.bar(x, accuracies, color=colors, width=0.6)
    intervals = [m.get("accuracy_interval") for m in models.values()]
    shown = [i for i, interval in enumerate(intervals) if interval]
    if shown:
        below = [accuracies[i] - intervals[i][0] for i in shown]
        above = [intervals[i][1] - accuracies[i] for i in shown]
        ax.errorbar(shown, [accuracies[i] for i in shown], yerr=[below, above], fmt="none", ecolor="black",
                    capsize=4, linewidth=1, zorder=4, label="95 % interval")
    for bar, accuracy, interval in zip(bars, accuracies, intervals):
        top = interval[1] if interval else accuracy
        ax.annotate(f"{accuracy:.4f}", (bar.get_x() + bar.get_width() / 2, top),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=9)
    refs = [(i, reference[k]) for i, k in enumerate(models) if reference.get(k) is not None]
    if refs:
        ax.hlines([r for _, r in refs], [i - 0.4 for i, _ in refs], [i + 0.4 for i, _ in refs],
                  colors="black", linestyles="--", linewidth=2, zorder=3, label="reference")
    if refs or shown:
        ax.legend(loc="upper right", fontsize=9)
    ax.set_xticks(x, [NETWORKS.get(k, k).replace(" (peer)", "\n(peer)") for k in models], fontsize=9)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("test accuracy")
    ax.set_xlabel("network")
    ax.set_title("Flowers test accuracy: float vs int8 networks")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_training(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Validation loss and accuracy of every fit, epoch by epoch, with the epoch each fit kept circled."""
    fits = training_fits(results)
    if not fits:
        raise ValueError("results have no logged training epochs to plot")
    fig = _figure(10.0, 4.2)
    loss_ax, accuracy_ax = fig.subplots(1, 2)
    for name, record in fits.items():
        epochs = [row for row in record["epochs"] if "val_loss" in row]  # fits with validation data
        x = [row["epoch"] for row in epochs]
        for ax, metric in ((loss_ax, "val_loss"), (accuracy_ax, "val_accuracy")):
            values = [np.nan if row.get(metric) is None else row[metric] for row in epochs]
            (line,) = ax.plot(x, values, marker=".", label=name)
            kept = [i for i, row in enumerate(epochs) if row["epoch"] == record.get("kept_epoch")]
            if kept:
                ax.scatter([x[kept[0]]], [values[kept[0]]], s=90, facecolors="none",
                           edgecolors=line.get_color(), linewidths=1.5, zorder=3)
    loss_ax.set_ylabel("validation loss")
    accuracy_ax.set_ylabel("validation accuracy")
    for ax in (loss_ax, accuracy_ax):
        ax.set_xlabel("epoch of the fit")
        ax.grid(alpha=0.3)
    accuracy_ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Training: validation split, each fit's kept epoch circled", fontsize=10)
    return _save(fig, path)


def plot_confusion(confusion, classes: Iterable[str], path: str | os.PathLike, title: str) -> Path:
    """Confusion matrix (rows true, columns predicted) with the count in each cell, shaded by row share."""
    counts = np.asarray(confusion, dtype=np.int64)
    classes = list(classes)
    if counts.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion has shape {counts.shape} but there are {len(classes)} classes")
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    size = 2.0 + 0.9 * len(classes)
    fig = _figure(size + 1.2, size)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=10, color="white" if share[i, j] > 0.5 else "black")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=30, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _save(fig, path)


def plot_weight_ranges(weight_ranges: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Per layer, the spread of per-channel max|w| and the int8 levels per-tensor PTQ leaves its median channel.

    Top: min / median / max over live channels (log scale) and half the
    per-tensor power-of-two step (channels below it round to zero). Bottom:
    levels of 127 the median channel uses. Depthwise layers are highlighted.
    """
    stats = layer_range_stats(weight_ranges)
    if not stats:
        raise ValueError("weight_ranges has no layers with live (nonzero) weights to plot")
    fig = _figure(max(10.0, 0.2 * len(stats)), 8.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    x = np.arange(len(stats))
    colors = [_KIND_COLORS.get(s["kind"], "gray") for s in stats]
    for kind, color in _KIND_COLORS.items():
        idx = [i for i, s in enumerate(stats) if s["kind"] == kind]
        if idx:
            top.vlines(idx, [stats[i]["min"] for i in idx], [stats[i]["max"] for i in idx], color=color,
                       linewidth=3 if kind == "depthwise" else 1.5, label=f"{kind}: channel min to max")
            top.scatter(idx, [stats[i]["median"] for i in idx], color=color, s=14, zorder=3)
    top.scatter(x, [s["half_step"] for s in stats], marker="_", color="black", s=80, zorder=4,
                label="half the per-tensor step (below: rounds to 0)")
    top.set_yscale("log")
    low = min(min(s["min"], s["half_step"]) for s in stats)
    top.set_ylim(low / 4, max(s["max"] for s in stats) * 30)  # room for the labels below and the legend above
    for s in sorted(stats, key=lambda s: -s["ratio"])[:3]:
        top.annotate(f"{s['name']}\nmax/min {format_ratio(s['ratio'])}", (stats.index(s), s["min"]), xytext=(0, -6),
                     textcoords="offset points", ha="center", va="top", fontsize=7,
                     bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    dead = sum(s["dead"] for s in stats)
    top.set_ylabel("per-channel max |w| (folded)")
    top.legend(loc="upper center", ncol=3, fontsize=8)
    top.grid(axis="y", alpha=0.3)
    titles = []
    for kind in ("depthwise", "conv", "dense"):
        of_kind = [s for s in stats if s["kind"] == kind]
        if of_kind:
            w = max(of_kind, key=lambda s: s["ratio"])
            titles.append(f"{kind} up to {format_ratio(w['ratio'])} ({w['name']})")
    top.set_title("Spread of per-channel max|w| (max/min): " + ", ".join(titles), fontsize=10)
    bottom.bar(x, [s["median_levels"] for s in stats], color=colors)
    bottom.set_yscale("log", base=2)
    bottom.set_ylim(0.5, 128)
    bottom.set_ylabel("levels of 127, median channel")
    bottom.set_title("What per-tensor power-of-two int8 leaves the median channel of each layer", fontsize=10)
    bottom.grid(axis="y", alpha=0.3)
    bottom.set_xlim(-1, len(stats))
    bottom.set_xticks([])
    bottom.set_xlabel(f"layer, in network order ({len(stats)} layers; dots are medians; {dead} dead channels left out)")
    return _save(fig, path)


def _figure(width: float, height: float):
    # Figure + Agg canvas rather than pyplot: no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    fig.savefig(path, format="png")
    return path
