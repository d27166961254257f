"""Application cases for `pytest.mark.parametrize`, those left to `--all-applications` marked (tests/conftest.py),
and the networks those cases build."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import applications  # noqa: E402

# Deep networks whose first stages already bring every op kind of the whole: the suite's default run builds them
# cut after the named layer, with the application's own head (global average pool, 5-class Dense) on the cut;
# --all-applications and the benchmarks build them whole. DenseNet121 to its second dense layer of block 3 keeps
# the stem's max pool, a whole dense block of concatenations, a transition's standalone BN and average pool (66 of
# its 429 layers); ResNet50 to its first block of stage 3 keeps the padded stem, max pool, projection shortcuts,
# Add then ReLU and a strided stage (50 of 177).
CUT_AFTER = {"DenseNet121": "conv3_block2_concat", "ResNet50": "conv3_block1_out"}


def cases(names, left_out):
    """`names` in order; each one in `left_out` runs only with --all-applications."""
    unknown = set(left_out) - set(names)
    assert not unknown, f"not among the cases: {sorted(unknown)}"
    return [pytest.param(name, marks=pytest.mark.all_applications) if name in left_out else name for name in names]


def network(name: str, whole: bool):
    """benchmarks/applications.py's (build, size, input range) of `name`; cut after CUT_AFTER[name] unless `whole`."""
    build, size, value_range = applications.NETWORKS[name]
    if whole or name not in CUT_AFTER:
        return build, size, value_range

    def build_cut(size, **overrides):
        from tfqat._keras import keras

        model = build(size, **overrides)
        head = model.layers[-1]
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(model.get_layer(CUT_AFTER[name]).output)
        outputs = keras.layers.Dense(head.units, activation=head.activation, name="predictions")(x)
        return keras.Model(model.inputs, outputs, name=f"{model.name}_cut")

    return build_cut, size, value_range
