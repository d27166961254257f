"""Tests for tfqat.quantization.linking: each conv/dense rounds its accumulator as LiteRT does, linked to its input's scale.

A MobileNetV2-like block (conv+BN+ReLU6, pad, depthwise+BN+ReLU6, linear
projection, residual add) under two heads: global average pooling + dropout +
dense for the links themselves, and flatten + dense for bit-exact agreement
with the TFLite export. The pool's MEAN over 8x8 = 64 values is linked too (its
sum is requantized like an accumulator); tests/test_applications.py checks
MEAN, MUL and LOGISTIC bit for bit.
"""

from tfqat._keras import keras

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer

import tfqat
from tfqat.tflite import litert
from tfqat.quantization import pow2
from tfqat.quantization.linking import link_accumulators
from tfqat.quantization.modes import tracing_for_export
from tfqat.quantization.quantizers import Pow2ActivationQuantizer, Pow2BiasQuantizer
from references import reference_weight_exponent, reference_activation_exponent

layers = keras.layers
QuantizeWrapperV2 = tfmot.quantization.keras.QuantizeWrapperV2

SIZE = 8
CHANNELS = 6
CLASSES = 5
# Kernel layer -> the layer whose output quantizer gives its input scale (pad and dropout keep their input's).
INPUT_OF = {"expand": None, "depthwise": "expand_relu", "project": "depthwise_relu", "logits": "gap"}
# Kernel layer -> the layer whose quantizer rounds its accumulator (a fused ReLU6, or its own).
ROUNDED_BY = {"expand": "expand_relu", "depthwise": "depthwise_relu", "project": "project", "logits": "logits"}


def _set_bn(bn, rng):
    channels = bn.gamma.shape[0]
    bn.set_weights([
        rng.uniform(0.5, 1.5, channels) * 2.0 ** rng.integers(-3, 3, channels),  # channels of different magnitudes
        rng.normal(0.2, 0.3, channels),
        rng.normal(0.0, 0.3, channels), rng.uniform(0.5, 2.0, channels),
    ])


def block_model(head="gap", seed=0):
    """Input -> Conv2D+BN+ReLU6 -> pad -> DepthwiseConv2D+BN+ReLU6 -> Conv2D (project) -> Add -> head -> Dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = layers.Conv2D(CHANNELS, 3, padding="same", use_bias=False, name="expand")(inputs)
    x = layers.BatchNormalization(name="expand_bn")(x)
    x = layers.ReLU(6.0, name="expand_relu")(x)
    y = layers.ZeroPadding2D(1, name="pad")(x)
    y = layers.DepthwiseConv2D(3, use_bias=False, name="depthwise")(y)
    y = layers.BatchNormalization(name="depthwise_bn")(y)
    y = layers.ReLU(6.0, name="depthwise_relu")(y)
    y = layers.Conv2D(CHANNELS, 1, name="project")(y)
    x = layers.Add(name="add")([x, y])
    if head == "gap":
        x = layers.GlobalAveragePooling2D(name="gap")(x)
        x = layers.Dropout(0.2, name="dropout")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
    model = keras.Model(inputs, layers.Dense(CLASSES, name="logits")(x))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            _set_bn(layer, rng)
        elif getattr(layer, "use_bias", False):  # the project conv and the dense: biases that are not all zero
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0.0, 0.5, bias.shape)])
    return model


def grid_images(count, seed):
    """Images on the grid 2**-7 in [-1, 1]: with an input scale of 2**-6, every odd step is a tie."""
    steps = np.random.default_rng(seed).integers(-128, 129, (count, SIZE, SIZE, 3))
    images = (steps * 2.0**-7).astype(np.float32)
    images[0, 0, 0, :2] = [-1.0, 1.0]  # both ends, so calibration gives exactly 2**-6
    return images


def float_images(count, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (count, SIZE, SIZE, 3)).astype(np.float32)


def calibration_data():
    return [grid_images(8, seed=1), float_images(8, seed=2)]


def wrapped(model, name):
    return model.get_layer("quant_" + name)



def variable(wrapper, suffix):
    [found] = [w for w in wrapper.weights if w.name.split("/")[-1] == suffix + ":0"]
    return found.numpy()


def kernel_exponent(wrapper, per_channel):
    """Weight exponent(s) straight from the kernel variable: per tensor, or per output channel (in*dm + m)."""
    inner = wrapper.layer
    if isinstance(inner, layers.DepthwiseConv2D):
        kernel = variable(wrapper, "depthwise_kernel")
        if not per_channel:
            return np.float32(reference_weight_exponent(float(np.abs(kernel).max())))
        _, _, channels_in, multiplier = kernel.shape
        return np.array(
            [reference_weight_exponent(float(np.abs(kernel[:, :, i, m]).max()))
             for i in range(channels_in) for m in range(multiplier)],
            np.float32,
        )
    kernel = variable(wrapper, "kernel")
    if not per_channel or isinstance(inner, layers.Dense):  # Dense stays per tensor
        return np.float32(reference_weight_exponent(float(np.abs(kernel).max())))
    return np.array([reference_weight_exponent(float(np.abs(kernel[..., c]).max())) for c in range(kernel.shape[-1])],
                    np.float32)


def input_range(model, name):
    """(min, max) of the range variables that quantize the input of kernel layer `name`."""
    source = INPUT_OF[name]
    if source is None:
        variables = model.layers[1].quantizer_vars
    else:
        variables = own_range_variables(model, source)
    return float(variables["min_var"].numpy()), float(variables["max_var"].numpy())


def rounding_quantizer(model, name):
    """The quantizer that rounds kernel layer `name`'s accumulator, found by name, not by the graph walk."""
    layer = wrapped(model, ROUNDED_BY[name])
    if ROUNDED_BY[name] == name:
        [activation] = layer._quantize_activations
        return activation.quantizer
    [quantizer] = layer._output_quantizers
    return quantizer


