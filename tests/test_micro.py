"""Tests for tfqat.tflite.micro: the TFLite Micro C source of a tiny tfqat model.

The source compiles as C11 and as C++11 with the machine's compiler, and a program built from it finds
the array 16-byte aligned, of the file's length and with its bytes; the op resolver registers exactly
the model's ops; the stated arena lets TFLite Micro's interpreter allocate and run the model, with the
same outputs as LiteRT's reference kernels, and the measured arena is the smallest that does.
"""

from __future__ import annotations

import shutil
import subprocess

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

import tfqat
from tfqat._keras import keras
from tfqat.cli import main
from tfqat.tflite import litert
from tfqat.tflite.micro import (
    ARENA_MARGIN, MICRO_OPS, MicroExportError, arena_fits, export_micro, resolver_method,
)

import tflite_models

SIZE = 32
# The MicroMutableOpResolver methods of the tiny model's ops, as TFLite Micro's header spells them.
EXPECTED_METHODS = {
    "CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "ADD": "AddAdd",
    "MAX_POOL_2D": "AddMaxPool2D", "MEAN": "AddMean", "FULLY_CONNECTED": "AddFullyConnected",
    "SOFTMAX": "AddSoftmax",
}


def _tiny_model():
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.ReLU(6.0)(layers.Conv2D(8, 3, strides=2, padding="same")(inputs))
    x = layers.Add()([x, layers.DepthwiseConv2D(3, padding="same")(x)])
    x = layers.MaxPooling2D(2)(layers.Conv2D(16, 1, activation="relu")(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(5, activation="softmax")(x))


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (count, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model quantized, calibrated and exported by tfqat, and its TFLite Micro export."""
    folder = tmp_path_factory.mktemp("micro")
    qat = tfqat.quantize_model(_tiny_model())
    tfqat.calibrate(qat, _images(64, 1))
    path = tfqat.export_tflite(qat, folder / "tiny.tflite")
    return path, export_micro(path, folder / "c", name="tiny")


def _litert_ops(path) -> list[str]:
    """The model's distinct ops in first-use order, read by LiteRT (not by the module under test)."""
    names = [d["op_name"] for d in litert.load_interpreter(path)._get_ops_details()]  # noqa: SLF001
    return list(dict.fromkeys(names))


def _compiler(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"no {name} compiler on PATH: the generated C source cannot be compiled on this machine")
    return found


def _build_and_run(command: list[str], run: list[str]) -> str:
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run(run, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return ran.stdout


_CHECK_PROGRAM = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tiny_data.h"

int main(int argc, char** argv) {
  FILE* file = argc == 2 ? fopen(argv[1], "rb") : NULL;
  static unsigned char bytes[1 << 20];
  size_t size = file ? fread(bytes, 1, sizeof(bytes), file) : 0;
  if (size == 0) { printf("cannot read %s\n", argv[1]); return 1; }
  if ((uintptr_t)tiny_tflite % 16 != 0) { printf("tiny_tflite is not 16-byte aligned\n"); return 1; }
  if (tiny_tflite_len != size) { printf("tiny_tflite_len %u, file %zu bytes\n", tiny_tflite_len, size); return 1; }
  if (memcmp(tiny_tflite, bytes, size) != 0) { printf("the bytes differ from the file\n"); return 1; }
  printf("%u %d\n", tiny_tflite_len, TINY_ARENA_SIZE);
  return 0;
}
"""


@pytest.mark.parametrize("compiler, language, standard", [("cc", "c", "-std=c11"), ("c++", "c++", "-std=c++11")])
def test_the_source_compiles_and_holds_the_file_aligned(tiny, tmp_path, compiler, language, standard):
    path, result = tiny
    program = tmp_path / "check.c"
    program.write_text(_CHECK_PROGRAM)
    command = [_compiler(compiler), standard, "-Wall", "-Wextra", "-pedantic", "-Werror", "-x", language, str(program),
               str(result.source), "-I", str(result.header.parent), "-o", str(tmp_path / "check")]
    out = _build_and_run(command, [str(tmp_path / "check"), str(path)])
    assert out.split() == [str(path.stat().st_size), str(result.arena_size)]
    assert result.length == path.stat().st_size


def _stub_resolver(folder, methods) -> None:
    """A stand-in for TFLite Micro's micro_mutable_op_resolver.h with only `methods`; each call prints itself."""
    header = folder / "tensorflow" / "lite" / "micro" / "micro_mutable_op_resolver.h"
    header.parent.mkdir(parents=True)
    adders = "\n".join(f'  TfLiteStatus {m}() {{ return Add("{m}"); }}' for m in methods)
    header.write_text(f"""
#include <cstdio>
typedef enum {{ kTfLiteOk = 0, kTfLiteError = 1 }} TfLiteStatus;
namespace tflite {{
template <unsigned int tOpCount>
class MicroMutableOpResolver {{
 public:
  TfLiteStatus Add(const char* method) {{
    std::printf("%s\\n", method);
    return ++count_ <= tOpCount ? kTfLiteOk : kTfLiteError;
  }}
{adders}
 private:
  unsigned int count_ = 0;
}};
}}  // namespace tflite
""")


def test_the_resolver_registers_exactly_the_models_ops(tiny, tmp_path):
    path, result = tiny
    ops = _litert_ops(path)
    assert result.ops == tuple(ops)
    assert result.methods == tuple(EXPECTED_METHODS[op] for op in ops)
    _stub_resolver(tmp_path / "include", EXPECTED_METHODS.values())
    program = tmp_path / "ops.cc"
    program.write_text(
        '#include "tiny_ops.h"\n'
        "int main() {\n"
        "  static tflite::MicroMutableOpResolver<TINY_OP_COUNT> resolver;\n"
        '  if (tiny_register_ops(resolver) != kTfLiteOk) { std::printf("failed\\n"); return 1; }\n'
        '  std::printf("count %d\\n", TINY_OP_COUNT);\n'
        "}\n"
    )
    command = [_compiler("c++"), "-std=c++11", "-Wall", "-Wextra", "-Werror", str(program),
               "-I", str(result.ops_header.parent), "-I", str(tmp_path / "include"), "-o", str(tmp_path / "ops")]
    out = _build_and_run(command, [str(tmp_path / "ops")]).split("\n")
    assert out[:-2] == [EXPECTED_METHODS[op] for op in ops]
    assert out[-2] == f"count {len(ops)}"


def test_the_stated_arena_runs_the_model_as_litert_reference_kernels_do(tiny):
    from tflite_micro.python.tflite_micro import runtime

    path, result = tiny
    assert result.arena_size == -(-(result.arena_measured + ARENA_MARGIN) // 16) * 16
    micro = runtime.Interpreter.from_file(str(path), arena_size=result.arena_size)
    reference = litert.load_interpreter(path, kernels="reference")
    reference.allocate_tensors()
    [given], [taken] = reference.get_input_details(), reference.get_output_details()
    for image in litert.quantize(_images(8, 2), litert.describe(path).inputs[0]):
        micro.set_input(image[None], 0)
        micro.invoke()
        reference.set_tensor(given["index"], image[None])
        reference.invoke()
        np.testing.assert_array_equal(micro.get_output(0), reference.get_tensor(taken["index"]))


def test_the_measured_arena_is_the_smallest_that_runs(tiny):
    path, result = tiny
    assert arena_fits(path, result.arena_measured)
    assert not arena_fits(path, result.arena_measured - 1)
    with pytest.raises(MicroExportError, match="TFLite Micro cannot run the model: ValueError: Invalid model file path"):
        arena_fits(path.parent / "missing.tflite", result.arena_size)  # a failure that is not the arena's is raised


def _with_op(path, old: str, new: int) -> bytes:
    """The model with every use of op `old` turned into builtin op number `new`."""
    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    for code in model.operatorCodes:
        if max(code.builtinCode, code.deprecatedBuiltinCode) == getattr(schema.BuiltinOperator, old):
            code.builtinCode = code.deprecatedBuiltinCode = new
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.mark.parametrize("make, message", [
    (tflite_models.float_tflite, r"is not fully int8: activation tensor 0 '.*' is float32"),
    (tflite_models.pow2_float_io_tflite, r"is not fully int8: activation tensor \d+ '.*' is float32"),
])
def test_models_that_are_not_fully_int8_are_refused(tmp_path, make, message):
    model = tflite_models.write(tmp_path, "model.tflite", make())
    with pytest.raises(MicroExportError, match=message):
        export_micro(model, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_an_op_without_a_micro_kernel_is_refused(tiny, tmp_path):
    path, _ = tiny
    content = _with_op(path, "MAX_POOL_2D", schema.BuiltinOperator.HASHTABLE_LOOKUP)
    with pytest.raises(MicroExportError, match="uses the op HASHTABLE_LOOKUP, which TFLite Micro has no kernel for"):
        export_micro(content, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_a_truncated_file_is_refused(tiny, tmp_path):
    path, _ = tiny
    content = path.read_bytes()
    with pytest.raises(MicroExportError, match="the model buffer is a corrupt or truncated TFLite flatbuffer"):
        export_micro(content[: len(content) // 3], tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_names_and_margins_are_checked(tiny, tmp_path):
    path, _ = tiny
    with pytest.raises(ValueError, match=r"name='9lives' is not valid; use a C identifier"):
        export_micro(path, tmp_path, name="9lives")
    with pytest.raises(ValueError, match=r"margin=-1 is not valid"):
        export_micro(path, tmp_path, margin=-1)


def test_every_micro_op_has_one_resolver_method():
    methods = [resolver_method(op) for op in MICRO_OPS]
    assert len(set(methods)) == len(MICRO_OPS)
    assert {op: resolver_method(op) for op in ("ADD_N", "PADV2", "RELU6", "LOG_SOFTMAX", "REDUCE_MAX")} == {
        "ADD_N": "AddAddN", "PADV2": "AddPadV2", "RELU6": "AddRelu6", "LOG_SOFTMAX": "AddLogSoftmax",
        "REDUCE_MAX": "AddReduceMax",
    }
    with pytest.raises(MicroExportError, match="no kernel for the op HASHTABLE_LOOKUP"):
        resolver_method("HASHTABLE_LOOKUP")


def test_the_command_writes_the_files_and_refuses_a_float_model(tiny, tmp_path, capsys):
    path, result = tiny
    assert main(["micro", str(path), str(tmp_path / "c"), "--name", "tiny"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "c" / "tiny_data.c").read_text() == result.source.read_text()
    assert f"tiny_tflite: {result.length} bytes" in out and "CONV_2D AddConv2D()" in out
    assert f"TINY_ARENA_SIZE {result.arena_size} bytes (measured {result.arena_measured} + margin 1024)" in out
    model = tflite_models.write(tmp_path, "float.tflite", tflite_models.float_tflite())
    assert main(["micro", str(model), str(tmp_path / "f")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "is not fully int8" in error[0]
