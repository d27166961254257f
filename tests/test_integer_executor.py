"""The integer executor equals LiteRT's kernels and TFLite Micro on every tensor of an op zoo (every op tfqat
exports, per-tensor and per-channel weights), each runtime with its measured row of tfqat.targets; counts ties;
names the ops that are not shifts; refuses float-scale files naming the tensor; and its CLI."""

import sys
from pathlib import Path

import numpy as np
import pytest

from tfqat.integer.compare import compare, run_local, RuntimeTensors
from tfqat.integer.executor import IntegerModel, execute_tflite
from tfqat.integer.model import ExecutorError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import executor as bench  # noqa: E402  (benchmarks/executor.py builds the op zoo)

ROOT = Path(__file__).resolve().parents[1]
INPUTS = 8


@pytest.fixture(scope="module", params=[False, True], ids=["per_tensor", "per_channel"])
def zoo(request, tmp_path_factory):
    return bench.build_zoo(tmp_path_factory.mktemp("zoo") / "zoo.tflite", per_channel=request.param)


def _inputs(path, count=INPUTS):
    return bench.random_inputs(IntegerModel(path), count)


@pytest.mark.parametrize("runtime", ["reference", "builtin", "micro"])
def test_every_tensor_equals_the_runtime(zoo, runtime):
    agreement = compare(zoo, _inputs(zoo), runtime)
    assert len(agreement.tensors) == 27
    assert agreement.mismatched == 0, agreement.summary()


def test_xnnpack_equals_every_output_its_mean_over_36_values_in_float32(zoo):
    """XNNPACK exposes the model's outputs only; fed its own inputs, every op equals the executor's, the MEAN
    over 36 values included, which XNNPACK scales in float32 (LiteRT's Q31 multiplier differs there)."""
    program = IntegerModel(zoo, ties="xnnpack")
    local = compare(program, _inputs(zoo), "xnnpack", local=True)
    assert local.mismatched == 0, local.summary()
    assert any("36 averaged elements" in line and "float32" in line for line in program.named)
    litert_mean = compare(IntegerModel(zoo, ties="xnnpack", named="litert"), _inputs(zoo), "xnnpack", local=True)
    assert {t.op for t in litert_mean.tensors if t.mismatched} == {"MEAN"}


@pytest.mark.parametrize("runtime, wrong", [("reference", "half_up"), ("builtin", "tflite_double"),
                                            ("xnnpack", "tflite_double"), ("micro", "half_even")])
def test_another_rule_does_not_reproduce_the_runtime(zoo, runtime, wrong):
    """Not vacuous: ties are common on power-of-two grids, so a wrong rule differs on convs at once."""
    agreement = compare(IntegerModel(zoo, ties=wrong), _inputs(zoo), runtime, local=True)
    assert agreement.by_op()["CONV_2D"][1] > 0


def test_tie_counts_bound_where_single_rules_disagree(zoo):
    """Two single roundings differ only on ties: fed the same inputs, half_up and half_away_from_zero differ on
    at most as many values as the executor counted ties, and on some."""
    up, away = IntegerModel(zoo, ties="half_up"), IntegerModel(zoo, ties="half_away_from_zero")
    theirs = RuntimeTensors(zoo, "reference")
    differ, ties = {}, {}
    for x in _inputs(zoo):
        x = x[None]
        seen = theirs.run([x], [op.outputs[0] for op in up.graph.operators])
        a, counted = run_local(up, seen, x)
        b, _ = run_local(away, seen, x)
        for op in up.graph.operators:
            i = op.outputs[0]
            differ[op.name] = differ.get(op.name, 0) + int(np.count_nonzero(a[i] != b[i]))
            ties[op.name] = ties.get(op.name, 0) + counted.get(i, 0)
    for name in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MUL"):
        assert 0 < differ[name] <= ties[name], (name, differ[name], ties[name])
    assert set(up.run(_inputs(zoo, 1)).ties) >= {op.outputs[0] for op in up.graph.operators if op.name == "CONV_2D"}