def own_range_variables(model, name):
    """The range variables of the quantizer on layer `name`'s output (after its own activation, or its only one)."""
    layer = wrapped(model, name)
    if layer._quantize_activations:
        return layer._quantize_activations[0]._post_activation_vars
    return layer._output_quantizer_vars


def bias_quantizer(model, name):
    [quantizer] = [q for _, q, _ in wrapped(model, name)._weight_vars if isinstance(q, Pow2BiasQuantizer)]
    return quantizer


def all_activation_quantizers(model):
    found = {}
    for layer in model.layers:
        if isinstance(layer, QuantizeLayer):
            found["input"] = [layer.quantizer]
        elif isinstance(layer, QuantizeWrapperV2):
            quantizers = [a.quantizer for a in layer._quantize_activations] + list(layer._output_quantizers)
            if quantizers:
                found[layer.layer.name] = quantizers
    return found


@pytest.fixture(scope="module", params=[False, True], ids=["per_tensor", "per_channel"])
def gap_qat(request):
    """The block with the pooling head, quantized and calibrated."""
    qat = tfqat.quantize_model(block_model("gap"), per_channel=request.param)
    tfqat.calibrate(qat, calibration_data())
    return request.param, qat


# ---------------------------------------------------------------- which quantizers are linked


def test_every_conv_and_dense_is_linked(gap_qat):
    _, qat = gap_qat
    kernel_layers = [l.layer.name for l in qat.layers if isinstance(l, QuantizeWrapperV2)
                     and isinstance(l.layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense))]
    assert kernel_layers == list(INPUT_OF)
    assert link_accumulators(qat) == 5  # again: linking is idempotent (4 kernels and the pool's MEAN)
    for name in INPUT_OF:
        assert callable(bias_quantizer(qat, name).accumulator_exponent), name
        assert callable(rounding_quantizer(qat, name).accumulator_exponent), name
        # Conv and bias round on one grid: the same function.
        assert rounding_quantizer(qat, name).accumulator_exponent is bias_quantizer(qat, name).accumulator_exponent


