"""QAT under tf.distribute: MirroredStrategy over two logical CPUs reaches the single-device weights."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Logical devices must be set up before TensorFlow touches the CPU, so the
# comparison runs in a fresh interpreter.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from tfqat._keras import keras
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tfqat

    def float_model():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU(6.0)(x)
        x = keras.layers.DepthwiseConv2D(3, use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU(6.0)(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(3)(x))

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (32, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 32)

    def train(strategy):
        with strategy.scope():
            qat = tfqat.quantize_model(float_model(), strategy=strategy)
            qat.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        tfqat.calibrate(qat, [images[:8]])
        data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
        qat.fit(data, epochs=2, verbose=0)
        return qat

    single = train(tf.distribute.get_strategy())
    mirrored_strategy = tfqat.distribute.make_strategy("mirrored")
    mirrored = train(mirrored_strategy)
    diffs = [float(np.abs(a - b).max()) for a, b in zip(single.get_weights(), mirrored.get_weights())]
    ranges = [w.name for w in mirrored.non_trainable_weights if w.name.endswith(("_min:0", "_max:0"))]
    print(json.dumps({"replicas": mirrored_strategy.num_replicas_in_sync, "max_diff": max(diffs),
                      "weights": len(diffs), "ranges": len(ranges)}))
    """
)


def test_mirrored_qat_matches_single_device(tmp_path):
    script = tmp_path / "distributed_fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["ranges"] > 0
    # Same global batch, gradients averaged over replicas, ranges reduced over replicas:
    # only float summation order differs.
    assert result["max_diff"] < 1e-5, result


def test_unknown_strategy_names_the_choices():
    from tfqat import distribute

    with pytest.raises(ValueError, match="mirrored"):
        distribute.make_strategy("tpu")
