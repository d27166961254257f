"""The integer executor on the seven Keras applications (tiny, random weights, as benchmarks/applications.py builds
them): every tensor equals LiteRT's reference kernels and TFLite Micro."""

import sys
from pathlib import Path

import numpy as np
import pytest

from tfqat.integer.compare import compare
from tfqat.integer.executor import IntegerModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import applications  # noqa: E402
import executor as bench  # noqa: E402


@pytest.mark.parametrize("name", list(applications.NETWORKS))
def test_every_tensor_equals_reference_and_micro(name, tmp_path):
    import tfqat
    from tfqat._keras import keras

    build, size, (low, high) = applications.NETWORKS[name]
    keras.utils.set_random_seed(0)
    model = build(size)
    applications.randomize_batch_norms(model)
    qat = tfqat.quantize_model(model)
    tfqat.calibrate(qat, np.random.default_rng(1).uniform(low, high, (8, size, size, 3)).astype(np.float32))
    path = tfqat.export_tflite(qat, tmp_path / f"{name}.tflite")
    for runtime in ("reference", "micro"):
        program = IntegerModel(path, ties=runtime)
        agreement = compare(program, bench.random_inputs(program, 2), runtime)
        assert agreement.mismatched == 0, agreement.summary()
        assert len(agreement.tensors) == len(program.graph.operators)
