"""The multi-seed accuracy study: every method against its own seed's float model, over several seeds.

One run on 593 test images cannot resolve half a point; the mean over seeds of
the paired difference to each seed's float model can. Each seed is an ordinary
pipeline run folder (`<out>/seed<N>`), so the float model of a seed is trained
once and every finished method is kept: adding a method costs only its own
runs, and an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Optional

from tfqat.files import write_atomic
from tfqat.flowers import study_record
from tfqat.flowers.decision import choose_default
from tfqat.flowers.methods import CONTROL, DEFAULT_QAT, FLOAT, METHODS, STAGES, method as find_method

SEEDS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class StudyOptions:
    """Options of `study`; seeds 0-4 are the project's protocol for every accuracy claim."""

    out: Path = Path("runs/study")
    data: Optional[str] = None
    weights: Optional[str] = "imagenet"
    seeds: tuple = SEEDS
    methods: tuple = (CONTROL, "ptq_tuned", DEFAULT_QAT)
    quick: bool = False
    publish_dir: Optional[Path] = None  # also write accuracy.md and accuracy.json here
    report_only: bool = False  # write the tables from what has finished; train and quantize nothing
    record_dir: Optional[Path] = None  # each seed's results, kept here too: a study resumes on another machine
    candidates: tuple = ()  # methods the decision rule chooses a default among, the incumbent first
    command: str = ""

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"StudyOptions.seeds={self.seeds!r} must name at least one seed, each once")
        if not self.methods:
            raise ValueError("StudyOptions.methods is empty; choose from " + ", ".join(METHODS))
        for name in self.methods:
            find_method(name)
        if self.candidates:
            outside = [name for name in self.candidates if name not in self.methods]
            peers = [name for name in self.candidates if METHODS[name].peer]
            if outside or peers or len(self.candidates) < 2:
                why = (f"{', '.join(outside)} not among its methods ({', '.join(self.methods)})" if outside else
                       f"{', '.join(peers)} has no Keras model to validate" if peers else "it needs two to choose between")
                raise ValueError(f"StudyOptions.candidates={self.candidates!r}: {why}")


