"""The integer reference executor against LiteRT and TFLite Micro: which tie rule each runtime follows per op,
and every tensor of the published models and of the seven Keras applications.

    python benchmarks/executor.py --out benchmarks/results --images /work/shared/data/flower_photos --count 256

Rules: two "op zoo" models (every op tfqat exports, each op's output a model output so XNNPACK exposes it
too; per-tensor and per-channel weights) run on random int8 inputs; every op of the executor is fed the
runtime's own input tensors ("local") under each tie rule, and a rule reproduces a runtime's op when no
element differs. Models: the published export/*int8*.tflite on --count photos (tfqat.data.images.folder_images:
evenly spaced in sorted file order), and the applications (benchmarks/applications.py, tiny, random
weights) on random inputs, every tensor compared "chained" with each runtime's measured row of
tfqat.targets. Writes executor.md and executor.json; the tests (tests/test_integer_executor.py)
build the same zoo.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tfqat.integer.compare import RUNTIMES, RuntimeTensors, compare, fed, run_local
from tfqat.integer.executor import IntegerModel
from tfqat.targets import RULES, LaneSplit

ROOT = Path(__file__).resolve().parents[1]
TABLE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MEAN", "MEAN (keep_dims)",
             "MEAN (named)", "AVERAGE_POOL_2D", "LOGISTIC", "SOFTMAX", "QUANTIZE")


def build_zoo(path, per_channel: bool = False, seed: int = 0) -> Path:
    """A small model with every op of tfqat's exports, exported with tfqat; every op's output is a model output."""
    import tfqat
    from tfqat._keras import keras

    layers = keras.layers
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 6))
    conv = layers.ReLU(6.0, name="relu6")(layers.Conv2D(16, 3, padding="same", name="conv")(inputs))
    linear = layers.Conv2D(16, 1, name="conv_linear")(inputs)
    depthwise = layers.DepthwiseConv2D(3, padding="same", name="dw")(conv)  # 16 channels: two groups of 8
    strided = layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw_strided")(linear)
    added = layers.Add(name="add")([depthwise, linear])
    product = layers.Multiply(name="mul")([added, conv])
    pooled = layers.MaxPooling2D(2, name="maxpool")(product)
    average = layers.AveragePooling2D(3, strides=1, padding="same", name="avgpool")(pooled)
    padded = layers.ZeroPadding2D(1, name="pad")(average)
    joined = layers.Concatenate(name="concat")([pooled, strided])
    mean = layers.GlobalAveragePooling2D(name="mean")(joined)  # 6 x 6 = 36 values: not a power of two
    mean4 = layers.GlobalAveragePooling2D(name="mean_pow2")(layers.MaxPooling2D(3, name="maxpool3")(joined))
    dense = layers.Dense(24, name="dense")(mean)
    sigmoid = layers.Activation("sigmoid", name="sigmoid")(dense)
    reshaped = layers.Reshape((4, 6), name="reshape")(sigmoid)
    softmax = layers.Dense(10, activation="softmax", name="softmax")(layers.Flatten(name="flat")(reshaped))
    leftover = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw12")(inputs)  # 8 + 4 channels
    wide = layers.Dense(64, name="dense_wide")(layers.Flatten(name="flat_wide")(leftover))
    conv24 = layers.Conv2D(24, 1, name="conv24")(pooled)  # 24 channels: 16 + 8 left over
    kept = layers.GlobalAveragePooling2D(keepdims=True, name="mean_keep")(layers.MaxPooling2D(3, name="maxpool24")(conv24))
    gated = layers.Multiply(name="mul_broadcast")([conv24, kept])  # squeeze-and-excitation's broadcast MUL
    signed = layers.Conv2D(40, 3, strides=3, name="conv_strided")(inputs)  # 4 x 4, signed, 40 channels
    signed_mean = layers.GlobalAveragePooling2D(name="mean_signed")(signed)  # over 16, dimensions dropped
    outputs = [conv, linear, depthwise, strided, added, product, pooled, average, padded, joined, mean, mean4,
               dense, sigmoid, softmax, leftover, wide, conv24, kept, gated, signed, signed_mean]
    qat = tfqat.quantize_model(keras.Model(inputs, outputs), per_channel=per_channel)
    tfqat.calibrate(qat, np.random.default_rng(seed + 1).uniform(-1, 1, (16, 12, 12, 6)).astype(np.float32))
    return tfqat.export_tflite(qat, path)


# LiteRT's built-in depthwise and keep-dims MEAN kernels: their vector loop's channels round one way, the
# channels left over another.
LANE_SPLITS = {
    f"double_half_up in {lanes}-channel groups": LaneSplit("double_half_up", lanes, "tflite_double")
    for lanes in (8, 16)
}


def random_inputs(program: IntegerModel, count: int, seed: int = 0) -> np.ndarray:
    [spec] = program.inputs
    return np.random.default_rng(seed).integers(-128, 128, (count, *spec.shape[1:])).astype(spec.dtype)


def _op_label(program: IntegerModel, op) -> str:
    if op.name == "MEAN" and program.steps[op.index][1]:
        return "MEAN (named)"
    return "MEAN (keep_dims)" if op.name == "MEAN" and op.options.get("keepDims") else op.name


def measure_rules(paths, count: int) -> dict:
    """runtime -> op -> {rule or flavour: [elements, mismatched, ties]} with each op fed the runtime's inputs."""
    table: dict = {}
    candidates = [(rule, "litert") for rule in [*RULES, *LANE_SPLITS]] + [("tflite_double", "micro"), ("tflite_double", "xnnpack")]
    for path in paths:
        programs = {c: IntegerModel(path, ties=LANE_SPLITS.get(c[0], c[0]), named=c[1]) for c in candidates}
        first = programs[candidates[0]]
        inputs = random_inputs(first, count)
        wanted = [op.outputs[0] for op in first.graph.operators]
        for runtime in RUNTIMES:
            target = RuntimeTensors(first.content, runtime)
            for k in range(count):
                x = inputs[k : k + 1]
                theirs = target.run([x], wanted)
                for (rule, flavour), program in programs.items():
                    ours, ties = run_local(program, theirs, x)
                    for op in program.graph.operators:
                        i = op.outputs[0]
                        if i not in theirs or not fed(program, op, theirs):
                            continue
                        label = _op_label(program, op)
                        named = bool(program.steps[op.index][1])
                        key = flavour if named else rule
                        if named and rule != "tflite_double" or not named and flavour != "litert":
                            continue
                        cell = table.setdefault(runtime, {}).setdefault(label, {}).setdefault(key, [0, 0, 0])
                        cell[0] += theirs[i].size
                        cell[1] += int(np.count_nonzero(theirs[i].reshape(-1) != ours[i].reshape(-1)))
                        cell[2] += ties.get(i, 0)
    return table


