"""1-D block masking over a frame sequence, as `compute_block_mask_1d` makes it (audio)."""

import keras
from keras import ops

from keras_d2v2.layers.masking import check_masking_args, keep_top_k, num_visible_tokens
from keras_d2v2.layers.random_state import ReplicaSeedGenerator, SavesRandomState


@keras.saving.register_keras_serializable(package="keras_d2v2")
class BlockMasking1D(SavesRandomState, keras.layers.Layer):
    """Draws `clone_batch` independent span masks per sample, inside the compiled step.

    `int(T * (p + mask_prob_adjust) / block_length)` span centres are drawn with replacement, with
    `p = mask_prob` (or `1 - mask_prob` when `inverse`); each covers `block_length` frames from
    `centre - block_length // 2`, clamped at the ends. Each row is then forced to exactly
    `int(T * p)` span frames by dropping random span frames or adding random single frames. The
    spans are the masked frames (the reference's audio setting) or, with `inverse`, the visible
    ones. Every row therefore masks the same number of frames.

    The layer takes frames `(B, T, ...)` (only the shape is used) and returns the mask
    `(B * clone_batch, T)` with 1 = masked; clones of sample `i` are rows `i * clone_batch ...`.

    Args:
        mask_prob: float in (0, 1), fraction of frames that are masked.
        block_length: int >= 1, span length in frames.
        mask_prob_adjust: float >= 0, extra fraction of span centres to offset overlaps.
        inverse: bool, spans are the visible frames.
        clone_batch: int >= 1, number of masks drawn per sample (multi-mask).
        seed: int or None, seed of the layer's `keras.random.SeedGenerator`.

    Example:
    >>> masking = BlockMasking1D(mask_prob=0.5, block_length=5, mask_prob_adjust=0.05, clone_batch=4, seed=0)
    >>> masking(np.zeros((2, 49, 8))).shape
    (8, 49)
    """

    def __init__(
        self, *, mask_prob=0.5, block_length=5, mask_prob_adjust=0.05, inverse=False, clone_batch=8, seed=None, **kwargs
    ):
        super().__init__(**kwargs)
        check_masking_args(mask_prob, clone_batch, block_length, mask_prob_adjust)
        self.mask_prob = mask_prob
        self.block_length = int(block_length)
        self.mask_prob_adjust = mask_prob_adjust
        self.inverse = bool(inverse)
        self.clone_batch = int(clone_batch)
        self.seed = seed
        self.seed_generator = ReplicaSeedGenerator(seed)
        self.span_prob = 1.0 - mask_prob if inverse else mask_prob

    def num_visible(self, num_tokens):
        """Visible frames per row: `T - int(T * mask_prob)`, or `int(T * (1 - mask_prob))` when inverse."""
        if self.inverse:
            return num_visible_tokens(self.mask_prob, num_tokens)
        visible = num_tokens - int(num_tokens * self.mask_prob)
        if visible >= num_tokens:
            raise ValueError(f"`mask_prob`={self.mask_prob} masks no frame out of {num_tokens}.")
        return visible

    def num_centres(self, num_tokens):
        return int(num_tokens * ((self.span_prob + self.mask_prob_adjust) / self.block_length))

    def call(self, frames):
        num_tokens = frames.shape[1]
        visible = self.num_visible(num_tokens)
        num_spans = visible if self.inverse else num_tokens - visible
        rows = ops.shape(frames)[0] * self.clone_batch
        # Span frames outrank all others, so top-k keeps a uniformly random subset of them when
        # there are too many and adds uniformly random single frames when too few.
        scores = self._spans(rows, num_tokens) + keras.random.uniform((rows, num_tokens), seed=self.seed_generator)
        in_spans = 1.0 - keep_top_k(scores, num_spans)
        return 1.0 - in_spans if self.inverse else in_spans

    def _spans(self, rows, num_tokens):
        """(rows, T) indicator of the union of the randomly placed spans."""
        num_centres = self.num_centres(num_tokens)
        if num_centres == 0:
            return ops.zeros((rows, num_tokens), "float32")
        centres = keras.random.randint((rows, num_centres), 0, num_tokens, seed=self.seed_generator)
        offsets = ops.arange(self.block_length, dtype="int32") - self.block_length // 2
        frames = ops.clip(ops.cast(centres, "int32")[:, :, None] + offsets, 0, num_tokens - 1)
        return ops.max(ops.one_hot(ops.reshape(frames, (rows, -1)), num_tokens, dtype="float32"), axis=1)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] * self.clone_batch
        return (batch, input_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update(
            mask_prob=self.mask_prob,
            block_length=self.block_length,
            mask_prob_adjust=self.mask_prob_adjust,
            inverse=self.inverse,
            clone_batch=self.clone_batch,
            seed=self.seed,
        )
        return config
