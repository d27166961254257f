"""The integer reference executor against LiteRT and TFLite Micro: which tie rule each runtime follows per op,
and every tensor of the published models and of the seven Keras applications.

    python benchmarks/executor.py --out benchmarks/results --images /work/shared/data/flower_photos --count 256

Rules: two "op zoo" models (every op tfqat exports, each op's output a model output so XNNPACK exposes it
too; per-tensor and per-channel weights) run on random int8 inputs; every op of the executor is fed the
runtime's own input tensors ("local") under each tie rule, and a rule reproduces a runtime's op when no
element differs. Models: the published export/*int8*.tflite on --count photos (tfqat.data.images.folder_images:
evenly spaced in sorted file order), and the applications (benchmarks/applications.py, tiny, random
weights) on random inputs, every tensor compared "chained" with each runtime's measured profile
(tfqat.integer.profiles). Writes executor.md and executor.json; the tests (tests/test_integer_executor.py)
build the same zoo.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tfqat.integer.compare import RUNTIMES, RuntimeTensors, compare, run_local
from tfqat.integer.executor import IntegerModel
from tfqat.integer.rounding import RULES, LaneSplit

ROOT = Path(__file__).resolve().parents[1]
TABLE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MEAN", "MEAN (named)",
             "AVERAGE_POOL_2D", "LOGISTIC", "SOFTMAX", "QUANTIZE")


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
    outputs = [conv, linear, depthwise, strided, added, product, pooled, average, padded, joined, mean, mean4,
               dense, sigmoid, softmax, leftover, wide]
    qat = tfqat.quantize_model(keras.Model(inputs, outputs), per_channel=per_channel)
    tfqat.calibrate(qat, np.random.default_rng(seed + 1).uniform(-1, 1, (16, 12, 12, 6)).astype(np.float32))
    return tfqat.export_tflite(qat, path)


# LiteRT's built-in depthwise kernel: its vector loop's channels round one way, the channels left over another.
LANES, LANE_SPLIT = "double_half_up on 8-channel groups + tflite_double on the rest", LaneSplit(
    "double_half_up", 8, "tflite_double"
)


def random_inputs(program: IntegerModel, count: int, seed: int = 0) -> np.ndarray:
    [spec] = program.inputs
    return np.random.default_rng(seed).integers(-128, 128, (count, *spec.shape[1:])).astype(spec.dtype)


def _op_label(program: IntegerModel, op) -> str:
    return f"{op.name} (named)" if op.name == "MEAN" and program.steps[op.index][1] else op.name


def _fed(program: IntegerModel, op, theirs: dict) -> bool:
    """Whether the runtime exposed every input of the op (XNNPACK shows only the model's outputs)."""
    graph = program.graph
    return all(i in theirs or i in graph.inputs or graph.tensors[i].data is not None for i in op.inputs if i >= 0)


def measure_rules(paths, count: int) -> dict:
    """runtime -> op -> {rule or flavour: [elements, mismatched, ties]} with each op fed the runtime's inputs."""
    table: dict = {}
    candidates = [(rule, "litert") for rule in RULES] + [(LANES, "litert"), ("tflite_double", "micro")]
    for path in paths:
        programs = {c: IntegerModel(path, ties=LANE_SPLIT if c[0] == LANES else c[0], named=c[1]) for c in candidates}
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
                        if i not in theirs or not _fed(program, op, theirs):
                            continue
                        label = _op_label(program, op)
                        named = bool(program.steps[op.index][1])
                        key = flavour if named else rule
                        if named and rule != "tflite_double" or not named and flavour == "micro":
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
    """Every tensor of each model against each runtime, chained, with the runtime's measured profile."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--images", default="/work/shared/data/flower_photos")
    parser.add_argument("--count", type=int, default=256, help="photos per published model")
    parser.add_argument("--rule-inputs", type=int, default=64, help="random inputs per zoo model for the rule table")
    parser.add_argument("--app-inputs", type=int, default=32, help="random inputs per application")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        zoo = [build_zoo(tmp / "zoo_per_tensor.tflite"), build_zoo(tmp / "zoo_per_channel.tflite", per_channel=True)]
        rules = measure_rules(zoo, args.rule_inputs)
        zoo_rows = check_models(zoo, lambda p: random_inputs(p, args.rule_inputs))
        apps = _applications(tmp)
        app_rows = check_models(apps, lambda p: random_inputs(p, args.app_inputs))
    from tfqat.data.images import folder_images
    from tfqat.tflite.litert import describe, quantize

    published = sorted((ROOT / "export").glob("*int8*.tflite"))
    photos = folder_images(args.images, args.count)
    published_rows = check_models(published, lambda p: quantize(photos, describe(p.content).inputs[0]))
    result = {"rules": rules, "zoo": zoo_rows, "applications": app_rows, "published": published_rows,
              "photos": len(photos), "images": args.images}
    (out / "executor.json").write_text(json.dumps(result, indent=1))
    text = [
        "# The integer reference executor against LiteRT and TFLite Micro", "",
        f"Command: `python benchmarks/executor.py --out {args.out} --images {args.images} --count {args.count}`", "",
        "## Tie rule per runtime and op (op zoo, each op fed the runtime's own inputs)", "", rules_markdown(rules), "",
        "## Published models, every tensor", "", models_markdown(published_rows), "",
        "## The seven applications (tiny, random weights), every tensor", "", models_markdown(app_rows), "",
        "## The op zoo, every tensor", "", models_markdown(zoo_rows), "",
    ]
    (out / "executor.md").write_text("\n".join(text))
    print(f"wrote {out / 'executor.md'} and {out / 'executor.json'}")


if __name__ == "__main__":
    main()
