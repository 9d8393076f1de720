"""Patch embedding with fixed 2-D sin-cos positions (timm `PatchEmbed` + MAE positions)."""

import math

import keras
import numpy as np
from keras import ops

from keras_d2v2.layers.random_state import derived_seed


def sincos_positions_2d(embed_dim, grid_size):
    """Fixed 2-D sin-cos position table in MAE's layout, shape `(grid_size**2, embed_dim)`.

    MAE passes the *column* coordinate to the half it calls `emb_h`, so the first
    `embed_dim // 2` channels encode the column and the last half the row. Within each
    half the channels are `[sin(pos * w), cos(pos * w)]` with `w_i = 10000**(-i / (D/4))`.
    """
    if embed_dim % 4:
        raise ValueError(f"`embed_dim` must be divisible by 4 for 2-D sin-cos positions, got {embed_dim}.")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    cols, rows = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))

    def encode(pos):
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(cols), encode(rows)], axis=1).astype("float32")


@keras.saving.register_keras_serializable(package="keras_d2v2")
class PatchEmbedding(keras.layers.Layer):
    """Splits images into patches, projects each to `embed_dim`, adds fixed 2-D sin-cos positions.

    Patches are flattened row-major over the patch grid, like timm's `PatchEmbed`. The
    projection kernel is Xavier-uniform over the flattened `(patch*patch*channels, embed_dim)`
    view and the bias PyTorch's default uniform, as in the reference.

    Args:
        image_size: int, side of the square input images.
        patch_size: int, side of a square patch; must divide `image_size`.
        channels: int, number of image channels.
        embed_dim: int, token dimension; must be divisible by 4.
        seed: int or None, seed of the projection's initial weights (`None`: Keras' global seed).

    Example:
    >>> layer = PatchEmbedding(image_size=32, patch_size=4, channels=3, embed_dim=32)
    >>> layer(np.zeros((2, 32, 32, 3), "float32")).shape
    (2, 64, 32)
    """

    def __init__(self, *, image_size=224, patch_size=16, channels=3, embed_dim=768, seed=None, **kwargs):
        super().__init__(**kwargs)
        if image_size % patch_size:
            raise ValueError(
                f"`image_size` ({image_size}) must be divisible by `patch_size` ({patch_size})."
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.channels = channels
        self.embed_dim = embed_dim
        self.seed = seed
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        fan_in = patch_size * patch_size * channels
        xavier_limit = math.sqrt(6.0 / (fan_in + embed_dim))
        bias_limit = 1.0 / math.sqrt(fan_in)
        self.projection = keras.layers.Conv2D(
            embed_dim,
            patch_size,
            strides=patch_size,
            kernel_initializer=keras.initializers.RandomUniform(
                -xavier_limit, xavier_limit, seed=derived_seed(seed, "projection_kernel")
            ),
            bias_initializer=keras.initializers.RandomUniform(
                -bias_limit, bias_limit, seed=derived_seed(seed, "projection_bias")
            ),
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, input_shape):
        self.projection.build((None, self.image_size, self.image_size, self.channels))
        self.positions = self.add_weight(
            shape=(1, self.num_patches, self.embed_dim),
            initializer=keras.initializers.Constant(sincos_positions_2d(self.embed_dim, self.grid_size)),
            trainable=False,
            name="positions",
        )

    def call(self, images):
        x = self.projection(images)
        x = ops.reshape(x, (-1, self.num_patches, self.embed_dim))
        return x + ops.cast(self.positions, x.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            patch_size=self.patch_size,
            channels=self.channels,
            embed_dim=self.embed_dim,
            seed=self.seed,
        )
        return config
