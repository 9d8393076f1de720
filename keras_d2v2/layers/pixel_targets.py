"""MAE's targets: each patch's pixels, normalized per patch; no teacher."""

import keras
from keras import ops


def patchify(images, patch_size):
    """`(B, H, W, C)` images -> `(B, T, patch_size**2 * C)` patches, row-major over the patch grid,
    each patch's values in (row, column, channel) order."""
    _, height, width, channels = images.shape
    rows, cols = height // patch_size, width // patch_size
    x = ops.reshape(images, (-1, rows, patch_size, cols, patch_size, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, rows * cols, patch_size * patch_size * channels))


@keras.saving.register_keras_serializable(package="keras_d2v2")
class PixelTargets(keras.layers.Layer):
    """Regression targets made of pixels, as MAE's (`norm_pix_loss=True` by default), in float32.

    `targets(images)` `(B, H, W, C)` -> `(B, T, patch_size**2 * C)`: the patches in the encoder's
    token order, each normalized by its own mean and unbiased variance, `(p - mean) / sqrt(var + eps)`
    with eps 1e-6, when `normalize` is on. A `Data2Vec2` with these targets has no teacher and no EMA:
    it is MAE's objective on data2vec 2.0's student (`Data2Vec2.image(..., targets="pixels")`).

    Args:
        patch_size: int, the encoder's patch side.
        normalize: bool, per-patch normalization (MAE's `norm_pix_loss`).

    Example:
    >>> targets = PixelTargets(patch_size=4)
    >>> targets(np.random.rand(2, 28, 28, 1).astype("float32")).shape
    (2, 49, 16)
    """

    def __init__(self, *, patch_size=16, normalize=True, **kwargs):
        super().__init__(**kwargs)
        if int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f"`patch_size` must be an integer >= 1, got {patch_size}.")
        self.patch_size = int(patch_size)
        self.normalize = bool(normalize)

    def target_dim(self, channels):
        """The width of a target for images of `channels` channels."""
        return self.patch_size * self.patch_size * channels

    def call(self, images):
        patches = patchify(ops.cast(images, "float32"), self.patch_size)
        if self.normalize and patches.shape[-1] < 2:
            raise ValueError("Normalized pixel targets need at least 2 values per patch (`patch_size**2 * channels`).")
        if not self.normalize:
            return patches
        mean = ops.mean(patches, axis=-1, keepdims=True)
        # Unbiased, as MAE's `target.var(dim=-1)`.
        var = ops.sum(ops.square(patches - mean), axis=-1, keepdims=True) / (patches.shape[-1] - 1)
        return (patches - mean) * ops.rsqrt(var + 1e-6)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        tokens = (height // self.patch_size) * (width // self.patch_size)
        return (batch, tokens, self.target_dim(channels))

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, normalize=self.normalize)
        return config
