"""The published .espdl files checked with Espressif's esp-ppq, as tests/test_espdl_ppq.py checks small models.

    python benchmarks/espdl_check.py --work runs/espdl --images /work/shared/data/flower_photos --out benchmarks/results

Needs the `espdl` extra (esp-ppq, torch). For each export/*.espdl and the int8 file it was made from
(`benchmarks/espdl.py` keeps them in --work): (a) the differences in meaning between it and the file esp-ppq
writes for the same float graph with tfqat's exponents imposed (nodes, attributes, initializers with every
byte, variables, inputs, outputs, test values); (b) esp-ppq's executor in the chip's mode against tfqat's
integer reference on --count photos; (c) the file read with Espressif's generated readers, its embedded test
output against the reference. Writes espdl_check.md and espdl_check.json.

    python benchmarks/espdl_check.py --applications --out benchmarks/results

checks the seven Keras applications (random weights, benchmarks/applications.py's sizes) quantized for each
chip the same way, with the Keras model for the chip against the integer reference: espdl_applications.md.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def check(espdl: Path, tflite: Path, images: np.ndarray, keras_steps: np.ndarray | None = None) -> dict:
    """(a), (b), (c) for one file; with `keras_steps` (the Keras model's int8 outputs on `images`), also
    the output elements where the integer reference differs from them."""
    import espdl_ppq

    from tfqat.espdl.convert import to_espdl
    from tfqat.integer.executor import IntegerModel
    from tfqat.integer.model import read_graph
    from tfqat.tflite import litert

    ours = espdl_ppq.decode(espdl)
    chip = ours["metadata"]["target"]
    [test_input] = ours["test_inputs"].values()
    [test_output] = ours["test_outputs"].values()
    reference = IntegerModel(tflite, ties=chip)
    embedded = reference.run(test_input["values"].reshape(test_input["dims"])).outputs[0].reshape(-1)
    with tempfile.TemporaryDirectory() as folder:
        run = espdl_ppq.PPQRun(to_espdl(read_graph(tflite), chip, name="tfqat"), chip, Path(folder))
        theirs = espdl_ppq.decode(run.export(test_input["values"].reshape(test_input["dims"])))
        quantized = litert.quantize(images, litert.describe(tflite).inputs[0])
        got = np.stack([outputs[0][0] for outputs in run.run(quantized)])
    want = reference.run(quantized).outputs[0].reshape(got.shape)
    differences = espdl_ppq.differences(ours, theirs)
    row = {} if keras_steps is None else {
        "keras_mismatched": int(np.count_nonzero(want != np.reshape(keras_steps, want.shape)))}
    return row | {
        "file": espdl.name, "chip": chip, "nodes": len(ours["nodes"]), "initializers": len(ours["initializers"]),
        "differences": differences, "images": len(images),
        "executor_mismatched": int(np.count_nonzero(got != want)), "elements": int(got.size),
        "test_output_equal": bool(np.array_equal(test_output["values"], embedded)),
    }


def applications(out: Path, count: int) -> None:
    """Each Keras application quantized for each chip: Keras model == integer reference, then (a), (b), (c)."""
    import time

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import applications as apps

    import tfqat
    from tfqat._keras import keras
    from tfqat.espdl.export import export_espdl
    from tfqat.tflite import litert

    rows = []
    for name, (build, size, (low, high)) in apps.NETWORKS.items():
        for chip in ("esp32s3", "esp32p4"):
            start = time.time()
            keras.utils.set_random_seed(0)
            model = build(size, classifier_activation=None)
            apps.randomize_batch_norms(model)
            apps.sharpen_head(model)
            qat = tfqat.quantize_model(model, target=chip)
            rng = np.random.default_rng(1)
            tfqat.calibrate(qat, rng.uniform(low, high, (apps.CALIBRATION_IMAGES, size, size, 3)).astype(np.float32))
            images = rng.uniform(low, high, (count, size, size, 3)).astype(np.float32)
            with tempfile.TemporaryDirectory() as folder:
                tflite = tfqat.export_tflite(qat, Path(folder) / "model.tflite")
                io = litert.describe(tflite)
                keras_steps = np.round(qat.predict(images, verbose=0) / io.outputs[0].scale) + io.outputs[0].zero_point
                exported = export_espdl(tflite, Path(folder) / f"{name}.espdl")
                row = check(exported.path, tflite, images, keras_steps)
            row.update(network=name, size=size, bytes=exported.size, ops=list(exported.ops),
                       seconds=round(time.time() - start, 1))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "differences"} | {"differences": len(row["differences"])}), flush=True)
    table = ["| network | px | chip | bytes | ESP-DL ops | Keras vs reference | (a) differences | (b) mismatched "
             "| (c) test output |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        table.append(f"| {r['network']} | {r['size']} | {r['chip']} | {r['bytes']:,} | {', '.join(r['ops'])} "
                     f"| {r['keras_mismatched']} of {r['elements']} | {len(r['differences'])} "
                     f"| {r['executor_mismatched']} of {r['elements']} "
                     f"| {'equal' if r['test_output_equal'] else 'DIFFERS'} |")
    _write(out, "espdl_applications", rows, "The Keras applications as .espdl files, checked with Espressif's esp-ppq",
           "Each network with random weights (batch norms moved off the identity, the head sharpened: "
           "benchmarks/applications.py) at its smallest size, quantized for the chip and calibrated on 32 random "
           f"inputs; Keras: the Keras model for the chip against tfqat's integer reference on {count} inputs; (a) "
           "differences in meaning from the file esp-ppq writes for the same float graph with tfqat's exponents "
           "imposed; (b) esp-ppq's executor in the chip's mode against the reference on the same inputs; (c) the file "
           "read with Espressif's generated readers, its embedded test output against the reference.", table)


def _write(out: Path, stem: str, rows: list, title: str, text: str, table: list) -> None:
    """stem.json (the rows, the command, esp-ppq's and torch's versions) and stem.md (the table)."""
    from importlib.metadata import version

    result = {"command": "python " + " ".join(["benchmarks/espdl_check.py", *sys.argv[1:]]),
              "esp-ppq": version("esp-ppq"), "torch": version("torch"), "rows": rows}
    lines = [f"# {title}", "", f"Command: `{result['command']}`; esp-ppq {result['esp-ppq']}, torch {result['torch']}. "
             + text, "", *table]
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-dir", default=str(ROOT / "export"))
    parser.add_argument("--work", default="runs/espdl", help="the int8 files benchmarks/espdl.py made the .espdl from")
    parser.add_argument("--images", default="/work/shared/data/flower_photos")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--applications", action="store_true", help="check the Keras applications instead")
    args = parser.parse_args()
    if args.applications:
        applications(Path(args.out), args.count)
        return
    from tfqat.data.images import folder_images

    images = folder_images(args.images, args.count, 224, "mobilenet")
    rows = []
    for espdl in sorted(Path(args.export_dir).glob("*.espdl")):
        stem = espdl.stem.replace("flowers_mobilenet_v2_int8_", "")
        rows.append(check(espdl, Path(args.work) / f"{stem}.tflite", images))
        print(json.dumps(rows[-1]), flush=True)
    table = ["| file | chip | nodes | initializers | (a) differences | (b) mismatched elements | (c) test output |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        table.append(f"| {r['file']} | {r['chip']} | {r['nodes']} | {r['initializers']} | {len(r['differences'])} "
                     f"| {r['executor_mismatched']} of {r['elements']} ({r['images']} photos) "
                     f"| {'equal' if r['test_output_equal'] else 'DIFFERS'} |")
    _write(Path(args.out), "espdl_check", rows, "The published .espdl files checked with Espressif's esp-ppq",
           "(a) differences in meaning from the file esp-ppq writes for the same float graph with tfqat's exponents "
           "imposed; (b) esp-ppq's executor in the chip's mode against tfqat's integer reference on the photos; (c) "
           "the file read with the readers esp-ppq generated from Espressif's schema, its embedded test output "
           "against the reference.", table)


if __name__ == "__main__":
    main()
