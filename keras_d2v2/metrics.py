"""Metrics logged by the data2vec 2.0 training step."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_d2v2")
class LastValue(keras.metrics.Metric):
    """Reports the most recent value instead of a running mean (for decays and collapse monitors)."""

    def __init__(self, name="last_value", dtype="float32", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        # "mean": under a tf.distribute strategy the logged value is the replicas' mean, not their sum.
        self.value = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, aggregation="mean", name="value")

    def update_state(self, value):
        self.value.assign(ops.cast(value, self.dtype))

    def result(self):
        return ops.convert_to_tensor(self.value)

    def reset_state(self):
        self.value.assign(0.0)
