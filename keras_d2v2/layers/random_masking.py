"""MAE-style random masking with an exact count per row (the reference's `random_masking`, text)."""

import keras
from keras import ops

from keras_d2v2.layers.masking import check_masking_args, keep_top_k, num_visible_tokens
from keras_d2v2.layers.random_state import ReplicaSeedGenerator, SavesRandomState


@keras.saving.register_keras_serializable(package="keras_d2v2")
class RandomMasking(SavesRandomState, keras.layers.Layer):
    """Draws `clone_batch` independent uniform random masks per sample, inside the compiled step.

    Each row keeps exactly `int(T * (1 - mask_prob))` uniformly chosen tokens visible and masks
    the rest, as the reference's `random_masking` (used for text, where `mask_length` is 1). The
    layer takes tokens `(B, T, ...)` (only the shape is used) and returns the mask
    `(B * clone_batch, T)` with 1 = masked; clones of sample `i` are rows `i * clone_batch ...`.
    Like the reference, the draw ignores padding: padded positions may be masked, and the model
    leaves them out of the loss.

    Args:
        mask_prob: float in (0, 1), fraction of tokens that are masked.
        clone_batch: int >= 1, number of masks drawn per sample (multi-mask).
        seed: int or None, seed of the layer's `keras.random.SeedGenerator`.

    Example:
    >>> masking = RandomMasking(mask_prob=0.48, clone_batch=2, seed=0)
    >>> masking(np.zeros((3, 16, 8))).shape
    (6, 16)
    """

    def __init__(self, *, mask_prob=0.48, clone_batch=8, seed=None, **kwargs):
        super().__init__(**kwargs)
        check_masking_args(mask_prob, clone_batch)
        self.mask_prob = mask_prob
        self.clone_batch = int(clone_batch)
        self.seed = seed
        self.seed_generator = ReplicaSeedGenerator(seed)

    def num_visible(self, num_tokens):
        """Visible tokens per row (the reference's `int(T * (1 - mask_prob))`)."""
        return num_visible_tokens(self.mask_prob, num_tokens)

    def call(self, tokens):
        num_tokens = tokens.shape[1]
        rows = ops.shape(tokens)[0] * self.clone_batch
        scores = keras.random.uniform((rows, num_tokens), seed=self.seed_generator)
        return keep_top_k(scores, self.num_visible(num_tokens))

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] * self.clone_batch
        return (batch, input_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update(mask_prob=self.mask_prob, clone_batch=self.clone_batch, seed=self.seed)
        return config
