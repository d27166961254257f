"""Every array a QAT start and two training steps make from a float model, saved, so that two checkouts can be
compared bit for bit: a change meant to be a speed-up only (a rewrite reading the graph it already has, say)
must leave them all equal.

For the model as given (a flowers classifier: its base nested) and for its equalized copy (flat), the script
quantizes with trained thresholds (`qat_tqt`'s scheme), calibrates, takes two SGD steps, and saves each QAT
model's weights by name and its predictions. Inputs are seeded random images in [-1, 1] (MobileNetV2's
preprocessing); the arrays, not the accuracy, are the point. On one machine (CPU kernels differ elsewhere):

    python benchmarks/training_arrays.py --model /work/study/seed4/float.keras --out /tmp/before.npz
    (the other checkout) python benchmarks/training_arrays.py --model ... --out /tmp/after.npz
    python benchmarks/training_arrays.py --compare /tmp/before.npz /tmp/after.npz

`--compare` prints "N arrays, M different" and exits 1 when an array or a name differs.
"""

import argparse
import sys

import numpy as np

BATCH = 8


def _arrays(model, images, labels, prefix: str) -> dict:
    import tfqat
    from tfqat._keras import keras

    keras.utils.set_random_seed(0)
    qat = tfqat.quantize_model(model, trained_thresholds=True)
    tfqat.calibrate(qat, images)
    qat.compile(optimizer=keras.optimizers.SGD(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(images, labels, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    arrays = {f"{prefix}/{index:04d}/{weight.name}": weight.numpy() for index, weight in enumerate(qat.weights)}
    arrays[f"{prefix}/predictions"] = qat.predict(images, batch_size=BATCH, verbose=0)
    return arrays


def save(model_path: str, out: str) -> None:
    import tfqat
    from tfqat._keras import keras

    model = keras.models.load_model(model_path, compile=False)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1.0, 1.0, (2 * BATCH, *model.input_shape[1:])).astype(np.float32)
    labels = rng.integers(0, model.output_shape[-1], 2 * BATCH)
    arrays = _arrays(model, images, labels, "as_given")
    arrays.update(_arrays(tfqat.equalize(model, images), images, labels, "equalized"))
    np.savez(out, **arrays)
    print(f"{len(arrays)} arrays -> {out}")


def compare(first: str, second: str) -> int:
    a, b = np.load(first), np.load(second)
    if list(a.files) != list(b.files):
        only = sorted(set(a.files) ^ set(b.files))
        print(f"the names differ ({len(a.files)} and {len(b.files)} arrays): {', '.join(only[:5]) or 'their order'}")
        return 1
    different = [name for name in a.files if not np.array_equal(a[name], b[name])]
    print(f"{len(a.files)} arrays, {len(different)} different" + "".join(f"\n  {name}" for name in different[:10]))
    return 1 if different else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a saved float Keras model (.keras)")
    parser.add_argument("--out", help="where to save the arrays (.npz)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two saved .npz files to compare")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not (args.model and args.out):
        parser.error("give --model and --out, or --compare A B")
    save(args.model, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
