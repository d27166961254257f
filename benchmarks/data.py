"""The input pipeline at scale: its throughput against the QAT training step's, and its peak memory for 3k
and 30k images.

    python benchmarks/data.py --data ../shared/data/flower_photos --out benchmarks/results

The 30k folder is made in a temporary directory from ten copies of every photo, each copy given a few
bytes after its image data so that its content hash, and so its record and split, is its own. Each
measurement runs in a fresh process: scan the folder (`tfqat.flowers.data.load_flowers`), then read one
training epoch of `make_dataset` (decode, resize, augment, batches of 32) at 224 px, with the cache as
given: "auto" (memory if the decoded split fits in 4 GiB, else streaming) or none (streaming). Peak memory
is the process's maximum resident set. The QAT step is MobileNetV2 (224 px, trained thresholds) fitting
batches of 32. Writes data.md and data.json.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COPIES = 10
BATCH = 32


def _measure_pipeline(folder: str, cache: str, limit: int) -> dict:
    """In this process: scan, then one training epoch (at most `limit` batches)."""
    import warnings

    from tfqat.flowers.data import load_flowers, make_dataset

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flowers = load_flowers(folder)
    scanned = time.perf_counter() - start
    after_scan = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    dataset = make_dataset(flowers.train, image_size=224, batch_size=BATCH, training=True,
                           cache=None if cache == "none" else cache)
    start, images = time.perf_counter(), 0
    for index, (batch, _) in enumerate(dataset):
        images += int(batch.shape[0])
        if index + 1 >= limit:
            break
    seconds = time.perf_counter() - start
    return {
        "train_images": len(flowers.train), "scan_seconds": scanned, "epoch_images": images,
        "images_per_second": images / seconds, "peak_gib_after_scan": after_scan,
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def _measure_step(steps: int) -> dict:
    import numpy as np

    import tfqat
    from tfqat._keras import keras

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None, include_top=False, pooling="avg")
    model = keras.Model(base.input, keras.layers.Dense(5)(base.output))
    qat = tfqat.quantize_model(model, trained_thresholds=True)
    images = np.random.default_rng(0).uniform(-1, 1, (BATCH, 224, 224, 3)).astype(np.float32)
    tfqat.calibrate(qat, images)
    qat.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.arange(BATCH) % 5
    qat.fit(images, labels, batch_size=BATCH, epochs=1, verbose=0)  # traces the step
    start = time.perf_counter()
    qat.fit(np.repeat(images, steps, axis=0), np.tile(labels, steps), batch_size=BATCH, epochs=1, verbose=0,
            shuffle=False)
    return {"images_per_second": steps * BATCH / (time.perf_counter() - start)}


def _in_fresh_process(*argv) -> dict:
    done = subprocess.run([sys.executable, __file__, "--measure", *argv], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _thirty_thousand(source: Path, target: Path) -> int:
    count = 0
    for path in sorted(source.rglob("*.jpg")):
        data = path.read_bytes()
        for copy in range(COPIES):
            out = target / path.parent.name / f"{path.stem}_{copy}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data + b"tfqat-copy-%d" % copy)  # after the JPEG's end: same pixels, own hash
            count += 1
    return count


def markdown(rows, step, command) -> str:
    lines = [
        "| images in the folder | cache | training images | scan | pipeline images/s | QAT step images/s | "
        "peak memory after scan | peak memory after an epoch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['folder_images']:,} | {row['cache']} | {row['train_images']:,} | {row['scan_seconds']:.0f} s | "
            f"{row['images_per_second']:.0f} | {step['images_per_second']:.1f} | {row['peak_gib_after_scan']:.2f} GiB | "
            f"{row['peak_gib']:.2f} GiB |"
        )
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=False)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--batches", type=int, default=100, help="batches read per epoch measurement")
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # the child process
        kind, *rest = args.measure
        result = _measure_step(int(rest[0])) if kind == "step" else _measure_pipeline(rest[0], rest[1], int(rest[2]))
        print(json.dumps(result))
        return 0
    source = Path(args.data)
    folder_images = sum(1 for _ in source.rglob("*.jpg"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        large = Path(tmp) / "thirty_thousand"
        large_images = _thirty_thousand(source, large)
        for folder, count in ((source, folder_images), (large, large_images)):
            for cache in ("auto", "none"):
                row = _in_fresh_process("pipeline", str(folder), cache, str(args.batches))
                rows.append({"folder_images": count, "cache": cache, **row})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        shutil.rmtree(large)
    step = _in_fresh_process("step", "4")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data.json").write_text(json.dumps({"pipeline": rows, "qat_step": step}, indent=2) + "\n")
    command = "python benchmarks/data.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "data.md").write_text(markdown(rows, step, command))
    print(markdown(rows, step, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
