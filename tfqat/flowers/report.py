"""The published report of a pipeline run: report.md, results.json and the PNG plots of `tfqat.flowers.plots`.

Everything here is a pure function of the results dict the pipeline saves as
results.json (see `write_report`); its per-channel weight ranges come from
`tfqat.flowers.ranges.weight_ranges`. No number in the report is made up: each is read
from the dict or computed from its numbers (totals, ratios, shares, per-tensor
power-of-two steps), and sections whose data is missing are left out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tfqat.files import write_atomic
from tfqat.flowers.plots import (
    NETWORKS,
    PEERS,
    format_ratio,
    ordered_models,
    plot_accuracy,
    plot_confusion,
    plot_training,
    plot_weight_ranges,
    training_fits,
)
from tfqat.flowers.ranges import DEAD_EXPONENT, layer_range_stats

_FAILURES_SHOWN = 20
_WORST_LAYERS = 8


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes results.json, the PNG plots and report.md into out_dir.

    results.json is written first and atomically, so a dict that cannot be
    serialized raises before anything else is written and leaves an older
    results.json untouched.

    Returns:
      Paths by name: "results", "report", "accuracy_plot", "confusion_<model>"
      for each model with a confusion matrix, "training_plot" if the dict has
      logged training epochs, "weight_ranges_plot" if it has weight ranges.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": write_json_atomic(results, out / "results.json")}
    models = ordered_models(results)
    classes = list((results.get("data") or {}).get("classes") or [])
    if any("accuracy" in m for m in models.values()):
        paths["accuracy_plot"] = plot_accuracy(results, out / "accuracy.png")
    for key, model in models.items():
        if model.get("confusion") and classes:
            title = f"Confusion matrix, {NETWORKS.get(key, key)} (test split)"
            paths[f"confusion_{key}"] = plot_confusion(model["confusion"], classes, out / f"confusion_{key}.png", title)
    if training_fits(results):
        paths["training_plot"] = plot_training(results, out / "training.png")
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
        _not_run_section(results.get("not_run")),
        _versus_float_section(results),
        _versus_control_section(results),
        _per_class_section(results),
        _agreement_section(results),
        _verify_section(results),
        _training_section(results),
        _weight_section(results.get("weight_ranges")),
        _debug_section(results),
        _times_section(results.get("stage_seconds")),
        _plots_section(plots),
    ]
    return "\n\n".join(s for s in sections if s).rstrip() + "\n"


def _not_run_section(not_run) -> str:
    """The peers that could not take the run's network, each with the one line its tool gave."""
    if not not_run:
        return ""
    return "\n".join(["Not run:", ""] + [f"- `{name}`: {reason}" for name, reason in not_run.items()])