def test_only_quantizers_of_conv_dense_and_mean_outputs_are_linked(gap_qat):
    _, qat = gap_qat
    found = all_activation_quantizers(qat)
    assert sorted(found) == sorted(["input", "expand_relu", "depthwise_relu", "project", "add", "gap", "logits"])
    for name, quantizers in found.items():
        [quantizer] = quantizers
        assert isinstance(quantizer, Pow2ActivationQuantizer)
        linked = name in ROUNDED_BY.values() or name == "gap"  # MEAN over 64 values: a sum at s_input / 64
        assert (quantizer.accumulator_exponent is not None) == linked, name
    # The fused convs have no output quantizer of their own; their ReLU6 rounds.
    assert "expand" not in found and "depthwise" not in found


def _check_exponents(qat, per_channel):
    for name in INPUT_OF:
        input_exponent = reference_activation_exponent(*input_range(qat, name))
        expected = input_exponent + kernel_exponent(wrapped(qat, name), per_channel)
        for quantizer in (rounding_quantizer(qat, name), bias_quantizer(qat, name)):
            got = quantizer.accumulator_exponent().numpy()
            assert got.shape == np.shape(expected), name
            np.testing.assert_array_equal(got, expected, err_msg=name)
        channel_scales = per_channel and name != "logits"
        assert np.shape(expected) == ((CHANNELS,) if channel_scales else ()), name


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_accumulator_exponent_is_input_plus_weight_exponent(per_channel):
    qat = tfqat.quantize_model(block_model("gap"), per_channel=per_channel)
    _check_exponents(qat, per_channel)  # the initial [-6, 6] ranges
    before = {name: bias_quantizer(qat, name).accumulator_exponent().numpy() for name in INPUT_OF}
    tfqat.calibrate(qat, calibration_data())
    # The link reads the range variables when called, so calibration moves it.
    assert any(not np.array_equal(before[n], bias_quantizer(qat, n).accumulator_exponent().numpy()) for n in INPUT_OF)
    _check_exponents(qat, per_channel)
    if per_channel:
        assert len(set(kernel_exponent(wrapped(qat, "depthwise"), True).tolist())) > 1


def test_linked_outputs_and_biases_are_on_their_grids(gap_qat):
    _, qat = gap_qat
    names = ["expand_relu", "depthwise_relu", "project", "add", "gap", "logits"]
    probe = keras.Model(qat.input, [wrapped(qat, n).output for n in names])
    for name, values in zip(names, probe(grid_images(4, seed=3), training=False)):
        [quantizer] = all_activation_quantizers(qat)[name]
        steps = values.numpy() / 2.0 ** quantizer.exponent(own_range_variables(qat, name)).numpy()
        np.testing.assert_array_equal(steps, np.round(steps), err_msg=name)
        assert steps.min() >= -128 and steps.max() <= 127, name
    for name in INPUT_OF:
        quantizer = bias_quantizer(qat, name)
        bias = variable(wrapped(qat, name), "bias")
        scale = 2.0 ** quantizer.accumulator_exponent().numpy()
        steps = quantizer(tf.constant(bias), training=False, weights={}).numpy() / scale
        np.testing.assert_array_equal(steps, np.round(steps), err_msg=name)
        assert np.abs(steps).max() > 0, name


# ---------------------------------------------------------------- bit-exact agreement with LiteRT


@pytest.fixture(scope="module", params=[False, True], ids=["per_tensor", "per_channel"])
def flat_qat(request):
    qat = tfqat.quantize_model(block_model("flatten", seed=1), per_channel=request.param)
    tfqat.calibrate(qat, calibration_data())
    return qat


def _keras_steps(model, images, output_scale):
    return model(images, training=False).numpy() / output_scale