def seed_folder(out, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def run_study(options: StudyOptions) -> dict:
    """Train (or reuse) each seed's float model, run each method on it, and write the study's tables."""
    from tfqat.flowers.pipeline import Run, RunOptions, log

    results, earlier = {}, {}
    control = CONTROL if CONTROL in options.methods else None
    for seed in options.seeds:
        run = Run(
            RunOptions(
                out=seed_folder(options.out, seed), data=options.data, weights=options.weights, seed=seed,
                quick=options.quick, stages=(FLOAT, *options.methods), command=options.command,
            )
        )
        record = None if options.record_dir is None else study_record.record_path(options.record_dir, seed)
        recorded = None if record is None else study_record.read_record(record)
        finished = []
        if recorded is not None:
            study_record.check_settings(recorded, run.settings(), record)
            finished = study_record.finished_stages(recorded)
        earlier_records = _earlier_records(options.record_dir, seed, run.settings())
        kept = study_record.kept_methods(earlier_records, control)
        elsewhere = bool(finished or kept) and not run.state.done(FLOAT)  # this machine has no model of the seed
        if options.report_only or (elsewhere and set(run.stages()) - {FLOAT} <= set(finished) | kept):
            run.load_data()  # the test split's labels, to pair each method with float
            if elsewhere:  # the record is the result
                log(f"seed {seed}: its results are the record's ({record})")
                run.adopt(recorded or {}, finished, save=False)
        else:
            if finished and _resume_from_record(run, recorded, finished, seed):
                if study_record.kept_methods([recorded], control):  # methods paired with their own float model
                    log(f"seed {seed}: kept as {study_record.keep_as_earlier(record, recorded)}")
                    earlier_records.append(recorded)
                    kept = study_record.kept_methods(earlier_records, control)
                study_record.write_record(run.out, record)  # the record follows this machine's float model
            if kept:
                log(f"seed {seed}: {', '.join(s for s in STAGES if s in kept)} kept from an earlier machine's "
                    "float model (paired with it and its control); not run here")
            run.run_stages(
                after_stage=None if record is None else lambda stage: study_record.write_record(run.out, record),
                only=[stage for stage in run.stages() if stage not in kept],
            )
            if record is not None:  # also a seed that finished before it was recorded
                study_record.write_record(run.out, record)
        results[seed] = run.results()
        earlier[seed] = [run.recorded_results(recorded) for recorded in earlier_records]
    study = summarize(options, results, earlier)
    write_study(study, Path(options.out))
    if options.publish_dir is not None:
        write_study(study, Path(options.publish_dir))
    return study


def _earlier_records(record_dir, seed: int, settings: dict) -> list:
    """The seed's records from earlier machines' float models, checked against the study's settings."""
    if record_dir is None:
        return []
    records = []
    for path in study_record.earlier_paths(record_dir, seed):
        recorded = study_record.read_record(path)
        study_record.check_settings(recorded, settings, path)
        records.append(recorded)
    return records


def _resume_from_record(run, recorded: dict, finished: list, seed: int) -> bool:
    """Take over the record's methods where this folder's float model is the recorded one (trained here first).

    Returns whether the float model trained here is another one: the record is then an earlier machine's.
    """
    from tfqat.flowers.pipeline import log

    missing = [stage for stage in finished if not run.state.done(stage)]
    if not missing:
        return False
    if not run.state.done(FLOAT):
        log(f"seed {seed}: recorded elsewhere; training its float model here to compare with the record")
        run.run_stages(only=(FLOAT,))
        missing = [stage for stage in missing if stage != FLOAT]
    same, why = study_record.same_float(recorded, run.out)
    if same:
        log(f"seed {seed}: {why}; adopted the record's {', '.join(missing) or 'nothing more'}")
        run.adopt(recorded, missing)
        return False
    log(f"seed {seed}: {why}; its finished methods stay with their own float model, and the record follows this folder")
    return True


def _seed_row(results: dict, name: str, earlier: list = ()) -> Optional[dict]:
    """One method on one seed, from that seed's run results, else from an earlier machine's (`earlier`, each
    paired within itself); None while the method has not run there."""
    row = _row(results, name)
    if row is not None:
        return row
    for recorded in earlier:
        row = _row(recorded, name)
        if row is not None:
            return {**row, "earlier_machine": True}
    return None


def _row(results: dict, name: str) -> Optional[dict]:
    model, float_model = results["models"].get(name), results["models"].get(FLOAT)
    if not model or not float_model:
        return None
    paired = results["versus_float"].get(name)
    controlled = (results.get("versus_control") or {}).get(name)
    training = model.get("training", {}).get(name, {})
    kept = training.get("kept_epoch")
    return {
        "accuracy": model["accuracy"],
        "float_accuracy": float_model["accuracy"],
        "difference": None if paired is None else paired["difference"],
        "only_float": None if paired is None else paired["only_reference"],
        "only_method": None if paired is None else paired["only_other"],
        "images": None if paired is None else paired["images"],
        # The same seed's float control (QAT's training without quantization), when it has run.
        "control_difference": None if controlled is None else controlled["difference"],
        "only_control": None if controlled is None else controlled["only_reference"],
        "only_method_vs_control": None if controlled is None else controlled["only_other"],
        "validation_accuracy": model.get("validation_accuracy"),
        "validation_loss": model.get("validation_loss"),
        "float_validation_accuracy": float_model.get("validation_accuracy"),
        "kept_epoch": kept,
        "agreement": (model.get("agreement") or {}).get("top1_agreement"),
        "verified": (model.get("verify") or {}).get("passed"),
        "seconds": results["stage_seconds"].get(name),
    }


def _spread(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": mean(values),
        "std": stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarize(options: StudyOptions, results: dict, earlier: Optional[dict] = None) -> dict:
    """The study's numbers: per method, per seed and their mean and spread.

    Args:
      results: seed -> that seed's run results (`Run.results()`: models, versus_float, stage_seconds).
      earlier: seed -> results of its earlier machines' records (`Run.recorded_results`), for the methods that
        `results` lacks.
    """
    earlier = earlier or {}
    methods = {}
    for name in options.methods:
        per_seed = {seed: _seed_row(results[seed], name, earlier.get(seed, ())) for seed in options.seeds}
        done = {seed: row for seed, row in per_seed.items() if row is not None}
        methods[name] = {
            "title": METHODS[name].title,
            "seeds": {str(seed): row for seed, row in done.items()},
            "complete": len(done) == len(options.seeds),
            **{
                key: _spread([row[key] for row in done.values()])
                for key in ("accuracy", "difference", "control_difference", "validation_accuracy", "validation_loss",
                            "agreement", "seconds")
            },
            "only_float": sum(row["only_float"] or 0 for row in done.values()),
            "only_method": sum(row["only_method"] or 0 for row in done.values()),
            # The control is a float model: nothing to verify.
            "verified": all(row["verified"] for row in done.values()) if done and not METHODS[name].control else None,
        }
    floats = {seed: results[seed]["models"].get(FLOAT) for seed in options.seeds}
    validation_images = {r.get("data", {}).get("split_sizes", {}).get("validation") for r in results.values()} - {None}
    if len(validation_images) > 1:
        raise ValueError(f"the seeds' validation splits differ in size ({sorted(validation_images)}): not one study")
    study = {
        "command": options.command,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seeds": list(options.seeds),
        "quick": options.quick,
        "float": {
            "seeds": {
                str(seed): {"accuracy": f["accuracy"], "validation_accuracy": f.get("validation_accuracy"),
                            "validation_loss": f.get("validation_loss")}
                for seed, f in floats.items() if f
            },
            "accuracy": _spread([f["accuracy"] for f in floats.values() if f]),
        },
        "methods": methods,
        "validation_images": next(iter(validation_images), None),
    }
    if options.candidates:
        study["default"] = _default(study, options)
    return study


def _default(study: dict, options: StudyOptions) -> dict:
    """The decision rule's choice among the candidates, or why it cannot choose yet."""
    try:
        decision = choose_default(study["methods"], options.candidates, study["validation_images"], len(options.seeds))
    except ValueError as error:
        return {"candidates": list(options.candidates), "chosen": None, "pending": str(error)}
    return {"candidates": list(options.candidates), "chosen": decision.chosen, "steps": list(decision.steps),
            "tied": decision.tied}


def _points(value, signed: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _whole(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _fraction(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_markdown(study: dict) -> str:
    """accuracy.md: one row per method (means over seeds), then one row per method and seed."""
    seeds = ", ".join(map(str, study["seeds"]))
    lines = [
        "# Accuracy study: each method against its own seed's float model",
        "",
        f"Seeds {seeds}; test split; every difference is paired (the same test images, each seed's int8 model "
        "against that seed's float model, and against that seed's float control: the float model trained on "
        f"for QAT's epochs without quantization, `{CONTROL}`), in points. Training choices are made on "
        "validation only.",
        "",
    ]
    if study.get("command"):
        lines += [f"Command: `{study['command']}`", ""]
    if study.get("quick"):
        lines += ["**Quick mode: a smoke test on a small subset, not a measurement.**", ""]
    floats = study["float"]
    float_accuracies = ", ".join(f"seed {s} {f['accuracy']:.4f}" for s, f in floats["seeds"].items())
    lines += [
        f"Float models: test accuracy {float_accuracies} (mean {_fraction(floats['accuracy']['mean'])}).",
        "",
        "| method | seeds | mean test accuracy | mean difference to float (points) | spread (min to max) "
        "| mean difference to the control (points) | images only float / only method right "
        "| mean validation accuracy | mean validation loss "
        "| Keras-LiteRT top-1 agreement (min) | verifier | mean time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in study["methods"].items():
        d = m["difference"]
        verified = {True: "passes", False: "fails", None: "-"}[m["verified"]]
        lines.append(
            f"| {name} | {len(m['seeds'])} | {_fraction(m['accuracy']['mean'])} | **{_points(d['mean'])}** "
            f"| {_points(d['min'])} to {_points(d['max'])} | {_points((m.get('control_difference') or {}).get('mean'))} "
            f"| {m['only_float']} / {m['only_method']} "
            f"| {_fraction(m['validation_accuracy']['mean'])} | {_fraction(m['validation_loss']['mean'])} "
            f"| {_fraction(m['agreement']['min'])} | {verified} | {_whole(m['seconds']['mean'])} |"
        )
    lines += ["", "## Per seed", ""]
    if any(row.get("earlier_machine") for m in study["methods"].values() for row in m["seeds"].values()):
        lines += [
            "\"(earlier machine)\": the method ran from the float model that an earlier machine trained for the "
            "seed (that machine was replaced before the seed finished, and another machine's kernels train "
            "another float model); its float column and its differences are that machine's float model and "
            "control.",
            "",
        ]
    lines += [
        "| method | seed | test accuracy | float | difference (points) | difference to the control (points) "
        "| only float / only method right "
        "| validation accuracy | validation loss | kept epoch | agreement | verifier | time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in study["methods"].items():
        for seed, row in m["seeds"].items():
            verified = {True: "passes", False: "fails", None: "-"}[row["verified"]]
            lines.append(
                f"| {name} | {seed}{' (earlier machine)' if row.get('earlier_machine') else ''} "
                f"| {row['accuracy']:.4f} | {row['float_accuracy']:.4f} "
                f"| {_points(row['difference'])} | {_points(row.get('control_difference'))} "
                f"| {row['only_float']} / {row['only_method']} "
                f"| {_fraction(row['validation_accuracy'])} | {_fraction(row['validation_loss'])} "
                f"| {row['kept_epoch'] if row['kept_epoch'] is not None else '-'} | {_fraction(row['agreement'])} "
                f"| {verified} | {_whole(row['seconds'])} |"
            )
    if default := study.get("default"):
        lines += ["", "## The default by the rule of docs/experiments.md (validation only)", ""]
        lines.append("Candidates: " + ", ".join(f"`{name}`" for name in default["candidates"]) + " (the first is the incumbent).")
        if default["chosen"] is None:
            lines.append(f"Not decided: {default['pending']}.")
        else:
            lines += ["", *(f"- {step}" for step in default["steps"]), "", f"**Chosen: `{default['chosen']}`.**"]
    for name, m in study["methods"].items():
        if not m["complete"]:
            lines += ["", f"{name}: not yet run on every seed; its means cover {len(m['seeds'])} seed(s)."]
    lines += ["", "Methods: " + "; ".join(f"`{name}`: {m['title']}" for name, m in study["methods"].items()) + "."]
    return "\n".join(lines) + "\n"


def write_study(study: dict, folder: Path) -> dict:
    """Write accuracy.json and accuracy.md into `folder`, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "accuracy.json", "markdown": folder / "accuracy.md"}
    write_atomic(paths["json"], (json.dumps(study, indent=2) + "\n").encode("utf-8"))
    write_atomic(paths["markdown"], render_markdown(study).encode("utf-8"))
    return paths
