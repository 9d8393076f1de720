"""Random-number state: saved with a layer's weights, and distinct per `tf.distribute` replica."""

import keras


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
    """A `keras.random.SeedGenerator` whose draws differ between the replicas of a `tf.distribute`
    strategy.

    Under `tf.distribute.MirroredStrategy` every replica holds the same mirrored generator state,
    so each would draw the same masks, mask noise and dropout for its share of the batch. Inside a
    replica context with several replicas, the replica id is folded into the first seed word. Other
    backends (and `keras.distribution` on JAX, which draws for the global batch) are unchanged.

    Example:
    >>> generator = ReplicaSeedGenerator(0)
    >>> mask = keras.random.uniform((2, 4), seed=generator) < 0.5
    """

    def next(self, ordered=True):
        seed = super().next(ordered=ordered)
        if keras.backend.backend() != "tensorflow":
            return seed
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return seed
        # A large odd stride keeps replica streams apart from generators seeded seed, seed + 1, ...
        replica = tf.cast(context.replica_id_in_sync_group, seed.dtype)
        return seed + tf.stack([replica * 1_000_003, tf.zeros_like(replica)])
