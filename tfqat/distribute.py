"""`tf.distribute` strategies by name, for the CLI and the pipeline (the API takes a strategy object)."""

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name: str = "default"):
    """The `tf.distribute.Strategy` called `name`: one device, all local devices, or all workers of TF_CONFIG.

    "multi_worker" reads the cluster from the TF_CONFIG environment variable and
    must be started on every worker; without TF_CONFIG it is a single worker.
    """
    from tfqat._keras import keras  # noqa: F401  (selects tf_keras before TensorFlow loads)

    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    msg = f"strategy={name!r} is not one of {STRATEGIES}"
    raise ValueError(msg)
