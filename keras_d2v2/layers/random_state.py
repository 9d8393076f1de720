"""Random-number state: initial weights fixed by a layer's seed, generator states saved with the
weights, and draws distinct per data-parallel replica."""

import numbers
import zlib

import keras

from keras_d2v2.replicas import data_parallel_replica


def derived_seed(seed, name):
    """The seed of the part `name` (a weight, a sublayer, a component) of something seeded `seed`.

    The package's one seeding scheme: every seed below a model's `seed` is derived from it by
    name, for initializers (`derived_seed(layer.seed, "fc1")`) and for components alike
    (`derived_seed(model_seed, "encoder")`, `derived_seed(encoder_seed, "block3")`). `None` when
    `seed` is None: Keras then draws from its global random state, as for any unseeded
    initializer. Otherwise it is a stable hash of `(seed, name)`, so a model built with a seed
    starts from the same weights every time and no two of its parts share a random stream.

    Example:
    >>> init = keras.initializers.RandomNormal(stddev=0.02, seed=derived_seed(7, "fc1"))
    """
    if seed is None:
        return None
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an integer or None, got {seed!r}.")
    return zlib.crc32(f"{int(seed)}/{name}".encode()) & 0x7FFFFFFF


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
        # A large odd stride per replica; neighbouring seeds of other generators are unlikely, as
        # every seed in a model is a hash of its name (`derived_seed`).
        offset = keras.ops.cast(keras.ops.stack([replica * 1_000_003, 0 * replica]), seed.dtype)
        return seed + offset
