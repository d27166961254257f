"""The dense layers of an ESP32-S3 int8 file: their partial sums in input order against the order-free bound.

    python benchmarks/espdl_partial_sums.py --run /work/study/seed4 --data ../shared/data/flower_photos \
        --tflite /work/ab/espdl_work/qat_tqt_tuned_slow_esp32s3.tflite

`tfqat.espdl.accumulators` bounds every partial sum of an op in any order (the sum of |product| + |bias|);
where that bound passes ESP32-S3's 20-bit lanes (2^19), this measures what an accumulation in input order
(and in reverse order) reaches on the run's test split, with the bias added first or last, through
tfqat's integer reference in the chip's arithmetic. Prints one JSON line per FULLY_CONNECTED op.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtimes import load_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the run folder whose test split to use")
    parser.add_argument("--data", default="/work/shared/data/flower_photos")
    parser.add_argument("--tflite", required=True, help="the int8 file made for esp32s3 (benchmarks/espdl.py --work)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    from tfqat.espdl.accumulators import LANE_LIMIT
    from tfqat.integer.executor import IntegerModel
    from tfqat.tflite import litert

    content = Path(args.tflite).read_bytes()
    program = IntegerModel(content, ties="esp32s3")
    graph = program.graph
    run = load_run(args.run, args.data)
    images = litert.quantize(run.test_images, litert.describe(content).inputs[0])
    for op in (op for op in graph.operators if op.name == "FULLY_CONNECTED"):
        source, weights, bias = op.inputs[:3]
        kernel = graph.tensors[weights].data.astype(np.int64)  # [outputs, inputs]
        offsets = graph.tensors[bias].data.astype(np.int64) if bias >= 0 else np.zeros(len(kernel), np.int64)
        peaks = {"bound": 0, "in_order": 0, "reversed": 0, "bias_first": 0}
        for start in range(0, len(images), args.batch):
            result = program.run(images[start: start + args.batch], keep_tensors=True)
            values = result.tensors[source].astype(np.int64).reshape(-1, kernel.shape[1])
            products = values[:, None, :] * kernel[None]
            forward, backward = np.cumsum(products, -1), np.cumsum(products[..., ::-1], -1)
            total = np.abs(forward[..., -1] + offsets)  # the accumulator's final value
            sums = {
                "bound": np.abs(products).sum(-1) + np.abs(offsets),
                "in_order": np.maximum(np.abs(forward).max(-1), total),  # the bias added last
                "reversed": np.maximum(np.abs(backward).max(-1), total),
                "bias_first": np.abs(forward + offsets[:, None]).max(-1),
            }
            for key, array in sums.items():
                peaks[key] = max(peaks[key], int(array.max()))
        print(json.dumps({"op": graph.op_label(op), "images": len(images), **peaks, "limit": LANE_LIMIT}), flush=True)


if __name__ == "__main__":
    main()