def test_ops_that_are_not_shifts_are_named(zoo):
    program = IntegerModel(zoo)
    named = sorted(line.split(" ")[2] for line in program.named)
    assert named == ["AVERAGE_POOL_2D", "LOGISTIC", "MEAN", "SOFTMAX"]  # the MEAN over 4 values is a shift
    micro = IntegerModel(zoo, ties="micro")
    assert any("gemmlowp fixed-point logistic" in line for line in micro.named)


def test_execute_tflite_returns_outputs_tensors_and_ties(zoo):
    x = _inputs(zoo, 3)
    result = execute_tflite(zoo, x, ties="micro")
    assert len(result.outputs) == 22 and all(o.dtype == np.int8 and len(o) == 3 for o in result.outputs)
    assert len(result.tensors) == 28  # the input and 27 op outputs, no constants
    assert sum(result.ties.values()) > 0
    assert not execute_tflite(zoo, x, keep_tensors=False).tensors


def test_bad_inputs_and_options_are_explained(zoo):
    program = IntegerModel(zoo)
    with pytest.raises(ValueError, match="is int8; got float32"):
        program.run(np.zeros((1, 12, 12, 6), np.float32))
    with pytest.raises(ValueError, match=r"has shape \[N, 12, 12, 6\]"):
        program.run(np.zeros((1, 12, 12, 5), np.int8))
    with pytest.raises(ValueError, match=r"neither a target \(\['builtin', 'esp32p4', 'esp32s3', 'half_even', 'half_up', 'micro', 'reference'"):
        IntegerModel(zoo, ties="nearest")
    with pytest.raises(ValueError, match="named='tflm' is not valid"):
        IntegerModel(zoo, named="tflm")


@pytest.fixture(scope="module")
def float_scale_ptq(tmp_path_factory):
    """The TFLite converter's own full-integer PTQ: per-channel float scales, not shift-only."""
    from tfqat._keras import keras
    from tfqat.flowers.baselines import convert_tflite_ptq

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    images = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32)
    path = tmp_path_factory.mktemp("ptq") / "ptq.tflite"
    path.write_bytes(convert_tflite_ptq(model, images))
    return path


def test_a_float_scale_model_is_refused_naming_the_tensor(float_scale_ptq):
    with pytest.raises(ExecutorError, match=r"^tensor \d+ '[^']+' has scale [0-9.e-]+ = 2\^-?[0-9.]+.*not a power of "
                                            r"two: not shift-only$"):
        IntegerModel(float_scale_ptq)


PUBLISHED = ROOT / "export" / "flowers_mobilenet_v2_int8_qat_tqt_per_channel.tflite"


@pytest.mark.skipif(not PUBLISHED.is_file(), reason="no published model in export/")
@pytest.mark.parametrize("runtime", ["reference", "micro"])
def test_a_published_model_equals_the_runtime(runtime):
    agreement = compare(PUBLISHED, _inputs(PUBLISHED, 2), runtime)
    assert agreement.mismatched == 0 and len(agreement.tensors) > 60, agreement.summary()


def test_cli_compares_and_reports(zoo, float_scale_ptq, tmp_path, capsys):
    from tfqat.cli import main

    assert main(["execute", str(zoo), "--count", "2", "--compare", "reference", "--compare", "micro"]) == 0
    out = capsys.readouterr().out
    assert "rounding ties" in out and "reference (chained, 2 input(s)): 0 of" in out and "micro (chained" in out
    assert main(["execute", str(zoo), "--count", "2", "--compare", "xnnpack"]) == 0
    assert main(["execute", str(zoo), "--count", "2", "--compare", "xnnpack", "--ties", "builtin"]) == 1
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model")
    assert main(["execute", str(junk)]) == 2
    assert main(["execute", str(float_scale_ptq)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"tfqat execute: error: {junk} is not a TFLite flatbuffer (no 'TFL3' file identifier)"
    assert "not a power of two: not shift-only" in err[1] and len(err) == 2
