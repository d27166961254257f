"""The published .espdl files checked with Espressif's esp-ppq, as tests/test_espdl_ppq.py checks small models.

    python benchmarks/espdl_check.py --work runs/espdl --images /work/shared/data/flower_photos --out benchmarks/results

Needs the `espdl` extra (esp-ppq, torch). For each export/*.espdl and the int8 file it was made from
(`benchmarks/espdl.py` keeps them in --work): (a) the differences in meaning between it and the file esp-ppq
writes for the same float graph with tfqat's exponents imposed (nodes, attributes, initializers with every
byte, variables, inputs, outputs, test values); (b) esp-ppq's executor in the chip's mode against tfqat's
integer reference on --count photos; (c) the file read with Espressif's generated readers, its embedded test
output against the reference. Writes espdl_check.md and espdl_check.json.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def check(espdl: Path, tflite: Path, images: np.ndarray) -> dict:
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
    return {
        "file": espdl.name, "chip": chip, "nodes": len(ours["nodes"]), "initializers": len(ours["initializers"]),
        "differences": differences, "images": len(images),
        "executor_mismatched": int(np.count_nonzero(got != want)), "elements": int(got.size),
        "test_output_equal": bool(np.array_equal(test_output["values"], embedded)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-dir", default=str(ROOT / "export"))
    parser.add_argument("--work", default="runs/espdl", help="the int8 files benchmarks/espdl.py made the .espdl from")
    parser.add_argument("--images", default="/work/shared/data/flower_photos")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    from importlib.metadata import version

    from tfqat.data.images import folder_images

    images = folder_images(args.images, args.count, 224, "mobilenet")
    rows = []
    for espdl in sorted(Path(args.export_dir).glob("*.espdl")):
        stem = espdl.stem.replace("flowers_mobilenet_v2_int8_", "")
        rows.append(check(espdl, Path(args.work) / f"{stem}.tflite", images))
        print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python " + " ".join(["benchmarks/espdl_check.py", *sys.argv[1:]]),
              "esp-ppq": version("esp-ppq"), "torch": version("torch"), "rows": rows}
    lines = [
        "# The published .espdl files checked with Espressif's esp-ppq",
        "",
        f"Command: `{result['command']}`; esp-ppq {result['esp-ppq']}, torch {result['torch']}. (a) differences in "
        "meaning from the file esp-ppq writes for the same float graph with tfqat's exponents imposed; (b) esp-ppq's "
        "executor in the chip's mode against tfqat's integer reference on the photos; (c) the file read with the "
        "readers esp-ppq generated from Espressif's schema, its embedded test output against the reference.",
        "",
        "| file | chip | nodes | initializers | (a) differences | (b) mismatched elements | (c) test output |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['file']} | {r['chip']} | {r['nodes']} | {r['initializers']} | {len(r['differences'])} "
                     f"| {r['executor_mismatched']} of {r['elements']} ({r['images']} photos) "
                     f"| {'equal' if r['test_output_equal'] else 'DIFFERS'} |")
    out = Path(args.out)
    (out / "espdl_check.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "espdl_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
