"""Tests for tfqat.espdl and the ESP-DL targets: the Keras model quantized for ESP32-S3 or ESP32-P4 is bit-exact
with tfqat's integer reference in that chip's arithmetic, the file holds what ESP-DL reads (filter layout,
pads, header, alignment), and what ESP-DL cannot express is refused by name, with nothing written.
Espressif's own tools check the files in tests/test_espdl_ppq.py."""

import dataclasses
import struct

import numpy as np
import pytest

import tfqat
from tfqat._keras import keras
from tfqat.cli import main
from tfqat.espdl import layout
from tfqat.espdl.convert import EspdlExportError, to_espdl
from tfqat.espdl.export import export_espdl
from tfqat.integer.executor import IntegerModel
from tfqat.integer.model import read_graph
from tfqat.tflite import litert

layers = keras.layers
SIZE = 6  # a 3x3 global average pool after the stride-2 conv: 9 values, not a shift


def small_model(size=SIZE, dense_bias=True):
    """Conv (20 channels: one block of 16 and 4 left over) + ReLU6 that clips, depthwise, 1x1 conv, a residual
    Add, global average pooling, Dense: every op the ESP-DL export takes."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, 3))
    large = keras.initializers.RandomNormal(stddev=2.0, seed=1)  # outputs beyond 6: the ReLU6 clips
    x = layers.ReLU(6.0)(layers.Conv2D(20, 3, strides=2, padding="same", kernel_initializer=large)(inputs))
    y = layers.Conv2D(20, 1)(layers.DepthwiseConv2D(3, padding="same")(x))
    x = layers.GlobalAveragePooling2D()(layers.Add()([x, y]))
    return keras.Model(inputs, layers.Dense(5, bias_initializer="glorot_uniform" if dense_bias else "zeros")(x))


def images(n, seed, size=SIZE):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def quantized(chip, per_channel=False, size=SIZE):
    qat = tfqat.quantize_model(small_model(size), target=chip, per_channel=per_channel)
    tfqat.calibrate(qat, images(64, 1, size))
    return qat


@pytest.fixture(scope="module", params=["esp32s3", "esp32p4"])
def exported(request, tmp_path_factory):
    chip = request.param
    qat = quantized(chip)
    path = tfqat.export_tflite(qat, tmp_path_factory.mktemp(chip) / f"{chip}.tflite")
    return chip, qat, path


def _steps(qat, path, batch):
    io = litert.describe(path)
    keras_steps = np.round(qat.predict(batch, verbose=0) / io.outputs[0].scale) + io.outputs[0].zero_point
    return litert.quantize(batch, io.inputs[0]), keras_steps


def test_the_keras_model_for_a_chip_is_bit_exact_with_its_arithmetic_and_not_the_other_chips(exported):
    chip, qat, path = exported
    inputs, keras_steps = _steps(qat, path, images(64, 2))
    got = IntegerModel(path, ties=chip).run(inputs).outputs[0].reshape(keras_steps.shape)
    assert np.count_nonzero(got != keras_steps) == 0
    other = IntegerModel(path, ties="esp32p4" if chip == "esp32s3" else "esp32s3").run(inputs).outputs[0]
    assert np.count_nonzero(other.reshape(keras_steps.shape) != keras_steps) > 0  # the chips differ on this model


def test_an_add_shares_its_inputs_scale_on_esp_dl_and_not_on_litert(exported, tmp_path):
    chip, _, path = exported
    graph = read_graph(path)
    [add] = [op for op in graph.operators if op.name == "ADD"]
    assert len({graph.tensors[i].scales for i in (*add.inputs, *add.outputs)}) == 1
    qat = tfqat.quantize_model(small_model(), target="xnnpack")
    tfqat.calibrate(qat, images(64, 1))
    other = read_graph(tfqat.export_tflite(qat, tmp_path / "xnnpack.tflite"))
    [add] = [op for op in other.operators if op.name == "ADD"]
    assert len({other.tensors[i].scales for i in (*add.inputs, *add.outputs)}) > 1


def test_the_mean_rounds_as_esp_dl_computes_it():
    """ESP-DL: float32(sum) * ((1.0f / count) * 2**(e_in - e_out)), rounded half up as floorf(x + 0.5) (S3) or
    to even (P4); checked against exact rational rounding where the float32 product is exact."""
    import tensorflow as tf

    from tfqat.quantization.pow2 import mean_requantize

    sums = np.arange(-128 * 9, 127 * 9 + 1, dtype=np.float64)
    values = sums / 9.0 * 2.0**-4  # means at 2**-4, the sum of 9 inputs at 2**-4
    for rule in ("half_up", "half_even"):
        got = mean_requantize(tf.constant(values, tf.float32), -4.0, -4.0, 9, "espdl_float32", rule=rule).numpy() * 16
        f32 = np.float32
        product = sums.astype(f32) * (f32(1) / f32(9))
        want = np.floor(product + f32(0.5)) if rule == "half_up" else np.rint(product)
        assert np.array_equal(got, want)


def test_blocked_filter_layout():
    """16 output channels innermost per (h, w, c), the 4 left over after in N, H, W, C order (a depthwise
    conv's in H, W, N order); dims name the logical shape."""
    filters = np.arange(20 * 2 * 1 * 3).reshape(20, 2, 1, 3)  # N, H, W, C
    values, dims, name = layout.blocked_filter(filters)
    assert dims == (2, 1, 3, 20) and name == "(N/16)HWC16_UNALIGNED"
    assert list(values[:16]) == list(filters[:16, 0, 0, 0]) and list(values[16:32]) == list(filters[:16, 0, 0, 1])
    assert list(values[16 * 6:]) == list(filters[16:].reshape(-1))
    depthwise = np.arange(18 * 3 * 3).reshape(18, 3, 3, 1)
    values, dims, _ = layout.blocked_filter(depthwise, depthwise=True)
    assert dims == (3, 3, 18, 1)
    assert list(values[16 * 9:]) == list(depthwise[16:, :, :, 0].transpose(1, 2, 0).reshape(-1))
    values, dims, name = layout.blocked_filter(np.ones((32, 1, 1, 4)))
    assert name == "(N/16)HWC16" and values.size == 128


@pytest.mark.parametrize("size,kernel,stride,pads", [(7, 3, 2, (1, 1, 1, 1)), (8, 3, 2, (0, 0, 1, 1)),
                                                      (8, 3, 1, (1, 1, 1, 1)), (8, 1, 1, (0, 0, 0, 0))])
def test_same_padding_puts_the_odd_pixel_at_the_end(size, kernel, stride, pads):
    assert layout.same_pads((size, size), (kernel, kernel), (stride, stride), (1, 1)) == pads


def test_the_file_has_espdl_header_alignment_and_embedded_test(exported, tmp_path):
    chip, _, path = exported
    result = export_espdl(path, tmp_path / "model.espdl")
    data = result.path.read_bytes()
    assert data[:4] == b"EDL2" and struct.unpack_from("<III", data, 4) == (0, len(data) - 16, 0)
    assert len(data) % 16 == 0 and result.size == len(data) and result.chip == chip
    assert result.ops == ("Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm")
    reference = IntegerModel(path, ties=chip).run(result.test_input[None]).outputs[0]
    assert np.array_equal(result.test_outputs[0], reference[0])


def test_the_clip_table_clamps_each_step_to_six():
    qat = quantized("esp32s3")
    model = to_espdl(read_graph(_bytes(qat)), "esp32s3")
    [clip] = [n for n in model.nodes if n.op_type == "Clip"]
    tables = {t.name: t for t in model.initializers}
    e = tables[clip.attributes["lut"]].exponents[0]
    top = int(6 * 2.0**-e)
    assert top < 127 and list(tables[clip.attributes["lut"]].values) == [min(max(i, 0), top) for i in range(-128, 128)]
    assert tables[clip.inputs[2]].values[0] == top and tables[clip.inputs[2]].dims == ()


def _bytes(qat) -> bytes:
    from tfqat.tflite import export

    return export.with_model_metadata(export.convert_int8(qat), qat)


def test_refusals_name_the_op_and_the_reason_and_write_nothing(exported, tmp_path):
    chip, qat, path = exported
    out = tmp_path / "refused.espdl"
    other = "esp32p4" if chip == "esp32s3" else "esp32s3"
    with pytest.raises(EspdlExportError, match=f"quantized for target '{chip}', not '{other}'.*retarget"):
        export_espdl(path, out, chip=other)
    graph = read_graph(path)
    [conv] = [op for op in graph.operators if op.name == "CONV_2D"][:1]
    bias = graph.tensors[conv.inputs[2]]
    wide = dataclasses.replace(bias, data=np.full_like(bias.data, 2**19))
    tensors = list(graph.tensors)
    tensors[bias.index] = wide
    if chip == "esp32s3":
        with pytest.raises(EspdlExportError, match=r"op 0 CONV_2D .*bias of channel 0 is 524288 .*20 bits"):
            to_espdl(dataclasses.replace(graph, tensors=tuple(tensors)), chip)
    else:
        to_espdl(dataclasses.replace(graph, tensors=tuple(tensors)), chip)  # P4 keeps 32 bits
    out_tensor = graph.tensors[conv.outputs[0]]
    tensors = list(graph.tensors)
    tensors[out_tensor.index] = dataclasses.replace(out_tensor, scales=(2.0**-20,))
    with pytest.raises(EspdlExportError, match="op 0 CONV_2D .*finer than the accumulator"):
        to_espdl(dataclasses.replace(graph, tensors=tuple(tensors)), chip)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_model_for_litert_is_refused_at_its_add(tmp_path):
    qat = tfqat.quantize_model(small_model(), target="xnnpack")
    tfqat.calibrate(qat, images(64, 1))
    with pytest.raises(EspdlExportError, match=r"ADD .*must share one exponent.*retarget"):
        to_espdl(read_graph(_bytes(qat)), "esp32s3")
    retargeted = tfqat.retarget(qat, "esp32s3")  # the Add's inputs take the widest scale
    result = export_espdl(retargeted, tmp_path / "retargeted.espdl")
    assert result.chip == "esp32s3" and "Add" in result.ops


def test_targets_refuse_what_the_chip_cannot_run():
    with pytest.raises(ValueError, match="esp32s3' takes one weight scale per tensor"):
        tfqat.quantize_model(small_model(), target="esp32s3", per_channel=True)
    with pytest.raises(ValueError, match="no zero points"):
        tfqat.quantize_model(small_model(), target="esp32p4", unsigned_activations=True)
    per_channel = tfqat.quantize_model(small_model(), target="esp32p4", per_channel=True)
    with pytest.raises(ValueError, match="per-channel weights; target 'esp32s3'"):
        tfqat.retarget(per_channel, "esp32s3")
    raw = tfqat.quantize_model(small_model(), target="esp32s3")
    tfqat.calibrate(raw, images(16, 1) * 127.5 + 127.5)  # [0, 255] inputs: unsigned on LiteRT, signed here
    assert litert.describe(_bytes(raw)).inputs[0].zero_point == 0


def test_p4_takes_per_channel_weights(tmp_path):
    qat = quantized("esp32p4", per_channel=True)
    path = tfqat.export_tflite(qat, tmp_path / "p4.tflite")
    inputs, keras_steps = _steps(qat, path, images(32, 2))
    assert np.count_nonzero(IntegerModel(path, ties="esp32p4").run(inputs).outputs[0].reshape(keras_steps.shape) != keras_steps) == 0
    model = to_espdl(read_graph(path), "esp32p4")
    tensors = {t.name: t for t in model.initializers}
    weights = [tensors[n.inputs[1]] for n in model.nodes if n.op_type == "Conv"]  # tfqat's dense stays per tensor
    channels = [t.dims[2] if t.dims[3] == 1 else t.dims[3] for t in weights]  # depthwise (H, W, N, 1), else (H, W, C, N)
    assert [len(t.exponents) for t in weights] == channels and len({e for t in weights for e in t.exponents}) > 1


def test_cli_writes_the_file_and_explains_a_refusal(exported, tmp_path, capsys):
    chip, _, path = exported
    assert main(["espdl", str(path), str(tmp_path / "cli.espdl")]) == 0
    assert f"for {chip}; ops: Conv, Clip, Add" in capsys.readouterr().out
    other = "esp32p4" if chip == "esp32s3" else "esp32s3"
    assert main(["espdl", str(path), str(tmp_path / "no.espdl"), "--chip", other]) == 2
    assert "quantized for target" in capsys.readouterr().err and not (tmp_path / "no.espdl").exists()


def test_accumulator_peaks_bound_every_partial_sum(exported):
    """The first conv's peak is the largest sum of |x * w| + |bias| over its windows, computed here directly."""
    from tfqat.espdl.accumulators import LANE_LIMIT, accumulator_peaks

    chip, _, path = exported
    program = IntegerModel(path, ties=chip)
    inputs = np.random.default_rng(3).integers(-128, 128, (5, SIZE, SIZE, 3)).astype(np.int8)
    peaks, outputs = accumulator_peaks(program, inputs, batch=2)
    assert np.array_equal(outputs, program.run(inputs).outputs[0])
    graph = program.graph
    conv = graph.operators[0]
    w, b = (np.abs(graph.tensors[i].data.astype(np.int64)) for i in conv.inputs[1:3])  # [N, 3, 3, C], [N]
    x = np.pad(np.abs(inputs.astype(np.int64)), ((0, 0), (0, 1), (0, 1), (0, 0)))  # SAME, stride 2: pad at the end
    direct = max(int(np.sum(x[k, 2 * i: 2 * i + 3, 2 * j: 2 * j + 3] * w[n]) + b[n])
                 for k in range(5) for i in range(3) for j in range(3) for n in range(w.shape[0]))
    assert peaks[0].bound == direct and peaks[0].op.startswith("op 0 CONV_2D")
    assert len(peaks) == 4 and all(p.headroom_bits == np.log2(LANE_LIMIT / p.bound) for p in peaks)


def gated_model(size=SIZE):
    """MobileNetV3's hard-swish (x * relu6(x + 3) / 6) and hard-sigmoid gate, EfficientNet's swish and sigmoid
    gate (squeeze-and-excitation: a [1, 1, 1, C] gate times the feature map)."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(16, 3, padding="same", kernel_initializer=keras.initializers.RandomNormal(stddev=1.5, seed=2))(inputs)
    x = layers.Multiply()([x, layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    gate = layers.Conv2D(16, 1)(layers.Conv2D(4, 1, activation="relu")(layers.GlobalAveragePooling2D(keepdims=True)(x)))
    x = layers.Multiply()([x, layers.ReLU(6.0)(gate + 3.0) * (1.0 / 6.0)])
    x = layers.Activation("swish")(layers.Conv2D(16, 1)(x))
    gate = layers.Conv2D(16, 1, activation="sigmoid")(layers.GlobalAveragePooling2D(keepdims=True)(x))
    x = layers.GlobalAveragePooling2D()(layers.Multiply()([x, gate]))
    return keras.Model(inputs, layers.Dense(5)(x))


@pytest.fixture(scope="module", params=["esp32s3", "esp32p4"])
def gated(request, tmp_path_factory):
    chip = request.param
    qat = tfqat.quantize_model(gated_model(), target=chip)
    tfqat.calibrate(qat, images(64, 1))
    return chip, qat, tfqat.export_tflite(qat, tmp_path_factory.mktemp(chip) / "gated.tflite")


def test_gates_and_swishes_are_bit_exact_with_the_chips_arithmetic(gated):
    chip, qat, path = gated
    inputs, keras_steps = _steps(qat, path, images(64, 2))
    got = IntegerModel(path, ties=chip).run(inputs).outputs[0].reshape(keras_steps.shape)
    assert np.count_nonzero(got != keras_steps) == 0
    graph = read_graph(path)
    sigmoids = [graph.tensors[op.outputs[0]] for op in graph.operators if op.name == "QUANTIZE"]
    assert len(sigmoids) == 2 and all(t.scales == (2.0**-7,) and t.zero_points == (0,) for t in sigmoids)


def test_the_sigmoid_table_is_esp_ppqs_and_constants_sit_where_the_chip_reads_them(gated):
    chip, _, path = gated
    graph = read_graph(path)
    model = to_espdl(graph, chip)
    tensors = {t.name: t for t in model.initializers}
    exponents = {v.name: v.exponents[0] for v in (*model.value_info, *model.inputs)}
    exponents.update({t.name: t.exponents[0] for t in model.initializers})
    assert sum(n.op_type == "Sigmoid" for n in model.nodes) == 2  # the swish's and the gate's
    for node in (n for n in model.nodes if n.op_type == "Sigmoid"):
        table = tensors[node.attributes["lut"]]
        scale = 2.0 ** exponents[node.inputs[0]]
        exact = [min(int(np.floor(128 / (1 + np.exp(-i * scale)) + 0.5)), 127) for i in range(-128, 128)]
        assert table.exponents == (-7,) and list(table.values) == exact and table.values[128] == 64
    adds = [n for n in model.nodes if n.op_type == "Add" and any(i in tensors for i in n.inputs)]
    assert len(adds) == 2
    for node in adds:  # 3 at the output's exponent; x brought there first
        [constant] = [tensors[i] for i in node.inputs if i in tensors]
        e = exponents[node.outputs[0]]
        assert constant.dims == () and constant.exponents == (e,) and constant.values[0] == 3 * 2.0**-e
        assert all(exponents[i] == e for i in node.inputs)
    muls = [n for n in model.nodes if n.op_type == "Mul"]
    assert len(muls) == 6  # two 1/6, the hard-swish, two gates, the swish
    sixths = [tensors[i] for n in muls for i in n.inputs if i in tensors]
    assert [(int(t.values[0]), t.exponents) for t in sixths] == [(85, (-9,))] * 2
    assert all(exponents[n.outputs[0]] >= sum(exponents[i] for i in n.inputs) for n in muls)  # right shifts only


def _round(values, rule):
    return np.floor(values + 0.5) if rule == "half_up" else np.rint(values)


def test_the_hard_swish_on_the_chips_formulas_is_the_reference(gated):
    """The file's first hard-swish evaluated by ESP-DL's arithmetic (RequantizeLinear: clamp(R(x * 2^(e_in -
    e_out))); Add: sat(a + b) of raw int8; the Clip table; Mul: sat(R(a * b / 2^(e_out - e_a - e_b)))) from the
    reference's conv output equals the reference's MUL output."""
    chip, _, path = gated
    graph = read_graph(path)
    rule = tfqat.targets.target_named(chip).rule("*")
    model = to_espdl(graph, chip)
    result = IntegerModel(path, ties=chip).run(litert.quantize(images(8, 3), litert.describe(path).inputs[0]))
    conv, mul = graph.operators[0], next(op for op in graph.operators if op.name == "MUL" and
                                         len({*op.inputs} & {graph.operators[0].outputs[0]}))
    tensors = {t.name: t for t in model.initializers}
    exponents = {v.name: v.exponents[0] for v in (*model.value_info, *model.inputs)}
    values = {model.nodes[0].outputs[0]: result.tensors[conv.outputs[0]].astype(np.int64)}
    for node in model.nodes[1:]:
        if node.op_type in ("GlobalAveragePool", "Conv"):
            break
        operands = [values[i] if i in values else tensors[i].values.astype(np.int64) for i in node.inputs]
        e = [exponents.get(i, tensors[i].exponents[0] if i in tensors else 0) for i in node.inputs]
        e_out = exponents[node.outputs[0]]
        if node.op_type == "RequantizeLinear":
            out = _round(operands[0] * 2.0 ** (e[0] - e_out), rule)
        elif node.op_type == "Add":
            out = operands[0] + operands[1]
        elif node.op_type == "Mul":
            out = _round(operands[0] * operands[1] * 2.0 ** (e[0] + e[1] - e_out), rule)
        else:  # Clip, Relu: the table
            out = tensors[node.attributes["lut"]].values.astype(np.int64)[operands[0] + 128]
        values[node.outputs[0]] = np.clip(out, -128, 127).astype(np.int64)
        last = node.outputs[0]
    assert np.array_equal(values[last], result.tensors[mul.outputs[0]])


def test_what_the_chip_cannot_compute_in_gates_is_refused(gated):
    chip, _, path = gated
    graph = read_graph(path)

    def with_scale(index, scale):
        tensors = list(graph.tensors)
        tensors[index] = dataclasses.replace(graph.tensors[index], scales=(scale,))
        return dataclasses.replace(graph, tensors=tuple(tensors))

    mul = next(op for op in graph.operators if op.name == "MUL")
    with pytest.raises(EspdlExportError, match=rf"op {mul.index} MUL .*finer than the product's .*only shifts right"):
        to_espdl(with_scale(mul.outputs[0], 2.0**-30), chip)
    add = next(op for op in graph.operators if op.name == "ADD")
    with pytest.raises(EspdlExportError, match=rf"op {add.index} ADD .*constant 0.75 steps of 2\^2"):
        to_espdl(with_scale(add.outputs[0], 4.0), chip)
    bumped = with_scale(add.outputs[0], 1.0)  # 3 is 3 steps of 2^0, odd: a tie to even would differ
    if chip == "esp32p4":
        with pytest.raises(EspdlExportError, match=rf"op {add.index} ADD .*3 \(odd\) steps"):
            to_espdl(bumped, chip)
    else:
        to_espdl(bumped, chip)  # ties up: adding an integer after the rounding is the same
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="sigmoid")(inputs)
    qat = tfqat.quantize_model(keras.Model(inputs, layers.Dense(5)(layers.GlobalAveragePooling2D()(x))), target="xnnpack")
    tfqat.calibrate(qat, images(16, 1))
    with pytest.raises(EspdlExportError, match=r"op 1 LOGISTIC .*1/256, zero point -128.*retarget"):
        to_espdl(read_graph(_bytes(qat)), chip)


def test_retargeting_puts_a_sigmoid_on_the_chips_grid(tmp_path):
    qat = tfqat.quantize_model(gated_model(), target="xnnpack")
    tfqat.calibrate(qat, images(16, 1))
    retargeted = tfqat.retarget(qat, "esp32s3")
    result = export_espdl(retargeted, tmp_path / "retargeted.espdl")
    assert "Sigmoid" in result.ops and "Mul" in result.ops


def test_an_op_without_a_translation_is_refused_by_name(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="tanh")(inputs)
    qat = tfqat.quantize_model(keras.Model(inputs, layers.Dense(5)(layers.GlobalAveragePooling2D()(x))), target="esp32s3")
    tfqat.calibrate(qat, images(16, 1))
    with pytest.raises(EspdlExportError, match=r"op 1 TANH .*no rule for TANH"):
        export_espdl(qat, tmp_path / "tanh.espdl")
    assert not (tmp_path / "tanh.espdl").exists()


def test_a_test_image_is_quantized_as_litert_quantizes_the_input(exported, tmp_path):
    chip, _, path = exported
    image = images(1, 7)[0]
    result = export_espdl(path, tmp_path / "image.espdl", test_input=image)
    assert np.array_equal(result.test_input, litert.quantize(image[None], litert.describe(path).inputs[0])[0])
    with pytest.raises(ValueError, match=r"test_input has shape \(5, 5, 3\)"):
        export_espdl(path, tmp_path / "bad.espdl", test_input=image[:5, :5])
    with pytest.raises(ValueError, match="chip='esp32' is not one of"):
        export_espdl(path, tmp_path / "bad.espdl", chip="esp32")
