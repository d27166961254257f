"""The published QAT model as TFLite Micro C source: arena, flash bytes, TFLM latency and agreement with LiteRT.

    python benchmarks/micro.py --out benchmarks/results --images /work/shared/data/flower_photos --count 32

Exports the published default QAT model (export/, tfqat.flowers.methods.DEFAULT_QAT) with
tfqat.tflite.micro.export_micro, compiles the C array with the machine's `cc` (object size), runs the model
in TFLite Micro's Python interpreter with the stated arena on --count photos (tfqat.data.images.folder_images:
evenly spaced in sorted file order) and compares its int8 outputs with LiteRT's reference kernels. Writes
micro.md.
"""

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tfqat.flowers.methods import DEFAULT_QAT, METHODS  # pure Python: no TensorFlow at start-up

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "export" / METHODS[DEFAULT_QAT].file


def compile_object(source: Path, out: Path) -> dict:
    """Compile the C array with `cc -O2 -c`; the object's size in bytes and the seconds it took (None: no cc)."""
    cc = shutil.which("cc")
    if cc is None:
        return {"object_bytes": None, "compile_seconds": None}
    start = time.perf_counter()
    subprocess.run([cc, "-std=c11", "-O2", "-c", str(source), "-o", str(out)], check=True)
    seconds = time.perf_counter() - start
    sections = subprocess.run(["size", str(out)], capture_output=True, text=True, check=True).stdout.split("\n")[1]
    return {"object_bytes": int(sections.split()[3]), "compile_seconds": seconds}


def run_micro_and_reference(path: Path, arena: int, images: np.ndarray) -> dict:
    """TFLM (stated arena) and LiteRT reference kernels on the same int8 images: latency and output agreement."""
    from tflite_micro.python.tflite_micro import runtime

    from tfqat.tflite import litert

    micro = runtime.Interpreter.from_file(str(path), arena_size=arena)
    reference = litert.load_interpreter(path, kernels="reference")
    reference.allocate_tensors()
    [given], [taken] = reference.get_input_details(), reference.get_output_details()
    seconds, differ, steps, top1 = [], 0, 0, 0
    outputs = []
    for image in litert.quantize(images, litert.describe(path).inputs[0]):
        micro.set_input(image[None], 0)
        start = time.perf_counter()
        micro.invoke()
        seconds.append(time.perf_counter() - start)
        got = micro.get_output(0).astype(np.int32)
        reference.set_tensor(given["index"], image[None])
        reference.invoke()
        want = reference.get_tensor(taken["index"]).astype(np.int32)
        differ += int(np.count_nonzero(got != want))
        steps = max(steps, int(np.abs(got - want).max()))
        top1 += int(got.argmax() == want.argmax())
        outputs.append(got.size)
    return {
        "latency_ms": 1000 * float(np.median(seconds)), "latency_first_ms": 1000 * seconds[0],
        "elements": int(sum(outputs)), "differ": differ, "max_steps": steps, "top1_same": top1, "images": len(images),
    }


def markdown(result: dict, command: str) -> str:
    rows = [
        ("model", f"`{result['model']}`"),
        ("flash: .tflite bytes (the C array)", f"{result['length']:,}"),
        ("flash: `cc -O2 -c` object bytes", "no cc" if result["object_bytes"] is None else
         f"{result['object_bytes']:,} (compiled in {result['compile_seconds']:.1f} s)"),
        ("ops (resolver methods)", ", ".join(result["methods"])),
        ("arena measured (smallest that allocates and runs)", f"{result['arena_measured']:,} bytes"),
        ("arena stated (`FLOWERS_ARENA_SIZE`: + 1,024 margin, rounded to 16)", f"{result['arena_size']:,} bytes"),
        ("export_micro: arena bisection in child processes + writing the C files", f"{result['measure_seconds']:.1f} s"),
        ("TFLM latency per image (median; first)", f"{result['latency_ms']:.0f} ms; {result['latency_first_ms']:.0f} ms"),
        ("TFLM vs LiteRT reference: output elements that differ",
         f"{result['differ']} of {result['elements']} (max {result['max_steps']} steps)"),
        ("TFLM vs LiteRT reference: same top-1", f"{result['top1_same']} of {result['images']} images"),
    ]
    lines = [
        "# TFLite Micro: the published QAT model as C source",
        "",
        f"    {command}",
        "",
        f"TFLite Micro's Python interpreter (tflite-micro {result['tflm']}, reference kernels) on {result['host']}; "
        f"{result['images']} photos from {result['folder']}. Latency is this host's, not a microcontroller's.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--images", default="/work/shared/data/flower_photos")
    parser.add_argument("--count", type=int, default=32, help="photos to run in TFLM and LiteRT")
    args = parser.parse_args()

    from importlib.metadata import version

    from tfqat.data.images import folder_images
    from tfqat.tflite.micro import export_micro

    with tempfile.TemporaryDirectory(prefix="tfqat-micro-bench-") as tmp:
        start = time.perf_counter()
        exported = export_micro(MODEL, tmp, name="flowers")
        measure_seconds = time.perf_counter() - start
        built = compile_object(exported.source, Path(tmp) / "flowers_data.o")
    photos = folder_images(args.images, args.count)
    result = {
        "model": MODEL.relative_to(ROOT).as_posix(), "length": exported.length, "methods": exported.methods,
        "arena_measured": exported.arena_measured, "arena_size": exported.arena_size,
        "measure_seconds": measure_seconds, **built, **run_micro_and_reference(MODEL, exported.arena_size, photos),
        "tflm": version("tflite-micro"), "host": f"{platform.machine()} {platform.system()}, Python {platform.python_version()}",
        "folder": args.images,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(["benchmarks/micro.py", *sys.argv[1:]])
    (out / "micro.md").write_text(markdown(result, command))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
