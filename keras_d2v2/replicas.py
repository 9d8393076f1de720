"""Which data-parallel replica runs the current step, for the strategies whose replicas each see
only their share of the batch (`tf.distribute`, PyTorch DDP). `keras.distribution` on JAX runs one
program over the global batch, so it counts as a single replica here."""

import keras


def data_parallel_replica():
    """`(index, count, gradients_summed)` of the replica running the current step.

    `tf.distribute`: the replica id in sync group (0 in a cross-replica context) and the strategy's
    replica count; Keras sums the replicas' gradients. PyTorch under an initialized
    `torch.distributed` group: the rank and world size; DDP averages the gradients. Otherwise
    `(0, 1, False)`.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        count = tf.distribute.get_strategy().num_replicas_in_sync
        context = tf.distribute.get_replica_context()
        index = context.replica_id_in_sync_group if context is not None and count > 1 else 0
        return index, count, True
    if backend == "torch":
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size(), False
    return 0, 1, False