def rules_markdown(table: dict) -> str:
    lines = ["| op | " + " | ".join(RUNTIMES) + " |", "| --- |" + " --- |" * len(RUNTIMES)]
    for op in TABLE_OPS:
        cells = []
        for runtime in RUNTIMES:
            results = table.get(runtime, {}).get(op)
            if not results:
                cells.append("-")
                continue
            exact = [k for k, (e, m, t) in results.items() if m == 0]
            elements = max(e for e, _, _ in results.values())
            ties = max(t for _, _, t in results.values())
            if exact:
                cells.append(f"{', '.join(exact)} ({elements} values, {ties} ties)")
            else:
                best, (e, m, _) = min(results.items(), key=lambda kv: kv[1][1])
                cells.append(f"not reproduced: closest {best}, {m} of {e} values differ")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_models(paths, inputs_of, runtimes=RUNTIMES) -> list[dict]:
    """Every tensor of each model against each runtime, chained, with the runtime's measured row of tfqat.targets."""
    rows = []
    for path in paths:
        for runtime in runtimes:
            program = IntegerModel(path, ties=runtime)
            inputs = inputs_of(program)
            start = time.perf_counter()
            agreement = compare(program, inputs, runtime)
            rows.append({
                "model": Path(path).name, "runtime": runtime, "inputs": len(inputs), "tensors": len(agreement.tensors),
                "elements": agreement.elements, "mismatched": agreement.mismatched,
                "tensors_differing": sum(1 for t in agreement.tensors if t.mismatched),
                "ties": sum(t.ties for t in agreement.tensors), "named": list(program.named),
                "differing": {t.op: t.mismatched for t in agreement.tensors if t.mismatched},
                "seconds": round(time.perf_counter() - start, 1),
            })
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "named"}), flush=True)
    return rows