@pytest.mark.parametrize("end", ["expand_relu", "project", "add", "logits"])
def test_keras_and_litert_agree_bit_exactly(flat_qat, tmp_path, end):
    """0 steps apart on every output, ties included: conv+ReLU6, projection, add and the final dense."""
    model = keras.Model(flat_qat.input, wrapped(flat_qat, end).output)
    path = tfqat.export_tflite(model, tmp_path / f"{end}.tflite")
    [output] = litert.describe(path).outputs
    assert output.dtype == "int8" and output.zero_point == 0
    [quantizer] = all_activation_quantizers(flat_qat)[end]
    assert output.scale == 2.0 ** quantizer.exponent(own_range_variables(flat_qat, end)).numpy()
    images = np.concatenate([grid_images(16, seed=4), float_images(16, seed=5)])
    _, raw = litert.predict(path, images, return_raw=True)
    steps = _keras_steps(model, images, output.scale)
    np.testing.assert_array_equal(steps, np.round(steps))
    np.testing.assert_array_equal(steps, raw.astype(np.float64))
    # The emulation is what makes them agree: TF's plain FakeQuant graph (as exported) does not.
    with tracing_for_export(model):
        plain = tf.function(lambda x: model(x, training=False)).get_concrete_function(
            tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32))
    assert np.any(plain(tf.constant(images)).numpy() / output.scale != raw)


# ---------------------------------------------------------------- load_model re-links


def test_load_model_relinks(gap_qat, tmp_path):
    _, qat = gap_qat
    path = str(tmp_path / "qat.h5")
    qat.save(path)
    loaded = tfqat.load_model(path)
    for name in INPUT_OF:
        for original, restored in ((rounding_quantizer(qat, name), rounding_quantizer(loaded, name)),
                                   (bias_quantizer(qat, name), bias_quantizer(loaded, name))):
            assert callable(restored.accumulator_exponent), name
            np.testing.assert_array_equal(
                restored.accumulator_exponent().numpy(), original.accumulator_exponent().numpy()
            )
    assert all(q.accumulator_exponent is None for n, [q] in all_activation_quantizers(loaded).items()
               if n not in ROUNDED_BY.values() and n != "gap")
    assert [q.kernel for q in all_activation_quantizers(loaded)["gap"]] == ["mean"]
    assert link_accumulators(loaded) == 5
    images = np.concatenate([grid_images(8, seed=6), float_images(8, seed=7)])
    np.testing.assert_array_equal(loaded(images, training=False).numpy(), qat(images, training=False).numpy())
    # Without the link the same weights round otherwise: the link is what load_model restores.
    with tfqat.quantize_scope():
        unlinked = keras.models.load_model(path)
    assert np.any(unlinked(images, training=False).numpy() != qat(images, training=False).numpy())


@pytest.mark.parametrize("trained_thresholds", [False, True], ids=["ranges", "trained_thresholds"])
def test_a_concatenation_and_its_inputs_share_the_widest_scale_and_agree_with_litert(trained_thresholds, tmp_path):
    """Two convs with ranges 16x apart meet in a Concatenate: all three tensors take the wider conv's
    scale (as the converter gives them), so Keras and LiteRT agree to the output step."""
    from tfqat.quantization.linking import share_scales
    from tfqat.tflite.agreement import keras_tflite_agreement

    layers = keras.layers
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 3))
    narrow = layers.Conv2D(4, 1, name="narrow")(inputs)
    wide = layers.Conv2D(4, 1, name="wide", kernel_initializer=keras.initializers.RandomNormal(stddev=8.0))(inputs)
    joined = layers.Concatenate(name="joined")([narrow, wide])
    model = keras.Model(inputs, layers.Flatten()(layers.Conv2D(3, 1, name="after")(joined)))
    images = np.random.default_rng(6).uniform(-1, 1, (64, 8, 8, 3)).astype(np.float32)
    qat = tfqat.quantize_model(model, trained_thresholds=trained_thresholds)
    tfqat.calibrate(qat, images)
    assert share_scales(qat) == 1
    def output_quantizer(name):
        layer = wrapped(qat, name)
        if layer._quantize_activations:
            return layer._quantize_activations[0].quantizer, layer._quantize_activations[0]._post_activation_vars
        return layer._output_quantizers[0], layer._output_quantizer_vars

    quantizers = {name: output_quantizer(name) for name in ("narrow", "wide", "joined")}
    own = {name: float(q.own_exponent(v)) for name, (q, v) in quantizers.items()}
    shared = {name: float(q.exponent(v)) for name, (q, v) in quantizers.items()}
    assert own["wide"] - own["narrow"] >= 3  # the ranges really differ
    assert set(shared.values()) == {max(own.values())}
    path = tmp_path / "joined.tflite"
    tfqat.export_tflite(qat, path)
    report = keras_tflite_agreement(qat, path, images)
    assert report.top1_agreement == 1.0 and report.max_steps == 0.0


