"""Inverse block masking over a square patch grid, as `compute_block_mask_2d` makes it."""

import math

import keras
from keras import ops

from keras_d2v2.layers.masking import check_masking_args, keep_top_k, num_visible_tokens
from keras_d2v2.layers.random_state import ReplicaSeedGenerator, SavesRandomState


@keras.saving.register_keras_serializable(package="keras_d2v2")
class InverseBlockMasking(SavesRandomState, keras.layers.Layer):
    """Draws `clone_batch` independent inverse block masks per sample, inside the compiled step.

    The drawn blocks are the *visible* region: `int(T * (1 - mask_prob + mask_prob_adjust) /
    block_length**2)` block centres are drawn with replacement, each grows to a
    `block_length x block_length` square clamped at the grid border, and each row is then
    forced to exactly `int(T * (1 - mask_prob))` visible patches by dropping random visible
    patches or adding random single ones. Every row therefore has the same number of masked
    patches, which keeps all gathers static for XLA.

    The layer takes tokens `(B, T, ...)` (only the shape is used; `T` must be a square) and
    returns the mask `(B * clone_batch, T)` with 1 = masked. Clones of sample `i` are rows
    `i * clone_batch ... i * clone_batch + clone_batch - 1`, matching `ops.repeat(x, M, axis=0)`.

    Args:
        mask_prob: float in (0, 1), fraction of patches that are masked.
        block_length: int >= 1, side of a visible block in patches.
        mask_prob_adjust: float >= 0, extra fraction of block centres to offset overlaps.
        clone_batch: int >= 1, number of masks drawn per sample (multi-mask).
        seed: int or None, seed of the layer's `keras.random.SeedGenerator`.

    Example:
    >>> masking = InverseBlockMasking(mask_prob=0.8, block_length=3, clone_batch=4, seed=0)
    >>> masking(np.zeros((2, 64, 8))).shape
    (8, 64)
    """

    def __init__(self, *, mask_prob=0.8, block_length=3, mask_prob_adjust=0.07, clone_batch=16, seed=None, **kwargs):
        super().__init__(**kwargs)
        check_masking_args(mask_prob, clone_batch, block_length, mask_prob_adjust)
        self.mask_prob = mask_prob
        self.block_length = int(block_length)
        self.mask_prob_adjust = mask_prob_adjust
        self.clone_batch = int(clone_batch)
        self.seed = seed
        self.seed_generator = ReplicaSeedGenerator(seed)

    def num_visible(self, num_tokens):
        """Visible patches per row for a grid of `num_tokens` (the reference's `int(T * (1 - p))`)."""
        self.grid_side(num_tokens)
        return num_visible_tokens(self.mask_prob, num_tokens)

    def grid_side(self, num_tokens):
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(
                f"Inverse block masking needs a square patch grid, got {num_tokens} tokens "
                "(use a square image whose side is divisible by the patch size)."
            )
        return side

    def num_centres(self, num_tokens):
        keep = 1 - self.mask_prob
        return int(num_tokens * ((keep + self.mask_prob_adjust) / self.block_length**2))

    def call(self, tokens):
        num_tokens = tokens.shape[1]
        side = self.grid_side(num_tokens)
        visible = self.num_visible(num_tokens)
        rows = ops.shape(tokens)[0] * self.clone_batch
        in_block = self._blocks(rows, side)
        # Block cells outrank all others, so top-k keeps a uniformly random subset of the block
        # cells when there are too many and adds uniformly random single cells when too few.
        scores = in_block + keras.random.uniform((rows, num_tokens), seed=self.seed_generator)
        return keep_top_k(scores, visible)

    def _blocks(self, rows, side):
        """(rows, side**2) indicator of the union of the randomly placed visible blocks."""
        num_tokens = side * side
        num_centres = self.num_centres(num_tokens)
        if num_centres == 0:
            return ops.zeros((rows, num_tokens), "float32")
        centres = keras.random.randint((rows, num_centres), 0, num_tokens, seed=self.seed_generator)
        offsets = ops.arange(self.block_length, dtype="int32") - self.block_length // 2
        centre_row = ops.cast(centres // side, "int32")[:, :, None, None]
        centre_col = ops.cast(centres % side, "int32")[:, :, None, None]
        block_rows = ops.clip(centre_row + offsets[:, None], 0, side - 1)
        block_cols = ops.clip(centre_col + offsets[None, :], 0, side - 1)
        cells = ops.reshape(block_rows * side + block_cols, (rows, -1))
        return ops.max(ops.one_hot(cells, num_tokens, dtype="float32"), axis=1)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] * self.clone_batch
        return (batch, input_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update(
            mask_prob=self.mask_prob,
            block_length=self.block_length,
            mask_prob_adjust=self.mask_prob_adjust,
            clone_batch=self.clone_batch,
            seed=self.seed,
        )
        return config