def _header(results: Mapping[str, Any]) -> str:
    lines = [f"# tfqat: power-of-two int8 {results.get('options', {}).get('model', 'MobileNetV2')} on flowers"]
    if "command" in results:
        lines += ["", "Command:", "", "```", str(results["command"]), "```"]
    fields = (("started", "started"), ("written", "report written"), ("seed", "seed"))
    run = [f"{name}: {results[key]}" for key, name in fields if results.get(key) is not None]
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
    models = {k: m for k, m in ordered_models(results).items() if "accuracy" in m}
    if not models:
        return ""
    reference = results.get("reference") or {}
    lines = [
        "## Accuracy (test split)",
        "",
        "| Network | Accuracy | 95 % interval | Reference | Validation (Keras) | Model file | Evaluated with |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, m in models.items():
        ref = _number(reference.get(key))
        interval = _interval(m.get("accuracy_interval"))
        size = _size(m["size_bytes"]) if m.get("size_bytes") is not None else "–"
        val = _number(m.get("validation_accuracy"))
        lines.append(
            f"| {NETWORKS.get(key, key)} | {m['accuracy']:.4f} | {interval} | {ref} | {val} | {size} | "
            f"{_cell(m.get('engine', '–'))} |"
        )
    lines += ["", "Networks:", ""]
    for key, m in models.items():
        file = f" (`{m['file']}`)" if m.get("file") else ""
        peer = " Peer method, for comparison." if key in PEERS else ""
        lines.append(f"- **{NETWORKS.get(key, key)}**: {m.get('title', key)}{file}.{peer}")
    for key, m in models.items():
        if m.get("tflite_accuracy") is not None:
            lines.append(
                f"\nThe {NETWORKS.get(key, key)} model exported to TFLite scores {m['tflite_accuracy']:.4f} on the same split."
            )
    lines.append(
        "\nSizes are of the .tflite files (1 KB = 1000 bytes). The interval is Wilson's 95 % score interval: "
        "the accuracies a split of this size is consistent with. The reference column holds the published values. "
        "Validation is the Keras model's accuracy on the validation split, the only split training choices "
        "were made on (the QAT and PTQ Keras models round as LiteRT does)."
    )
    return "\n".join(lines)


def _versus_float_section(results: Mapping[str, Any]) -> str:
    return _paired_table(results, "versus_float", "## Against the float model (test split, paired)", "float")


def _versus_control_section(results: Mapping[str, Any]) -> str:
    table = _paired_table(
        results, "versus_control", "## Against the float control (test split, paired)", "the control"
    )
    if not table:
        return ""
    return table + (
        "\n\nThe control is the float model trained on for QAT's epochs, with QAT's schedule, learning rate, "
        "augmentation and epoch selection, without quantization. QAT trains longer than the float model it "
        "starts from, so \"QAT beats float\" may be training, not quantization; the difference to the control "
        "is what quantization costs."
    )


def _paired_table(results: Mapping[str, Any], key: str, title: str, reference: str) -> str:
    versus = results.get(key) or {}
    compared = {k: versus[k] for k in ordered_models(results) if k in versus}
    if not compared:
        return ""
    lines = [
        title,
        "",
        f"| Network | Difference (points) | 95 % interval (points) | Only {reference} right | Only this model right "
        "| McNemar p |",
        "|---|---|---|---|---|---|",
    ]
    for key, c in compared.items():
        low, high = c["interval"]
        lines.append(
            f"| {NETWORKS.get(key, key)} | {100 * c['difference']:+.2f} | {100 * low:+.2f} to {100 * high:+.2f} | "
            f"{c['only_reference']} | {c['only_other']} | {c['mcnemar_p']:.3g} |"
        )
    if key != "versus_float":
        return "\n".join(lines)
    lines.append(
        "\nEach model against the float model on the same test images: only the images exactly one of the two "
        "gets right tell them apart. The interval is Agresti and Min's adjusted Wald interval of a paired "
        "difference; McNemar's exact p is the chance of a split of those images at least this uneven if both "
        "models were equally accurate. The exact test is the more cautious of the two: with few such images the "
        "interval may leave out 0 while p stays above 0.05. A target such as \"within 0.5 points of float\" "
        "that lies inside the interval is one this split cannot confirm or refute."
    )
    return "\n".join(lines)


def _per_class_section(results: Mapping[str, Any]) -> str:
    models = {k: m for k, m in ordered_models(results).items() if m.get("per_class")}
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
    for key, m in ordered_models(results).items():
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
    models = {k: m for k, m in ordered_models(results).items() if m.get("verify")}
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


def _training_section(results: Mapping[str, Any]) -> str:
    fits = training_fits(results)
    if not fits:
        return ""
    lines = [
        "## Training",
        "",
        "| Fit | Epochs | Kept epoch | loss | accuracy | val_loss | val_accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, record in fits.items():
        kept = next((row for row in record["epochs"] if row["epoch"] == record.get("kept_epoch")), {})
        values = " | ".join(_number(kept.get(k)) for k in ("loss", "accuracy", "val_loss", "val_accuracy"))
        lines.append(f"| {_cell(name)} | {len(record['epochs'])} | {record.get('kept_epoch') or '–'} | {values} |")
    lines.append(
        "\nThe values are those of the kept epoch, whose weights the fit ended with: the one with the lowest "
        "validation loss, or the last when the run keeps last epochs. Training loss and accuracy are Keras' "
        "running means over the augmented training images of that epoch. Every epoch of every fit is in "
        "results.json and in `history/` in the run folder."
    )
    if (results.get("options") or {}).get("qat_distillation"):
        lines.append(
            "\nThe QAT fits learned the float model's class probabilities (distillation): their training loss and "
            "accuracy are against those, their validation values against the labels."
        )
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
            f"{s['max']:.3g} | {format_ratio(s['ratio'])} | {s['median_levels']:.1f} | {s['zeroed']} |"
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
            f"- {kind} ({len(of_kind)} layers): median spread {format_ratio(spread)}, median channel uses "
            f"{levels:.1f} of 127 levels (median over layers); {zeroed} of {live} live channels round to zero."
        )
    return "\n".join(lines)


def _debug_section(results: Mapping[str, Any]) -> str:
    debugged = {key: m["debug"] for key, m in ordered_models(results).items() if m.get("debug")}
    if not debugged:
        return ""
    lines = [
        "## Where the PTQ models lose precision (tfqat debug)",
        "",
        "Each int8 tensor of the LiteRT model against the float model's tensor it holds (the model it was made "
        "from: equalized for the equalized methods), on calibration images: SQNR in dB (higher is better), the "
        "fraction of values that clip and of nonzero values held as zero. A kernel's SQNR is its rounding alone; "
        "an activation's includes the error carried from every layer before it, so the layer where the error "
        "enters is the one whose SQNR drops most against the activation before it.",
    ]
    for key, debug in debugged.items():
        lines += ["", f"### {NETWORKS.get(key, key)} ({debug['images']} images; all tensors: [{debug['table']}]({debug['table']}), "
                  f"plot: [{debug['plot']}]({debug['plot']}))", "",
                  "| Largest SQNR drops | op | dB lost | Worst kernels | op | SQNR (dB) | zeroed | Worst activations | op | SQNR (dB) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        drops = debug.get("largest_drops") or [None] * len(debug["worst_weights"])  # runs before drops were kept
        for drop, weight, activation in zip(drops, debug["worst_weights"], debug["worst_activations"]):
            dropped = "| | |" if drop is None else f"{_cell(drop['layer'])} | {drop['op']} | {drop['drop_db']:.1f} |"
            lines.append(
                f"| {dropped} {_cell(weight['layer'])} | {weight['op']} | {weight['sqnr_db']:.1f} | "
                f"{100 * weight['zeroed']:.1f} % | {_cell(activation['layer'])} | {activation['op']} | "
                f"{activation['sqnr_db']:.1f} |"
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


def _size(size_bytes: float) -> str:
    if size_bytes >= 1e6:
        return f"{size_bytes / 1e6:.2f} MB"
    return f"{size_bytes / 1e3:.1f} KB"


def _interval(bounds: Any) -> str:
    return "–" if not bounds else f"{bounds[0]:.4f} to {bounds[1]:.4f}"


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
