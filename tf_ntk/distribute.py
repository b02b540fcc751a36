"""The only place that knows about devices: a `tf.distribute.Strategy` by name."""

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def get_strategy(name="default", *, tpu=None):
    """A strategy by name.

    Args:
      name: ``default`` (one device: the first GPU, else the CPU), ``mirrored`` (all local GPUs, or
        the CPU), ``multi_worker`` (MultiWorkerMirroredStrategy from the TF_CONFIG environment
        variable), ``tpu`` (TPUStrategy).
      tpu: for ``tpu``: the TPU name or grpc:// address ("" or "local" for a TPU VM).

    Raises:
      ValueError: unknown name, or ``tpu`` given for another strategy.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    if tpu is not None and name != "tpu":
        raise ValueError(f"--tpu is only for --strategy=tpu, not {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ValueError(f"cannot reach TPU {tpu or 'local'!r}: {str(e).splitlines()[0]}") from e
    return tf.distribute.TPUStrategy(resolver)
