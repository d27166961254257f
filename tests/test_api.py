"""Tests for tfqat.api: quantize_model, calibrate and load_model on a tiny nested MobileNetV2 classifier."""

import math
import types

from tfqat._keras import keras

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer

import tfqat
from tfqat.quantization import configs, pow2
from tfqat.data import batches as batches_module
from tfqat.data.batches import EAGER_BATCHES
from tfqat.quantization.quantizers import Pow2ActivationQuantizer, Pow2BiasQuantizer, Pow2WeightQuantizer

layers = keras.layers
QuantizeWrapperV2 = tfmot.quantization.keras.QuantizeWrapperV2
_FixedQuantizer = tfmot.quantization.keras.quantizers.FixedQuantizer

SIZE = 32
CLASSES = 5
RANGE_SUFFIXES = ("_min", "_max", "_seen")


def realistic_statistics(base, seed):
    """Random gamma/beta and BN moving statistics measured on data, as a trained network has.

    A randomly initialised MobileNetV2 with BN statistics (0, 1) fades its
    signal to ~1e-11 by the last block, which would quantize to all zeros.
    """
    rng = np.random.default_rng(seed)
    batch_norms = [l for l in base.layers if isinstance(l, layers.BatchNormalization)]
    for bn in batch_norms:
        channels = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
        bn.beta.assign(rng.normal(0.1, 0.3, channels).astype(np.float32))
        bn.momentum = 0.0  # the next training call stores exactly its batch statistics
    base(images(8, seed), training=True)
    for bn in batch_norms:
        bn.momentum = 0.99


