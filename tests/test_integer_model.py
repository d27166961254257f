"""Reading .tflite files without TensorFlow or LiteRT's runtime: the import stays light, and bad files get one line."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfqat.integer.model import ExecutorError, read_graph

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import executor as bench  # noqa: E402  (benchmarks/executor.py builds the op zoo)


@pytest.fixture(scope="module")
def zoo_model(tmp_path_factory):
    return bench.build_zoo(tmp_path_factory.mktemp("zoo") / "zoo.tflite")


def test_the_executor_imports_neither_tensorflow_nor_litert_runtime():
    code = (
        "import sys\n"
        "import tfqat.integer.executor, tfqat.integer.model, tfqat.integer.named\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras', 'tflite_micro')"
        " or m.startswith('ai_edge_litert.') and m != 'ai_edge_litert.schema_py_generated']\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is not a TFLite flatbuffer"),
        (b"\x00" * 64, "is not a TFLite flatbuffer"),
        (b"abcdTFL3" + bytes(range(256)) * 2, "is a corrupt or truncated TFLite flatbuffer"),
    ],
)
def test_junk_gets_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "junk.tflite"
    path.write_bytes(content)
    with pytest.raises(ExecutorError, match=message) as error:
        read_graph(path)
    assert "\n" not in str(error.value)
    with pytest.raises(ExecutorError, match=message):
        read_graph(content)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ExecutorError, match="TFLite model not found"):
        read_graph(tmp_path / "absent.tflite")
    with pytest.raises(ExecutorError, match="is not a file"):
        read_graph(tmp_path)


def test_a_truncated_model_is_refused(zoo_model):
    content = zoo_model.read_bytes()
    with pytest.raises(ExecutorError, match="corrupt or truncated"):
        read_graph(content[: len(content) // 3])


def test_tensors_and_ops_of_an_export(zoo_model):
    graph = read_graph(zoo_model)
    names = {op.name for op in graph.operators}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MEAN", "SOFTMAX"} <= names
    [x] = [graph.tensors[i] for i in graph.inputs]
    assert x.dtype == np.int8 and x.shape == (1, 12, 12, 6) and x.data is None
    conv = next(op for op in graph.operators if op.name == "CONV_2D")
    weights = graph.tensors[conv.inputs[1]]
    assert weights.data.dtype == np.int8 and weights.data.shape == weights.shape
    assert conv.options["strideH"] == 1
