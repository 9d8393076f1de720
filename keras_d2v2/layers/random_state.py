"""Saving random-number state with a layer's weights."""


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
