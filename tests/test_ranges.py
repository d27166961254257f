"""Tests for tfqat.flowers.ranges: per-channel weight ranges of a model and their per-tensor power-of-two statistics."""

from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import numpy as np

from tfqat.flowers import ranges
from tfqat.flowers.ranges import layer_range_stats, weight_ranges

from example_results import example_results


def test_layer_range_stats():
    stats = {s["name"]: s for s in layer_range_stats(example_results()["weight_ranges"])}
    s = stats["expanded_conv_depthwise"]
    # The all-zero channel is dead: out of min and ratio. For max 40 the per-tensor step is 2**-1 (40/127 <= 0.5).
    assert (s["dead"], s["min"], s["median"], s["max"], s["ratio"]) == (1, 0.01, 3.0, 40.0, 4000.0)
    assert (s["step"], s["half_step"], s["median_levels"], s["zeroed"]) == (0.5, 0.25, 6.0, 1)
    assert stats["Conv1"]["step"] == 2.0**-5  # 2/127 > 2**-6
    assert ranges._weight_exponent(127 * 2.0**-6) == -6  # an exact power of two stays
    assert ranges._weight_exponent(0.0) == ranges.DEAD_EXPONENT


def test_constants_match_pow2():
    from tfqat.quantization import pow2

    assert ranges._WEIGHT_QMAX == pow2.WEIGHT_QMAX and ranges.DEAD_EXPONENT == pow2.MIN_EXPONENT
    for max_abs in (1e-3, 0.3, 2.0, 40.0, 127 * 2.0**-6, 56.4):
        assert ranges._weight_exponent(max_abs) == int(pow2.weight_exponent(max_abs))


def test_weight_ranges_of_mobilenet_v2():
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, include_top=False)
    # Nest it as the pipeline's classifier does, to check sub-models are searched.
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(model(inputs))
    classifier = keras.Model(inputs, keras.layers.Dense(5, name="logits")(features))

    layers = weight_ranges(classifier)["layers"]
    convs = [l for l in model.layers if type(l) is keras.layers.Conv2D]
    depthwise = [l for l in model.layers if type(l) is keras.layers.DepthwiseConv2D]
    assert (len(convs), len(depthwise)) == (35, 17)
    assert [l["name"] for l in layers] == [l.name for l in model.layers if l in convs or l in depthwise] + ["logits"]

    by_name = {l["name"]: l for l in layers}
    for layer in convs + depthwise:
        entry = by_name[layer.name]
        kernel = layer.get_weights()[0]
        if layer in depthwise:
            assert entry["kind"] == "depthwise"
            channels = kernel.shape[2] * layer.depth_multiplier
            reference = np.abs(kernel).max(axis=(0, 1)).reshape(channels)  # (in, dm) -> in * dm + m
        else:
            assert entry["kind"] == "conv"
            channels = layer.filters
            reference = np.abs(kernel).max(axis=(0, 1, 2))
        assert len(entry["channel_max_abs"]) == channels
        np.testing.assert_array_equal(np.asarray(entry["channel_max_abs"], np.float32), reference)
    assert by_name["logits"]["kind"] == "dense" and len(by_name["logits"]["channel_max_abs"]) == 5


def test_weight_ranges_depthwise_channel_order():
    # depth_multiplier 2: output channel c = in * 2 + m, so put a distinct value in each (in, m).
    layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, name="dw")
    model = keras.Sequential([keras.Input((5, 5, 3)), layer])
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    for i in range(3):
        for m in range(2):
            kernel[1, 1, i, m] = -(10 * i + m + 1)
    layer.set_weights([kernel])
    assert weight_ranges(model)["layers"] == [
        {"name": "dw", "kind": "depthwise", "channel_max_abs": [1.0, 2.0, 11.0, 12.0, 21.0, 22.0]}
    ]
