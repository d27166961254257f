"""The published flowers QAT models on ESP-DL: one .espdl file per chip, and the test split under each chip's
arithmetic.

    python benchmarks/espdl.py --run runs/flowers --data /work/shared/data/flower_photos --out benchmarks/results

For each published QAT model (export/, trained in --run: its Keras weights `<method>.weights.h5`) and each chip
(esp32s3, esp32p4): the Keras model retargeted to the chip (`tfqat.retarget`: the same weights; an Add's inputs
take its output's scale, as ESP-DL adds raw int8 values), its int8 file, and its .espdl file (written to
--export-dir, the first test image embedded as the board's self-test). Per row: the file's bytes, the test
split's accuracy under the chip's arithmetic (tfqat's integer reference) and the Keras model's, the output
elements where they differ, and the difference to the run's float model (paired, the same images). A model the
chip cannot run (per-channel weights on ESP32-S3) is listed with the reason. Writes espdl.md and espdl.json.
"""

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtimes import keras_steps, load_run, trained_qat  # noqa: E402

from tfqat.targets import ESPDL_TARGETS as CHIPS  # noqa: E402  (pure Python: no TensorFlow at start-up)
from tfqat.flowers.methods import PUBLISHED_QAT  # noqa: E402


def measure(args, method_name: str, run, float_model, float_correct: np.ndarray) -> list[dict]:
    import tfqat
    from tfqat.espdl.accumulators import accumulator_peaks
    from tfqat.espdl.export import export_espdl
    from tfqat.integer.executor import IntegerModel
    from tfqat.flowers.methods import method as find_method
    from tfqat.tflite import export, litert

    method = find_method(method_name)
    published = (Path(args.export_dir) / method.file).read_bytes()
    qat, trained_for = trained_qat(method, run, float_model, published)
    images, labels = run.test_images, run.test_labels
    rows = []
    for chip in args.chips:
        row = {"model": method.file, "method": method.name, "trained_for": trained_for, "chip": chip}
        try:
            keras_model = tfqat.retarget(qat, chip)
        except ValueError as error:
            rows.append({**row, "not_run": str(error)})
            print(json.dumps(rows[-1]), flush=True)
            continue
        content = export.save_tflite(export.with_model_metadata(export.convert_int8(keras_model), keras_model),
                                     Path(args.work) / f"{method.name}_{chip}.tflite", labels=run.flowers.classes,
                                     preprocessing=run.network.preprocessing).read_bytes()
        io = litert.describe(content)
        espdl = export_espdl(content, Path(args.export_dir) / method.file.replace(".tflite", f"_{chip}.espdl"),
                             test_input=images[0])
        expected = keras_steps(keras_model, images, io.outputs[0].scale, io.outputs[0].zero_point)
        peaks, got = accumulator_peaks(IntegerModel(content, ties=chip), litert.quantize(images, io.inputs[0]))
        got = got.astype(np.int64)
        tightest = min(peaks, key=lambda p: p.headroom_bits)
        correct = got.argmax(-1) == labels
        rows.append({
            **row, "file": espdl.path.name, "bytes": espdl.size, "ops": list(espdl.ops), "images": len(images),
            "accuracy": float(np.mean(correct)), "keras_accuracy": float(np.mean(expected.argmax(-1) == labels)),
            "mismatched": int(np.count_nonzero(got != expected)), "elements": int(got.size),
            "accumulator_peak": tightest.bound, "accumulator_peak_op": tightest.op,
            "headroom_bits": tightest.headroom_bits,
            "over_lane_limit": [{"op": p.op, "bound": p.bound} for p in peaks if p.headroom_bits < 0],
            "versus_float_points": 100 * float(np.mean(correct) - np.mean(float_correct)),
            "only_float_right": int(np.sum(float_correct & ~correct)), "only_chip_right": int(np.sum(correct & ~float_correct)),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [
        "# The published flowers QAT models on ESP-DL (ESP32-S3, ESP32-P4)",
        "",
        f"Command: `{result['command']}`. {result['host']}. Test split of the run: {result['images']} images; "
        f"float model {result['float_accuracy']:.4f}.",
        "",
        "Accuracy under the chip's arithmetic: tfqat's integer reference (`tfqat.integer`, the chip's rounding, "
        "its float32 global average pool) on the model's int8 file, which the .espdl file holds (checked against "
        "Espressif's esp-ppq in tests/test_espdl_ppq.py). Keras: the QAT model's trained weights retargeted to "
        "the chip. Mismatched: int8 output elements where the two differ. Difference to float: paired, in points, "
        "with the images only one of the two gets right. Accumulator peak: over the test split, the largest sum "
        "of |product| + |bias| of any conv or dense output (`tfqat.espdl.accumulators`), against ESP32-S3's "
        "20-bit accumulator lanes (2^19 = 524,288): below it, no partial sum can saturate there, in any order "
        "(ESP32-P4 accumulates in 32-bit lanes).",
        "",
        "| file | chip | bytes | accuracy (chip) | accuracy (Keras for it) | mismatched elements | vs float (points) "
        "| only float right / only chip right | accumulator peak (op) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        if "not_run" in r:
            lines.append(f"| {r['model']} | {r['chip']} | not run: {r['not_run']} | | | | | | |")
            continue
        peak = "- (32-bit lanes)"
        if r["chip"] == "esp32s3":
            over = len(r.get("over_lane_limit", []))
            peak = (f"{r['accumulator_peak']:,} ({r['accumulator_peak_op']}; {r['headroom_bits']:+.2f} bits; "
                    f"{over} op{'' if over == 1 else 's'} over 2^19)")
        lines.append(
            f"| {r['file']} | {r['chip']} | {r['bytes']:,} | {r['accuracy']:.4f} | {r['keras_accuracy']:.4f} "
            f"| {r['mismatched']} of {r['elements']} | {r['versus_float_points']:+.2f} "
            f"| {r['only_float_right']} / {r['only_chip_right']} | {peak} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/flowers", help="the run folder that trained the published models")
    parser.add_argument("--data", default="/work/shared/data/flower_photos")
    parser.add_argument("--export-dir", default=str(ROOT / "export"), help="where the published files are (and "
                        "the .espdl files go)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--work", default="runs/espdl", help="folder for the retargeted int8 files")
    parser.add_argument("--methods", default=",".join(PUBLISHED_QAT))
    parser.add_argument("--chips", default=",".join(CHIPS))
    args = parser.parse_args()
    args.chips = [c for c in args.chips.split(",") if c]
    if set(args.chips) - set(CHIPS):
        parser.error(f"--chips {args.chips}: choose from {','.join(CHIPS)}")
    Path(args.work).mkdir(parents=True, exist_ok=True)

    run = load_run(args.run, args.data)
    float_model = run.float_model()
    float_correct = float_model.predict(run.test_images, batch_size=32, verbose=0).argmax(-1) == run.test_labels
    rows = []
    for name in args.methods.split(","):
        rows += measure(args, name, run, float_model, float_correct)
    result = {
        "command": "python " + " ".join(["benchmarks/espdl.py", *sys.argv[1:]]),
        "host": f"{platform.machine()} {platform.system()}, Python {platform.python_version()}",
        "images": len(run.test_images), "float_accuracy": float(np.mean(float_correct)), "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "espdl.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "espdl.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