def classifier(size=SIZE, seed=0):
    """A MobileNetV2 base nested in a classifier, as transfer-learning code builds it."""
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(alpha=0.35, input_shape=(size, size, 3), weights=None, include_top=False)
    realistic_statistics(base, seed)
    inputs = keras.Input((size, size, 3))
    x = base(inputs, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(CLASSES)(x)
    return keras.Model(inputs, outputs, name="flowers")


def images(n, seed, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, (n, SIZE, SIZE, 3)).astype(np.float32)


def is_range_variable(variable) -> bool:
    return variable.name.split(":")[0].endswith(RANGE_SUFFIXES)


def activation_quantizers(layer):
    """(quantizer, its variables) for every quantizer acting on a QAT layer's output."""
    if isinstance(layer, QuantizeLayer):
        return [(layer.quantizer, layer.quantizer_vars)]
    if not isinstance(layer, QuantizeWrapperV2):
        return []
    found = []
    for activation in layer._quantize_activations:
        variables = getattr(activation, "_pre_activation_vars", None) or activation._post_activation_vars
        found.append((activation.quantizer, variables))
    found += [(q, layer._output_quantizer_vars) for q in layer._output_quantizers]
    return found


def activation_scale(quantizer, variables) -> np.ndarray:
    if isinstance(quantizer, _FixedQuantizer):
        return np.float32(quantizer.init_max - quantizer.init_min) / np.float32(255)
    return pow2.scale_from_exponent(quantizer.exponent(variables)).numpy()


def scales(model) -> dict:
    """Every weight and activation scale of a QAT model, as the graph computes them."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, QuantizeWrapperV2):
            for weight, quantizer, _ in layer._weight_vars:
                if isinstance(quantizer, Pow2BiasQuantizer):  # the int32 grid s_input * s_weight
                    found[(layer.name, "bias")] = pow2.scale_from_exponent(quantizer.accumulator_exponent()).numpy()
                else:
                    found[(layer.name, "weight")] = pow2.scale_from_exponent(quantizer.exponent(weight)).numpy()
        for i, (quantizer, variables) in enumerate(activation_quantizers(layer)):
            found[(layer.name, f"activation{i}")] = activation_scale(quantizer, variables)
    return found


def quantized_biases(model) -> dict:
    """Every bias as the graph uses it now (on the grid of the current input and weight scales)."""
    return {
        layer.name: quantizer(weight, training=False, weights={}).numpy()
        for layer in model.layers if isinstance(layer, QuantizeWrapperV2)
        for weight, quantizer, _ in layer._weight_vars if isinstance(quantizer, Pow2BiasQuantizer)
    }


def frexp_power_of_two(values) -> bool:
    """Independent of pow2.is_power_of_two: mantissa exactly 0.5 for every value."""
    return all(v > 0 and math.frexp(float(v))[0] == 0.5 for v in np.ravel(values))


def assert_power_of_two_scales(model, found, per_channel, biases):
    # 52 convs + the Dense; input, 35 ReLU6, 10 adds, 17 linear projections, pooling and logits.
    assert sum(role == "weight" for _, role in found) == 53
    # Every conv has a bias once its BN is folded in, and the Dense has its own.
    assert sum(role == "bias" for _, role in found) == 53
    assert sum(role not in ("weight", "bias") for _, role in found) == 1 + 35 + 10 + 17 + 1 + 1
    for key, scale in found.items():
        assert pow2.is_power_of_two(scale) and frexp_power_of_two(scale), (key, scale)
    for layer in model.layers:
        if not isinstance(layer, QuantizeWrapperV2):
            continue
        inner = layer.layer
        # Dense kernels stay per tensor (the converter transposes them to (out, in)).
        channel_scales = per_channel and not isinstance(inner, layers.Dense)
        for weight, quantizer, _ in layer._weight_vars:
            if isinstance(quantizer, Pow2BiasQuantizer):
                # One accumulator scale per output channel where the kernel has one; the bias is on its grid.
                scale = found[(layer.name, "bias")]
                assert np.shape(scale) == (weight.shape if channel_scales else ()), layer.name
                steps = biases[layer.name] / scale
                np.testing.assert_array_equal(steps, np.round(steps))
                continue
            scale = found[(layer.name, "weight")]
            if isinstance(inner, layers.DepthwiseConv2D):
                channels = weight.shape[2] * weight.shape[3]
            else:
                channels = weight.shape[-1]
            assert np.shape(scale) == ((channels,) if channel_scales else ()), layer.name
            # The fake-quantized kernel is on that grid (channel c = in * multiplier + m) and inside [-127, 127].
            quantized = quantizer(weight, training=False, weights={}).numpy()
            steps = quantized.reshape(-1, channels) / scale
            np.testing.assert_array_equal(steps, np.round(steps))
            assert np.abs(steps).max() <= 127


def snapshot(model) -> dict:
    return {v.name: v.numpy().copy() for v in model.variables}


@pytest.fixture(scope="module", params=[False, True], ids=["per_tensor", "per_channel"])
def run(request):
    """Quantize, train a few steps, then calibrate; record what each stage leaves behind."""
    per_channel = request.param
    float_model = classifier()
    float_weights = [w.copy() for w in float_model.get_weights()]
    qat = tfqat.quantize_model(float_model, per_channel=per_channel)
    qat.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before_fit = snapshot(qat)
    x = images(12, seed=1)
    y = np.arange(12) % CLASSES
    qat.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    after_fit = snapshot(qat)
    fit_scales = scales(qat)
    fit_biases = quantized_biases(qat)
    fit_logits = qat(x[:4], training=False).numpy()
    # One batch first: the upstream ranges in that pass are the final ones, so a
    # probe afterwards sees exactly the tensors each quantizer saw.
    single = images(4, seed=5)
    single_used = tfqat.calibrate(qat, [single])
    output_layers = [
        l for l in qat.layers
        if isinstance(l, QuantizeWrapperV2) and isinstance(l.quantize_config, configs.OutputQuantizeConfig)
    ]
    probe = keras.Model(qat.input, [l.input for l in output_layers])
    seen = [l.layer(x_in).numpy() for l, x_in in zip(output_layers, probe(single, training=False))]
    single_ranges = [
        (l.name, l._output_quantizer_vars["min_var"].numpy(), l._output_quantizer_vars["max_var"].numpy(), s)
        for l, s in zip(output_layers, seen)
    ]
    # Then batches whose extremes come from different batches.
    batches = [images(4, seed=2, low=-0.5, high=0.9), images(4, seed=3, low=-0.95, high=0.4)]
    used = tfqat.calibrate(qat, batches)
    return types.SimpleNamespace(
        per_channel=per_channel,
        float_model=float_model,
        float_weights=float_weights,
        qat=qat,
        before_fit=before_fit,
        after_fit=after_fit,
        fit_scales=fit_scales,
        fit_biases=fit_biases,
        fit_logits=fit_logits,
        single_used=single_used,
        single_ranges=single_ranges,
        batches=batches,
        used=used,
        after_calibration=snapshot(qat),
        calibration_scales=scales(qat),
        calibration_biases=quantized_biases(qat),
    )


# ---------------------------------------------------------------- quantize_model


def test_quantize_model_inlines_the_base_and_folds_bn(run):
    qat = run.qat
    kinds = {type(l.layer if isinstance(l, QuantizeWrapperV2) else l).__name__ for l in qat.layers}
    assert "BatchNormalization" not in kinds and "Functional" not in kinds
    assert isinstance(qat.layers[1], QuantizeLayer)
    wrapped = [l for l in qat.layers if isinstance(l, QuantizeWrapperV2)]
    assert len(wrapped) == len(qat.layers) - 2  # everything but the input and its quantizer
    assert qat.output_shape == (None, CLASSES)


def test_quantize_model_leaves_the_float_model_alone(run):
    assert any(isinstance(l, keras.Model) for l in run.float_model.layers)
    for before, after in zip(run.float_weights, run.float_model.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_fit_trains_weights_and_ranges(run):
    changed = [n for n in run.before_fit if not np.array_equal(run.before_fit[n], run.after_fit[n])]
    assert any(n.endswith("kernel:0") for n in changed)
    seen = [n for n in run.after_fit if n.endswith("_seen:0")]
    assert len(seen) > 50 and all(run.after_fit[n] == 1.0 for n in seen)


def test_scales_are_powers_of_two_after_fit(run):
    assert_power_of_two_scales(run.qat, run.fit_scales, run.per_channel, run.fit_biases)
    # The logits are the Dense output quantizer's grid.
    dense = run.qat.layers[-1]
    scale = run.fit_scales[(dense.name, "activation0")]
    steps = run.fit_logits / scale
    np.testing.assert_array_equal(steps, np.round(steps))
    assert np.abs(steps).max() <= 128


def test_scales_are_powers_of_two_after_calibrate(run):
    assert_power_of_two_scales(run.qat, run.calibration_scales, run.per_channel, run.calibration_biases)


# ---------------------------------------------------------------- calibrate


def test_calibrate_changes_no_weight(run):
    assert run.used == 2
    assert run.after_fit.keys() == run.after_calibration.keys()
    kept = [n for n in run.after_fit if not n.split(":")[0].endswith(RANGE_SUFFIXES)]
    assert any(n.endswith("kernel:0") for n in kept) and any(n.endswith("optimizer_step:0") for n in kept)
    for name in kept:
        np.testing.assert_array_equal(run.after_calibration[name], run.after_fit[name], err_msg=name)
    ranges = [n for n in run.after_fit if n.split(":")[0].endswith(("_min", "_max"))]
    assert sum(not np.array_equal(run.after_fit[n], run.after_calibration[n]) for n in ranges) > len(ranges) // 2


def test_calibrate_sets_input_range_to_data_min_max_over_batches(run):
    variables = run.qat.layers[1].quantizer_vars
    data = np.concatenate(run.batches)
    assert variables["min_var"].numpy() == data.min() and variables["max_var"].numpy() == data.max()
    # Each extreme came from a different batch: the range is widened, not averaged or replaced.
    assert data.min() == run.batches[1].min() and data.max() == run.batches[0].max()


def test_calibrated_outputs_are_on_the_input_grid(run):
    scale = run.calibration_scales[(run.qat.layers[1].name, "activation0")]
    probe = keras.Model(run.qat.input, run.qat.layers[1].output)
    steps = probe(run.batches[0], training=False).numpy() / scale
    np.testing.assert_array_equal(steps, np.round(steps))
    assert steps.min() >= -128 and steps.max() <= 127


def _small_float():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(6.0, name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(3, name="logits")(x))


@pytest.fixture(scope="module")
def small_qat():
    return tfqat.quantize_model(_small_float())


def _small_batches():
    rng = np.random.default_rng(7)
    return [rng.uniform(-2, 3, (2, 8, 8, 3)).astype(np.float32) for _ in range(3)]


def test_calibrate_sets_every_output_range_to_what_it_saw(run):
    assert run.single_used == 1
    for name, low, high, seen in run.single_ranges:
        assert low == min(seen.min(), 0.0), name
        assert high == max(seen.max(), 0.0), name
        assert high > 0, name
    assert len(run.single_ranges) == 35 + 10 + 1  # ReLU6s, adds, global average pooling


@pytest.mark.parametrize("steps, expected_used", [(None, 3), (1, 1), (2, 2), (10, 3)])
def test_calibrate_steps(small_qat, steps, expected_used):
    batches = _small_batches()
    assert tfqat.calibrate(small_qat, batches, steps=steps) == expected_used
    used = np.concatenate(batches[:expected_used])
    variables = small_qat.layers[1].quantizer_vars
    assert variables["min_var"].numpy() == used.min() and variables["max_var"].numpy() == used.max()


def test_calibrate_past_the_eager_batches_sees_every_batch(monkeypatch):
    """More batches than run eagerly: the traced rest (any batch size) widens the ranges, and eager batches
    set the same ranges as traced ones (a reference calibrated with every batch traced)."""
    rng = np.random.default_rng(8)
    batches = [rng.uniform(-1, 1, (n, 8, 8, 3)).astype(np.float32) for n in [2] * EAGER_BATCHES + [3, 1]]
    batches[-1][0, 0, 0, 0] = 5.0  # the widest value comes in the last, traced batch
    model = _small_float()
    mixed, traced = tfqat.quantize_model(model), tfqat.quantize_model(model)
    assert tfqat.calibrate(mixed, batches) == EAGER_BATCHES + 2
    assert mixed.layers[1].quantizer_vars["max_var"].numpy() == 5.0
    monkeypatch.setattr(batches_module, "EAGER_BATCHES", 0)
    tfqat.calibrate(traced, batches)
    ranges = [(a.name, a.numpy(), b.numpy()) for a, b in zip(mixed.non_trainable_weights, traced.non_trainable_weights)]
    assert sum(name.endswith(("_min:0", "_max:0")) for name, _, _ in ranges) >= 6
    for name, a, b in ranges:
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=name)


def test_calibrate_accepts_labelled_tf_data(small_qat):
    batches = _small_batches()
    dataset = tf.data.Dataset.from_tensor_slices((np.concatenate(batches), np.zeros(6, np.int64))).batch(2)
    assert tfqat.calibrate(small_qat, dataset) == 3
    variables = small_qat.layers[1].quantizer_vars
    assert variables["max_var"].numpy() == np.concatenate(batches).max()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda qat: tfqat.calibrate(qat, _small_batches(), steps=0), r"steps=0 must be a positive"),
        (lambda qat: tfqat.calibrate(qat, []), r"no batches"),
        (lambda qat: tfqat.calibrate(keras.Sequential([layers.Dense(2, input_shape=(3,))]), [np.ones((1, 3))]),
         r"no tfqat activation quantizers"),
    ],
    ids=["zero_steps", "empty", "float_model"],
)
def test_calibrate_errors(small_qat, call, message):
    with pytest.raises(ValueError, match=message):
        call(small_qat)


def test_calibrate_does_not_leave_inference_collecting(small_qat):
    tfqat.calibrate(small_qat, _small_batches())
    before = snapshot(small_qat)
    small_qat(np.full((2, 8, 8, 3), 50.0, np.float32), training=False)
    small_qat.predict(np.full((2, 8, 8, 3), -50.0, np.float32), verbose=0)
    after = snapshot(small_qat)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)


# ---------------------------------------------------------------- save and load


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_save_and_load_give_identical_outputs(run, tmp_path, suffix):
    path = str(tmp_path / f"qat{suffix}")
    run.qat.save(path)
    loaded = tfqat.load_model(path)
    x = images(4, seed=11)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), run.qat(x, training=False).numpy())
    # Variable names differ (the loaded wrappers own their kernels), the order and values do not.
    original, restored = run.qat.get_weights(), loaded.get_weights()
    assert len(original) == len(restored)
    for before, after in zip(original, restored):
        np.testing.assert_array_equal(before, after)
    configs_of = lambda m: [l.quantize_config for l in m.layers if isinstance(l, QuantizeWrapperV2)]  # noqa: E731
    assert configs_of(loaded) == configs_of(run.qat)
    # The loaded model calibrates like the original (its range variables are found by name).
    batch = images(4, seed=12, low=-0.3, high=0.6)
    assert tfqat.calibrate(loaded, [batch]) == 1
    assert loaded.layers[1].quantizer_vars["max_var"].numpy() == batch.max()


# ---------------------------------------------------------------- errors and special outputs


def _lstm():
    inputs = keras.Input((4, 3))
    return keras.Model(inputs, layers.Dense(2)(layers.LSTM(4, name="the_lstm")(inputs)))


def _layer_norm():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3)(inputs)
    return keras.Model(inputs, layers.LayerNormalization(name="the_norm")(x))


def _bn_on_features():
    """A BN after a Dense: neither folded into a conv nor computed by a 1x1 depthwise conv (no image)."""
    inputs = keras.Input((8,))
    x = layers.ReLU()(layers.Dense(4)(inputs))
    return keras.Model(inputs, layers.BatchNormalization(name="late_bn")(x))


def _elu_conv():
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, layers.Conv2D(4, 3, activation="elu", name="elu_conv")(inputs))


@pytest.mark.parametrize(
    "build, expected",
    [
        (_lstm, r"'the_lstm' \(LSTM\)"),
        (_layer_norm, r"'the_norm' \(LayerNormalization\)"),
        (_bn_on_features, r"'late_bn' \(BatchNormalization\): .*cannot be folded"),
        (_elu_conv, r"'elu_conv' \(Conv2D\): its activation 'elu'"),
    ],
    ids=["lstm", "layer_norm", "bn_on_features", "elu_conv"],
)
def test_unsupported_layer_is_named_with_its_class(build, expected):
    with pytest.raises(ValueError, match=expected):
        tfqat.quantize_model(build())


def test_all_unsupported_layers_are_listed():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, activation="elu", name="first_bad")(inputs)
    x = layers.LayerNormalization(name="second_bad")(x)
    with pytest.raises(ValueError, match=r"'first_bad' \(Conv2D\).*'second_bad' \(LayerNormalization\)"):
        tfqat.quantize_model(keras.Model(inputs, x))


def test_bn_without_folding_is_refused():
    inputs = keras.Input((8, 8, 3))
    x = layers.BatchNormalization(name="the_bn")(layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match=r"'the_bn' \(BatchNormalization\)"):
        tfqat.quantize_model(keras.Model(inputs, x), fold_bn=False)


def test_keras3_model_gets_a_clear_type_error():
    import keras as keras3  # the Keras 3 package, not tf_keras

    if not keras3.__version__.startswith("3."):
        pytest.skip(f"installed keras is {keras3.__version__}, not Keras 3")
    inputs = keras3.Input((4,))
    model = keras3.Model(inputs, keras3.layers.Dense(2)(inputs))
    with pytest.raises(TypeError, match=r"Keras 3 model; .*tf_keras"):
        tfqat.quantize_model(model)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="custom_net")
        self.dense = layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


@pytest.mark.parametrize(
    "model, error, message",
    [
        (_Subclassed(), ValueError, r"'custom_net' is a subclassed model"),
        (layers.Dense(2), TypeError, r"expected a tf_keras Model, got Dense"),
    ],
    ids=["subclassed", "not_a_model"],
)
def test_models_without_a_layer_graph_are_refused(model, error, message):
    with pytest.raises(error, match=message):
        tfqat.quantize_model(model)


@pytest.mark.parametrize("decay", [1.0, -0.5])
def test_bad_ema_decay_is_refused(decay):
    inputs = keras.Input((3,))
    with pytest.raises(ValueError, match=r"ema_decay=.*\[0, 1\)"):
        tfqat.quantize_model(keras.Model(inputs, layers.Dense(2)(inputs)), ema_decay=decay)


def _softmax_dense():
    inputs = keras.Input((6,))
    return keras.Model(inputs, layers.Dense(4, activation="softmax", name="probs")(layers.Dense(8)(inputs)))


def _softmax_layer():
    inputs = keras.Input((6,))
    x = layers.Dense(4, name="logits")(layers.Dense(8)(inputs))
    return keras.Model(inputs, layers.Softmax(name="probs")(x))


@pytest.mark.parametrize("build", [_softmax_dense, _softmax_layer], ids=["dense_softmax", "softmax_layer"])
def test_softmax_output_has_tflite_fixed_scale(build):
    qat = tfqat.quantize_model(build())
    x = np.random.default_rng(0).normal(0, 3, (64, 6)).astype(np.float32)
    tfqat.calibrate(qat, [x])
    probs = qat.get_layer("quant_probs")
    [fixed] = probs._output_quantizers
    assert isinstance(fixed, _FixedQuantizer)
    assert activation_scale(fixed, {}) == 1 / 256
    out = qat(x, training=False).numpy()
    steps = out * 256
    np.testing.assert_array_equal(steps, np.round(steps))
    assert steps.min() >= 0 and steps.max() <= 255
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=4 / 256)
    # The logits before the softmax are quantized at a power-of-two scale of their own.
    logits = [q for layer in qat.layers for q, _ in activation_quantizers(layer) if q is not fixed]
    assert all(isinstance(q, Pow2ActivationQuantizer) for q in logits) and len(logits) == 3


def test_sequential_model_is_quantized():
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), layers.Conv2D(4, 3), layers.ReLU(6.0), layers.Flatten(), layers.Dense(2)]
    )
    qat = tfqat.quantize_model(model)
    assert isinstance(qat.layers[1], QuantizeLayer)
    assert [type(l.layer).__name__ for l in qat.layers[2:]] == ["Conv2D", "ReLU", "Flatten", "Dense"]
    assert isinstance(qat.layers[2]._weight_vars[0][1], Pow2WeightQuantizer)
