"""Random-number state: initial weights fixed by a layer's seed, generator states saved with the
weights, and draws distinct per data-parallel replica."""

import zlib

import keras

from keras_d2v2.replicas import data_parallel_replica


def initializer_seed(seed, weight_name):
    """Integer seed for the initializer of the weight `weight_name` of a layer seeded `seed`.

    `None` when the layer has no seed: Keras then draws one from its global random state, as for
    any unseeded initializer. Otherwise the seed is a stable hash of `(seed, weight_name)`, so a
    model built with a seed starts from the same weights every time and no two of its weights,
    even of the same shape, start from the same values.

    Example:
    >>> init = keras.initializers.RandomNormal(stddev=0.02, seed=initializer_seed(7, "fc1"))
    """
    if seed is None:
        return None
    return zlib.crc32(f"{int(seed)}/{weight_name}".encode()) & 0x7FFFFFFF


class SavesRandomState:
    """Mixin for layers that draw random numbers: saves their `SeedGenerator` states with the weights.

    Keras leaves seed-generator states out of `save()`/`save_weights()`, so a model restored from a
    checkpoint (e.g. by `keras.callbacks.BackupAndRestore`) would draw different masks, mask noise
    and dropout than the run it continues. The states are stored after the layer's own variables;
    files written without them still load.
    """

    def _own_variable_count(self):
        return len(self._trainable_variables) + len(self._non_trainable_variables)

    def save_own_variables(self, store):
        super().save_own_variables(store)
        offset = self._own_variable_count()
        for i, generator in enumerate(self._seed_generators):
            store[str(offset + i)] = generator.state

    def load_own_variables(self, store):
        count = self._own_variable_count()
        generators = self._seed_generators
        if generators and len(store.keys()) == count + len(generators):
            for i, generator in enumerate(generators):
                generator.state.assign(store[str(count + i)])
            store = {str(i): store[str(i)] for i in range(count)}
        super().load_own_variables(store)


class ReplicaSeedGenerator(keras.random.SeedGenerator):
    """A `keras.random.SeedGenerator` whose draws differ between data-parallel replicas.

    Under `tf.distribute.MirroredStrategy` every replica holds the same mirrored generator state,
    and PyTorch DDP processes start from the same seed, so each would draw the same masks, mask
    noise and dropout for its share of the batch. Inside a `tf.distribute` replica context with
    several replicas, or in a process of an initialized `torch.distributed` group, the replica id
    (the process rank) is folded into the first seed word. Elsewhere, `keras.distribution` on JAX
    included (its step draws for the global batch), draws are those of a plain `SeedGenerator`.

    Example:
    >>> generator = ReplicaSeedGenerator(0)
    >>> mask = keras.random.uniform((2, 4), seed=generator) < 0.5
    """

    def next(self, ordered=True):
        seed = super().next(ordered=ordered)
        replica, count, _ = data_parallel_replica()
        if count == 1:
            return seed
        # A large odd stride keeps replica streams apart from generators seeded seed, seed + 1, ...
        offset = keras.ops.cast(keras.ops.stack([replica * 1_000_003, 0 * replica]), seed.dtype)
        return seed + offset