# ---------------------------------------------------------------- MUL and MEAN


def assert_bit_exact(model, images, path):
    """Export `model` to `path` and check that Keras and LiteRT give the same int8 output step everywhere."""
    tfqat.export_tflite(model, path)
    [output] = litert.describe(path).outputs
    _, raw = litert.predict(path, images, return_raw=True)
    np.testing.assert_array_equal(model(images, training=False).numpy() / output.scale, raw.astype(np.float64))


def test_mul_and_mean_agree_with_litert_bit_for_bit(tmp_path):
    """x * sigmoid(gate) (MUL) and its global average over 4x4 (MEAN) with 24 channels: LiteRT's MEAN
    rounds its first 16 channels (vector loop) half up twice, the other 8 (scalar loop) as MUL does, and
    the Keras model follows both; no output step differs."""
    keras.utils.set_random_seed(6)
    inputs = keras.Input((4, 4, 3))
    x = layers.Conv2D(24, 3, padding="same", name="features")(inputs)
    gate = layers.Conv2D(24, 1, activation="sigmoid", name="gate")(x)
    product = layers.Multiply(name="product")([x, gate])
    model = keras.Model(inputs, layers.GlobalAveragePooling2D(name="pool")(product))
    qat = tfqat.quantize_model(model)
    images = np.random.default_rng(7).uniform(-1, 1, (64, 4, 4, 3)).astype(np.float32)
    tfqat.calibrate(qat, images)
    assert [q.kernel for q in all_activation_quantizers(qat)["product"]] == ["mul"]
    assert [q.kernel for q in all_activation_quantizers(qat)["pool"]] == ["mean"]
    for end in ("product", "pool"):
        assert_bit_exact(keras.Model(qat.input, wrapped(qat, end).output), images, tmp_path / f"{end}.tflite")


@pytest.mark.parametrize("channels", [3, 12, 24])
def test_depthwise_rounds_its_leftover_channels_as_litert_does(channels, tmp_path):
    """LiteRT's DEPTHWISE_CONV_2D rounds whole groups of 8 channels half up twice and the channels left
    over half away from zero (a 1x1 depthwise on 3 channels is what a Rescaling becomes): bit for bit."""
    keras.utils.set_random_seed(8)
    inputs = keras.Input((8, 8, channels))
    model = keras.Model(inputs, layers.DepthwiseConv2D(1, name="depthwise")(inputs))
    qat = tfqat.quantize_model(model)
    images = np.random.default_rng(9).uniform(-1, 1, (32, 8, 8, channels)).astype(np.float32)
    tfqat.calibrate(qat, images)
    assert [q.kernel for q in all_activation_quantizers(qat)["depthwise"]] == ["depthwise"]
    assert_bit_exact(qat, images, tmp_path / "depthwise.tflite")


def test_a_multiplying_scalar_op_with_a_fused_relu_rounds_as_mul(tmp_path):
    """ReLU(x * 0.75): TFLite fuses the ReLU into the MUL, so the ReLU's quantizer rounds the MUL's product."""
    keras.utils.set_random_seed(10)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="features")(inputs)
    model = keras.Model(inputs, layers.ReLU(name="relu")(x * 0.75))
    qat = tfqat.quantize_model(model)
    images = np.random.default_rng(11).uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
    tfqat.calibrate(qat, images)
    assert [q.kernel for q in all_activation_quantizers(qat)["relu"]] == ["mul"]
    assert_bit_exact(qat, images, tmp_path / "mul_relu.tflite")
