"""ALiBi attention bias with a learned per-head scale, as data2vec 2.0 audio uses it."""

import math

import keras
from keras import ops


def alibi_slopes(num_heads):
    """The standard ALiBi head slopes (Press et al.; the reference's `get_slopes`): a geometric
    sequence from 2^(-8/n) for a power of two `n`; otherwise those of the nearest lower power of
    two followed by every other slope of the next power of two."""

    def power_of_two(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


@keras.saving.register_keras_serializable(package="keras_d2v2")
class ALiBiBias(keras.layers.Layer):
    """Symmetric ALiBi bias `-slope_h * scale_h * |i - j|` for tokens at given original positions.

    `call(positions)` takes the original (pre-masking) frame index of each token, `(N, T')`, and
    returns the additive attention bias `(N, heads, T', T')` in float32. Computing it from
    the kept positions equals the reference's gather of the full bias to the visible rows and
    columns (`masked_alibi`) without building the full `(N, heads, T, T)` tensor first.

    The per-head scale is learned (`learned_alibi_scale_per_head`), starts at 1, and is clamped
    at 0 when used; one scale is shared by all layers.

    Args:
        num_heads: int, attention heads.
        learned_scale: bool, whether the scale is trained.

    Example:
    >>> alibi = ALiBiBias(num_heads=6)
    >>> alibi(np.array([[0, 3, 4]])).shape
    (1, 6, 3, 3)
    """

    def __init__(self, *, num_heads=12, learned_scale=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.learned_scale = learned_scale
        self.slopes = alibi_slopes(num_heads)

    def build(self, input_shape=None):
        self.scale = self.add_weight(
            shape=(self.num_heads,), initializer="ones", trainable=self.learned_scale, name="scale"
        )

    def call(self, positions):
        positions = ops.cast(positions, "float32")
        distance = ops.abs(positions[:, :, None] - positions[:, None, :])
        per_head = -ops.convert_to_tensor(self.slopes, "float32") * ops.maximum(ops.cast(self.scale, "float32"), 0.0)
        return distance[:, None, :, :] * per_head[None, :, None, None]

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, learned_scale=self.learned_scale)
        return config