def models_markdown(rows: list[dict]) -> str:
    lines = ["| model | runtime | inputs | tensors compared | elements | differing elements (tensors) | ties |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        differ = f"{r['mismatched']} ({r['tensors_differing']})"
        if r["differing"]:
            differ += ": " + ", ".join(f"{op} {n}" for op, n in r["differing"].items())
        lines.append(f"| {r['model']} | {r['runtime']} | {r['inputs']} | {r['tensors']} | {r['elements']} | {differ} | "
                     f"{r['ties']} |")
    return "\n".join(lines)


def _applications(folder: Path) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import applications

    import tfqat
    from tfqat._keras import keras

    paths = []
    for name, (build, size, (low, high)) in applications.NETWORKS.items():
        keras.utils.set_random_seed(0)
        model = build(size)
        applications.randomize_batch_norms(model)
        applications.sharpen_head(model)
        qat = tfqat.quantize_model(model)
        images = np.random.default_rng(1).uniform(low, high, (32, size, size, 3)).astype(np.float32)
        tfqat.calibrate(qat, images)
        paths.append(tfqat.export_tflite(qat, folder / f"{name}.tflite"))
    return paths


PARTS = ("rules", "zoo", "applications", "published")


def _merged(earlier: list[dict], rows: list[dict], models: list[str]) -> list[dict]:
    """The new rows, and the earlier rows of these models for the runtimes not measured now, in model order."""
    measured = {(r["model"], r["runtime"]) for r in rows}
    kept = [r for r in earlier if r["model"] in models and (r["model"], r["runtime"]) not in measured]
    order = {(m, rt): i for i, (m, rt) in enumerate((m, rt) for m in models for rt in RUNTIMES)}
    return sorted(kept + rows, key=lambda r: order.get((r["model"], r["runtime"]), len(order)))

NOTES = """How to read the tables:

- Each runtime is compared with the executor under that runtime's measured row (`tfqat.targets`,
  `tfqat execute MODEL --compare RUNTIME`). "Chained": both run the same input and every op output is
  compared, so a difference would propagate as on a device. "Differing elements" counts int8 values over
  all inputs; "ties" counts the requantized values whose accumulator lay exactly halfway between two
  output steps (where tie rules can disagree).
- XNNPACK runs the whole graph as one delegate node; LiteRT exposes only the model's outputs then, so
  only those are compared (tensors compared: 1). The MobileNetV2 flowers models end in a MEAN over 7 x 7 =
  49 values, which XNNPACK scales in float32 (the "xnnpack" flavour of the named ops). The applications at
  32-64 px average over powers of two.
- Rule table: every op of the executor is fed the runtime's own input tensors ("local"), under every
  rule; a cell lists the rules with which no value differs, with how many values and exact ties were
  compared (a rule left out of a cell was contradicted by the data). XNNPACK cells count only ops whose
  inputs are model outputs. The rules: `tflite_double` is TFLite's MultiplyByQuantizedMultiplier with
  the Q31 multiplier 0.5 (x / 2 rounded half up, then / 2^(n-1) half away from zero); `double_half_up`
  rounds the second step half up too; `half_away_from_zero`, `half_up`, `half_even` round once.
  `double_half_up in 8-channel groups` (or 16) rounds the channels a kernel's vector loop takes, whole
  groups of 8 (16), by `double_half_up` and the channels left over by `tflite_double`.
- ADD: TFLite's kernels scale both inputs up by 2^20 before the output's multiplier, so the first halving
  is exact: `tflite_double` and `half_away_from_zero` coincide (one rounding of the exact sum).
- FULLY_CONNECTED differs between LiteRT's reference kernel (it requantizes in double precision with
  round(): one rounding, half away from zero) and TFLite Micro's (`tflite_double`); they disagree where
  the first halving lands on a tie (14271 / 2^7 = 111.49: reference 111, TFLite Micro 112).
- MEAN on LiteRT's built-in kernels: the optimized MEAN runs only for a 4-D MEAN over height and width
  that keeps its dimensions (squeeze-and-excitation), and rounds in 16-channel groups; every other MEAN
  (tfqat's global average pooling drops the dimensions) runs the reference kernel, `tflite_double`.
  tfqat.targets' builtin row holds the first under its own key ("MEAN keep_dims"), the second as its "*" rule.
- LOGISTIC: LiteRT (reference and built-in) looks up a table of float32 1 / (1 + exp(-x)); TFLite Micro
  computes gemmlowp's fixed-point logistic; they differ on about 1 value in 1,000.
- QUANTIZE (int8 to int8) in the zoo rescales by a power of two >= 1: no rounding, every rule agrees.
- MEAN (named): a MEAN over a count that is not a power of two, the sum times a Q31 multiplier on LiteRT's
  kernels and TFLite Micro ("litert", "micro"), the raw sum times a float32 scale on XNNPACK ("xnnpack").
- Not reproduced or not measured: LiteRT built-in's MEAN that keeps its dimensions over a
  count that is not a power of two (its optimized kernel folds the count into its own multiplier: no
  export here has one); uint8 models and float inputs (tfqat exports neither)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--images", default="/work/shared/data/flower_photos")
    parser.add_argument("--count", type=int, default=256, help="photos per published model")
    parser.add_argument("--rule-inputs", type=int, default=64, help="random inputs per zoo model for the rule table")
    parser.add_argument("--app-inputs", type=int, default=32, help="random inputs per application")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="the runtimes to compare (the rows of "
                        "others are kept from an earlier executor.json)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which of {','.join(PARTS)} to (re)measure; the "
                        "others are kept from an earlier executor.json in --out")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if set(parts) - set(PARTS):
        parser.error(f"--parts {args.parts!r}: choose from {','.join(PARTS)}")
    runtimes = tuple(r for r in args.runtimes.split(",") if r)
    if not runtimes or set(runtimes) - set(RUNTIMES):
        parser.error(f"--runtimes {args.runtimes!r}: choose from {','.join(RUNTIMES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = out / "executor.json"
    result = json.loads(earlier.read_text()) if earlier.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "rules" in parts or "zoo" in parts:
            zoo = [build_zoo(tmp / "zoo_per_tensor.tflite"), build_zoo(tmp / "zoo_per_channel.tflite", per_channel=True)]
            if "rules" in parts:
                result["rules"] = measure_rules(zoo, args.rule_inputs)
            if "zoo" in parts:
                rows = check_models(zoo, lambda p: random_inputs(p, args.rule_inputs), runtimes)
                result["zoo"] = _merged(result.get("zoo", []), rows, [p.name for p in zoo])
        if "applications" in parts:
            apps = _applications(tmp)
            rows = check_models(apps, lambda p: random_inputs(p, args.app_inputs), runtimes)
            result["applications"] = _merged(result.get("applications", []), rows, [p.name for p in apps])
    if "published" in parts:
        from tfqat.data.images import folder_images
        from tfqat.tflite.litert import describe, quantize

        published = sorted((ROOT / "export").glob("*int8*.tflite"))
        photos = folder_images(args.images, args.count)
        rows = check_models(published, lambda p: quantize(photos, describe(p.content).inputs[0]), runtimes)
        result["published"] = _merged(result.get("published", []), rows, [p.name for p in published])
        result["photos"] = {"folder": args.images, "count": len(photos)}
    earlier.write_text(json.dumps(result, indent=1))
    sections = [
        ("Tie rule per runtime and op (op zoo, each op fed the runtime's own inputs)", "rules", rules_markdown),
        ("Published models, every tensor", "published", models_markdown),
        ("The seven applications (tiny, random weights), every tensor", "applications", models_markdown),
        ("The op zoo, every tensor", "zoo", models_markdown),
    ]
    photos = result.get("photos", {})
    text = [
        "# The integer reference executor against LiteRT and TFLite Micro", "",
        "Command: `python benchmarks/executor.py --out benchmarks/results` (defaults: `--images "
        "/work/shared/data/flower_photos --count 256 --rule-inputs 64 --app-inputs 32`; `--parts` re-measures "
        "some parts and keeps the others). ai-edge-litert 2.3.0, tflite-micro 0.dev20261023182759, x86-64.", "",
        f"Published models: {photos.get('count', '?')} photos from {photos.get('folder', '?')}, evenly spaced in "
        "sorted file order (tfqat.data.images.folder_images), quantized with each model's input scale.", "",
        NOTES, "",
    ]
    for title, key, render in sections:
        if key in result:
            text += [f"## {title}", "", render(result[key]), ""]
    (out / "executor.md").write_text("\n".join(text))
    print(f"wrote {out / 'executor.md'} and {earlier}")


if __name__ == "__main__":
    main()
