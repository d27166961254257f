"""The published report of a pipeline run: report.md, results.json and PNG plots.

Everything here is a pure function of the results dict the pipeline saves as
results.json (see `write_report`), except `weight_ranges`, which reads a Keras
model to add the per-channel weight ranges that explain why per-tensor
power-of-two PTQ fails on MobileNetV2's depthwise layers. No number in the
report is made up: each is read from the dict or computed from its numbers
(totals, ratios, shares, per-tensor power-of-two steps), and sections whose data is missing are left out.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from tfqat.files import write_atomic

if TYPE_CHECKING:
    from tfqat._keras import keras

# Short names of the networks, in the order of the pipeline's stages.
NETWORKS = {
    "float": "float",
    "ptq": "PTQ int8",
    "qat": "QAT int8",
    "tflite_ptq": "TFLite PTQ int8 (peer)",
    "tfmot_qat": "TFMOT QAT int8 (peer)",
}
_PEERS = frozenset({"tflite_ptq", "tfmot_qat"})
_KIND_COLORS = {"depthwise": "#d1495b", "conv": "#2f6db3", "dense": "#3c9d5d"}
# tfqat.pow2's WEIGHT_QMAX and MIN_EXPONENT, repeated so that reports need no
# TensorFlow (a test checks they agree). Channels below the smallest scale
# tfqat uses are numerically zero: dead channels (BN gamma ~ 0) that would
# otherwise dominate every spread.
_WEIGHT_QMAX = 127
DEAD_EXPONENT = -24
_FAILURES_SHOWN = 20
_WORST_LAYERS = 8


# ---------------------------------------------------------------- report.md


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes results.json, the PNG plots and report.md into out_dir.

    results.json is written first and atomically, so a dict that cannot be
    serialized raises before anything else is written and leaves an older
    results.json untouched.

    Returns:
      Paths by name: "results", "report", "accuracy_plot", "confusion_<model>"
      for each model with a confusion matrix, "weight_ranges_plot" if the
      dict has weight ranges.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": write_json_atomic(results, out / "results.json")}
    models = _ordered_models(results)
    classes = list((results.get("data") or {}).get("classes") or [])
    if any("accuracy" in m for m in models.values()):
        paths["accuracy_plot"] = plot_accuracy(results, out / "accuracy.png")
    for key, model in models.items():
        if model.get("confusion") and classes:
            title = f"Confusion matrix, {NETWORKS.get(key, key)} (test split)"
            paths[f"confusion_{key}"] = plot_confusion(model["confusion"], classes, out / f"confusion_{key}.png", title)
    if (results.get("weight_ranges") or {}).get("layers"):
        paths["weight_ranges_plot"] = plot_weight_ranges(results["weight_ranges"], out / "weight_ranges.png")
    text = render_markdown(results, {name: path.name for name, path in paths.items()})
    paths["report"] = write_atomic(out / "report.md", text)
    return paths


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    """Writes data as JSON (indent 2) via a temp file and os.replace; numpy values become plain numbers."""
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    return write_atomic(path, text)


def render_markdown(results: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    """The text of report.md; plots maps plot names (as returned by write_report) to relative links."""
    plots = dict(plots or {})
    sections = [
        _header(results),
        _data_section(results.get("data")),
        _accuracy_section(results),
        _per_class_section(results),
        _agreement_section(results),
        _verify_section(results),
        _weight_section(results.get("weight_ranges")),
        _times_section(results.get("stage_seconds")),
        _plots_section(plots),
    ]
    return "\n\n".join(s for s in sections if s).rstrip() + "\n"


def _header(results: Mapping[str, Any]) -> str:
    lines = ["# tfqat: power-of-two int8 MobileNetV2 on flowers"]
    if "command" in results:
        lines += ["", "Command:", "", "```", str(results["command"]), "```"]
    run = [f"{name}: {results[key]}" for key, name in (("started", "started"), ("seed", "seed")) if key in results]
    if "quick" in results:
        run.append("quick run (reduced training; not comparable with the reference)" if results["quick"] else "full run")
    if run:
        lines += ["", " · ".join(run)]
    versions = results.get("versions") or {}
    if versions:
        lines += ["", "| Package | Version |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in versions.items()]
    return "\n".join(lines)


def _data_section(data: Mapping[str, Any] | None) -> str:
    if not data:
        return ""
    lines = ["## Data", ""]
    if "source" in data:
        lines.append(f"- Source: `{data['source']}`")
    if data.get("classes"):
        lines.append(f"- Classes ({len(data['classes'])}): " + ", ".join(data["classes"]))
    sizes = data.get("split_sizes") or {}
    if sizes:
        lines.append("- Split sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    if "image_contract" in data:
        lines.append(f"- Image contract: {data['image_contract']}")
    if "skipped" in data:
        skipped = data["skipped"] or []
        lines.append(f"- Skipped files: {len(skipped)}")
        lines += [f"  - `{s.get('source', '?')}`: {s.get('reason', '')}" for s in skipped]
    return "\n".join(lines)


def _accuracy_section(results: Mapping[str, Any]) -> str:
    models = {k: m for k, m in _ordered_models(results).items() if "accuracy" in m}
    if not models:
        return ""
    reference = results.get("reference") or {}
    lines = [
        "## Accuracy (test split)",
        "",
        "| Network | Accuracy | Reference | Model file | Evaluated with |",
        "|---|---|---|---|---|",
    ]
    for key, m in models.items():
        ref = f"{reference[key]:.4f}" if reference.get(key) is not None else "–"
        size = _size(m["size_bytes"]) if m.get("size_bytes") is not None else "–"
        lines.append(f"| {NETWORKS.get(key, key)} | {m['accuracy']:.4f} | {ref} | {size} | {_cell(m.get('engine', '–'))} |")
    lines += ["", "Networks:", ""]
    for key, m in models.items():
        file = f" (`{m['file']}`)" if m.get("file") else ""
        peer = " Peer method, for comparison." if key in _PEERS else ""
        lines.append(f"- **{NETWORKS.get(key, key)}**: {m.get('title', key)}{file}.{peer}")
    for key, m in models.items():
        if m.get("tflite_accuracy") is not None:
            lines.append(
                f"\nThe {NETWORKS.get(key, key)} model exported to TFLite scores {m['tflite_accuracy']:.4f} on the same split."
            )
    lines.append("\nSizes are of the .tflite files (1 KB = 1000 bytes). The reference column holds the published values.")
    return "\n".join(lines)


def _per_class_section(results: Mapping[str, Any]) -> str:
    models = {k: m for k, m in _ordered_models(results).items() if m.get("per_class")}
    if not models:
        return ""
    classes = list((results.get("data") or {}).get("classes") or [])
    # Test images per class: the row sums of any confusion matrix (all share the
    # split), whose rows follow data.classes.
    confusion = next((m["confusion"] for m in models.values() if m.get("confusion")), None)
    counts = dict(zip(classes, np.asarray(confusion).sum(axis=1).tolist())) if confusion and classes else {}
    for m in models.values():
        classes += [c for c in m["per_class"] if c not in classes]
    header = "| Class |" + (" Images |" if counts else "") + "".join(f" {NETWORKS.get(k, k)} |" for k in models)
    lines = ["## Per-class accuracy", "", header, "|---" * (header.count("|") - 1) + "|"]
    for c in classes:
        row = f"| {_cell(c)} |" + (f" {counts.get(c, '–')} |" if counts else "")
        row += "".join(f" {_number(m['per_class'].get(c))} |" for m in models.values())
        lines.append(row)
    return "\n".join(lines)


def _agreement_section(results: Mapping[str, Any]) -> str:
    parts = []
    for key, m in _ordered_models(results).items():
        a = m.get("agreement")
        if not a:
            continue
        name = NETWORKS.get(key, key)
        images = a.get("images", a.get("count"))
        lines = [f"## Keras vs TFLite agreement, {name}", ""]
        if "top1_agreement" in a:
            of = f" of {images} test images" if images is not None else ""
            lines.append(f"- Top-1 agreement: {a['top1_agreement']:.4f}{of}")
        if "max_steps" in a:
            lines.append(f"- Largest output difference: {a['max_steps']:.2f} quantization steps")
        if "mean_steps" in a:
            lines.append(f"- Mean output difference: {a['mean_steps']:.3f} steps")
        if "step" in a:
            lines.append(f"- One step (the TFLite output scale): {a['step']:.6g}")
        histogram = a.get("histogram") or {}
        if histogram:
            total = sum(histogram.values())
            lines += ["", "| Difference (steps, rounded) | Output values | Share |", "|---|---|---|"]
            for bin_name, n in histogram.items():
                share = f"{n / total:.2%}" if total else "–"
                lines.append(f"| {_cell(bin_name)} | {n} | {share} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _verify_section(results: Mapping[str, Any]) -> str:
    models = {k: m for k, m in _ordered_models(results).items() if m.get("verify")}
    if not models:
        return ""
    lines = ["## Shift-only int8 verification", "",
             "Each int8 model is checked for int8 tensors, power-of-two scales and requantizations that are shifts."]
    for key, m in models.items():
        v = m["verify"]
        failures = list(v.get("failures") or [])
        exceptions = list(v.get("named_exceptions", v.get("exceptions")) or [])
        verdict = "PASSED" if v.get("passed", not failures) else "FAILED"
        lines += ["", f"### {NETWORKS.get(key, key)}: {verdict}", ""]
        lines.append(f"- Failed checks: {len(failures)}")
        lines += [f"  - {_cell(f)}" for f in failures[:_FAILURES_SHOWN]]
        if len(failures) > _FAILURES_SHOWN:
            lines.append(f"  - ... and {len(failures) - _FAILURES_SHOWN} more (all in results.json)")
        lines.append(f"- Named exceptions (requantizations that are not shifts, by design): {len(exceptions)}")
        lines += [f"  - {_cell(e)}" for e in exceptions]
        if v.get("summary"):
            lines += ["", "<details><summary>verifier output</summary>", "", "```", v["summary"].rstrip(), "```"]
            lines += ["", "</details>"]
    return "\n".join(lines)


def _weight_section(weight_ranges: Mapping[str, Any] | None) -> str:
    stats = layer_range_stats(weight_ranges) if weight_ranges else []
    if not stats:
        return ""
    worst = sorted(stats, key=lambda s: -s["ratio"])[:_WORST_LAYERS]
    lines = [
        "## Per-channel weight ranges (folded float model)",
        "",
        "Per-tensor power-of-two PTQ gives a whole layer one weight step 2^k, the smallest with "
        "max|w| / 2^k <= 127, so a channel with max|w| far below the layer's largest uses few of the "
        "127 int8 levels, and one below half a step rounds to all zeros. Spread is max/min over "
        f"channels of max|w|; dead channels (max|w| < 2^{DEAD_EXPONENT}, BN gamma ~ 0) are left out. "
        "Layers with the largest spread:",
        "",
        "| Layer | Kind | Channels | Dead | min | median | max | max/min | Levels of the median channel | Rounded to zero |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in worst:
        lines.append(
            f"| {_cell(s['name'])} | {s['kind']} | {s['channels']} | {s['dead']} | {s['min']:.3g} | {s['median']:.3g} | "
            f"{s['max']:.3g} | {_ratio(s['ratio'])} | {s['median_levels']:.1f} | {s['zeroed']} |"
        )
    lines.append("")
    for kind in ("depthwise", "conv", "dense"):
        of_kind = [s for s in stats if s["kind"] == kind]
        if not of_kind:
            continue
        levels = float(np.median([s["median_levels"] for s in of_kind]))
        spread = float(np.median([s["ratio"] for s in of_kind]))
        zeroed = sum(s["zeroed"] for s in of_kind)
        live = sum(s["channels"] - s["dead"] for s in of_kind)
        lines.append(
            f"- {kind} ({len(of_kind)} layers): median spread {_ratio(spread)}, median channel uses "
            f"{levels:.1f} of 127 levels (median over layers); {zeroed} of {live} live channels round to zero."
        )
    return "\n".join(lines)


def _times_section(seconds: Mapping[str, float] | None) -> str:
    if not seconds:
        return ""
    lines = ["## Stage times", "", "| Stage | Seconds | Minutes |", "|---|---|---|"]
    lines += [f"| {_cell(k)} | {v:.1f} | {v / 60:.1f} |" for k, v in seconds.items()]
    total = sum(seconds.values())
    lines.append(f"| **total** | {total:.1f} | {total / 60:.1f} |")
    return "\n".join(lines)


def _plots_section(plots: Mapping[str, str]) -> str:
    images = {k: v for k, v in plots.items() if v.endswith(".png")}
    if not images:
        return ""
    labels = {name: name.removesuffix("_plot").replace("_", " ") for name in images}
    lines = ["## Plots", ""] + [f"- [{labels[name]}]({file})" for name, file in images.items()]
    for name, file in images.items():
        lines += ["", f"![{labels[name]}]({file})"]
    return "\n".join(lines)


# ---------------------------------------------------------------- plots


def plot_accuracy(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Bar chart of the test accuracy of every network, with the reference values marked."""
    models = {k: m for k, m in _ordered_models(results).items() if "accuracy" in m}
    reference = results.get("reference") or {}
    fig = _figure(max(6.0, 1.5 * len(models) + 2), 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(models))
    colors = ["#8c8c8c" if k == "float" else "#e08a2c" if k in _PEERS else "#2f6db3" for k in models]
    bars = ax.bar(x, [m["accuracy"] for m in models.values()], color=colors, width=0.6)
    for bar, m in zip(bars, models.values()):
        ax.annotate(f"{m['accuracy']:.4f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=9)
    refs = [(i, reference[k]) for i, k in enumerate(models) if reference.get(k) is not None]
    if refs:
        ax.hlines([r for _, r in refs], [i - 0.4 for i, _ in refs], [i + 0.4 for i, _ in refs],
                  colors="black", linestyles="--", linewidth=2, zorder=3, label="reference")
        ax.legend(loc="upper right", fontsize=9)
    ax.set_xticks(x, [NETWORKS.get(k, k).replace(" (peer)", "\n(peer)") for k in models], fontsize=9)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("test accuracy")
    ax.set_xlabel("network")
    ax.set_title("Flowers test accuracy: float vs int8 networks")
    ax.grid(axis="y", alpha=0.3)
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
        top.annotate(f"{s['name']}\nmax/min {_ratio(s['ratio'])}", (stats.index(s), s["min"]), xytext=(0, -6),
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
            titles.append(f"{kind} up to {_ratio(w['ratio'])} ({w['name']})")
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


def layer_range_stats(weight_ranges: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per layer: the spread of per-channel max|w| and what per-tensor power-of-two int8 does to it.

    Channels with max|w| < 2**DEAD_EXPONENT are counted as `dead` (BN gamma ~ 0)
    and left out of min, median and ratio. `step` is the per-tensor weight step
    2^k (smallest k with max / 2^k <= 127, as tfqat.pow2); `median_levels` is
    the median live channel's max|w| / step, the int8 levels it can use;
    `zeroed` counts live channels below half a step, which round to all zeros.
    Layers with no live channel are skipped.
    """
    stats = []
    for layer in weight_ranges.get("layers", []):
        values = np.asarray(layer["channel_max_abs"], dtype=np.float64)
        live = values[values >= 2.0**DEAD_EXPONENT]
        if live.size == 0:
            continue
        top = float(live.max())
        step = 2.0 ** _weight_exponent(top)
        stats.append({
            "name": layer["name"], "kind": layer["kind"], "channels": int(values.size),
            "dead": int(values.size - live.size), "min": float(live.min()), "median": float(np.median(live)),
            "max": top, "ratio": top / float(live.min()), "step": step, "half_step": step / 2,
            "median_levels": float(np.median(live)) / step, "zeroed": int(np.sum(live < step / 2)),
        })
    return stats


def _weight_exponent(max_abs: float) -> int:
    """Smallest integer k >= DEAD_EXPONENT with max_abs / 2**k <= 127, in float32 like tfqat.pow2, exactly."""
    ratio = max(float(np.float32(max_abs) / np.float32(_WEIGHT_QMAX)), 2.0**DEAD_EXPONENT)
    mantissa, exponent = math.frexp(ratio)  # ratio = mantissa * 2**exponent, mantissa in [0.5, 1)
    return exponent - 1 if mantissa == 0.5 else exponent


# ---------------------------------------------------------------- weight ranges of a model


def weight_ranges(model: keras.Model) -> dict[str, list[dict[str, Any]]]:
    """Per-output-channel max|w| of every Conv2D, DepthwiseConv2D and Dense layer, in layer order.

    Nested models are searched and wrappers (e.g. TFMOT's QuantizeWrapper) are
    unwrapped. Depthwise channel c = in * depth_multiplier + m, the order of the
    layer's outputs.

    Returns:
      {"layers": [{"name", "kind": "conv" | "depthwise" | "dense", "channel_max_abs": [float, ...]}]}
    """
    from tfqat._keras import keras

    layers = []
    for layer in _leaf_layers(model, keras):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kind, kernel = "depthwise", layer.depthwise_kernel
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            continue  # output channels sit on axis -2, and MobileNetV2 has none
        elif isinstance(layer, keras.layers.Conv2D):
            kind, kernel = "conv", layer.kernel
        elif isinstance(layer, keras.layers.Dense):
            kind, kernel = "dense", layer.kernel
        else:
            continue
        kernel = np.asarray(keras.backend.get_value(kernel))
        # Depthwise kernels are (h, w, in, dm): flattening the last two axes gives channel in * dm + m.
        channels = kernel.shape[-2] * kernel.shape[-1] if kind == "depthwise" else kernel.shape[-1]
        max_abs = np.abs(kernel.reshape(-1, channels)).max(axis=0)
        layers.append({"name": layer.name, "kind": kind, "channel_max_abs": [float(v) for v in max_abs]})
    return {"layers": layers}


def _leaf_layers(model, keras):
    for layer in model.layers:
        while isinstance(layer, keras.layers.Wrapper):
            layer = layer.layer
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer, keras)
        else:
            yield layer


# ---------------------------------------------------------------- helpers


def _ordered_models(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    models = results.get("models") or {}
    order = [k for k in NETWORKS if k in models] + [k for k in models if k not in NETWORKS]
    return {k: models[k] for k in order if models[k]}


def _size(size_bytes: float) -> str:
    if size_bytes >= 1e6:
        return f"{size_bytes / 1e6:.2f} MB"
    return f"{size_bytes / 1e3:.1f} KB"


def _ratio(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}"


def _cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"results.json cannot hold {type(value).__name__} value {value!r}; use numbers, strings, lists and dicts")


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
