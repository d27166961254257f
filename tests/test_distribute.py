"""QAT under tf.distribute: MirroredStrategy over two logical CPUs reaches the single-device weights."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

# The model and data both scripts train on (indented as their bodies).
MODEL_AND_DATA = """
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
"""

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

    {model_and_data}

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
).replace("{model_and_data}\n", textwrap.dedent(MODEL_AND_DATA))


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


# Two workers of MultiWorkerMirroredStrategy on this machine's loopback interface, against one process.
WORKER = textwrap.dedent(
    """
    import json, os, sys
    from tfqat._keras import keras
    import numpy as np
    import tensorflow as tf
    import tfqat

    {model_and_data}
    strategy = tfqat.distribute.make_strategy(sys.argv[2])
    with strategy.scope():
        qat = tfqat.quantize_model(float_model(), strategy=strategy)
        qat.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tfqat.calibrate(qat, [images[:8]])
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8).with_options(options)  # global batch 8
    qat.fit(data, epochs=2, verbose=0)
    np.savez(sys.argv[1], *qat.get_weights())
    print(json.dumps({"replicas": strategy.num_replicas_in_sync}))
    """
).replace("{model_and_data}\n", textwrap.dedent(MODEL_AND_DATA))


def _free_ports(count):
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_two_workers_on_loopback_reach_the_single_process_weights(tmp_path):
    """`--strategy multi_worker` as documented, run for real: two processes, TF_CONFIG naming both."""
    import numpy as np

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = []
    try:
        for index in range(2):
            config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            workers.append(subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / f"worker{index}.npz"), "multi_worker"],
                env={**env, "TF_CONFIG": config}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        # Wait for both; if one fails, the other would wait for its peer forever: stop it at once.
        deadline = time.monotonic() + 300
        while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
            if any(w.poll() not in (None, 0) for w in workers):
                break
            time.sleep(0.5)
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        outputs = [worker.communicate(timeout=30) for worker in workers]
    finally:
        for worker in workers:  # always cleaned up, whatever happened
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1])["replicas"] == 2
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "single.npz"), "default"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    loaded = [np.load(tmp_path / f"{name}.npz") for name in ("worker0", "worker1", "single")]
    arrays = [[f[key] for key in sorted(f.files, key=lambda k: int(k.split("_")[1]))] for f in loaded]
    # Both workers hold the same weights (one all-reduced update per step), and those of one process on the
    # same global batch: only the order of float sums differs.
    for a, b, c in zip(*arrays, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)
