"""The image encoder of data2vec 2.0: patch embedding, CLS token, context encoder, main blocks."""

import keras
from keras import ops

from keras_d2v2.layers.patch_embedding import PatchEmbedding
from keras_d2v2.layers.random_state import derived_seed
from keras_d2v2.models.encoder import Encoder


@keras.saving.register_keras_serializable(package="keras_d2v2")
class ImageEncoder(Encoder):
    """ViT encoder in the reference layout, usable on all tokens or on visible tokens only.

    `embed(images)` gives patch tokens with fixed sin-cos positions; `encode(tokens)` prepends
    the CLS token (no position), applies the context encoder (LayerNorm + dropout + `prenet_depth`
    blocks) and the `depth` main blocks, and returns the hidden states `(N, 1 + T', D)` with the
    FFN outputs of the main blocks (CLS stripped), which are the teacher's target source.
    Calling the layer on images runs both on every patch and returns the hidden states.

    Post-LN (the reference) has the context LayerNorm and no final norm; pre-LN
    (`layer_norm_first=True`) has no context LayerNorm and a final LayerNorm, as in the reference.

    Args:
        image_size: int, side of square input images (channels-last).
        patch_size: int, side of a patch; must divide `image_size`.
        channels: int, image channels.
        embed_dim: int, token dimension.
        depth: int, main blocks (the target source).
        prenet_depth: int, context-encoder blocks before the main blocks (never targets).
        num_heads: int, attention heads.
        mlp_ratio: float, MLP hidden size relative to `embed_dim`.
        norm_eps: float, LayerNorm epsilon.
        layer_norm_first: bool, pre-LN blocks.
        dropout, attention_dropout, activation_dropout, post_mlp_dropout: floats, block dropouts.
        prenet_dropout: float, dropout after the context LayerNorm.
        drop_path_rate: float, stochastic depth rising linearly over all blocks from 0.
        seed: int or None, seed of the initial weights and of the dropout draws.

    Example:
    >>> encoder = ImageEncoder(image_size=32, patch_size=4, embed_dim=32, depth=2, prenet_depth=1, num_heads=4)
    >>> encoder(np.zeros((2, 32, 32, 3), "float32")).shape
    (2, 65, 32)
    """

    input_name = "images"
    num_extra_tokens = 1
    own_args = ("image_size", "patch_size", "channels", "prenet_depth", "prenet_dropout")

    def __init__(
        self,
        *,
        image_size=224,
        patch_size=16,
        channels=3,
        embed_dim=768,
        depth=10,
        prenet_depth=2,
        num_heads=12,
        mlp_ratio=4.0,
        norm_eps=1e-6,
        layer_norm_first=False,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        post_mlp_dropout=0.0,
        prenet_dropout=0.0,
        drop_path_rate=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(
            embed_dim=embed_dim,
            depth=depth,
            prenet_depth=prenet_depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            norm_eps=norm_eps,
            layer_norm_first=layer_norm_first,
            dropout=dropout,
            attention_dropout=attention_dropout,
            activation_dropout=activation_dropout,
            post_mlp_dropout=post_mlp_dropout,
            prenet_dropout=prenet_dropout,
            drop_path_rate=drop_path_rate,
            seed=seed,
            **kwargs,
        )
        self.image_size = image_size
        self.patch_size = patch_size
        self.channels = channels
        self.patch_embedding = PatchEmbedding(
            image_size=image_size,
            patch_size=patch_size,
            channels=channels,
            embed_dim=embed_dim,
            seed=seed,
            dtype=self.dtype_policy,
            name="patch_embedding",
        )
        self.num_patches = self.num_tokens = self.patch_embedding.num_patches
        self.make_transformer()

    def build_feature_encoder(self):
        self.patch_embedding.build((None, self.image_size, self.image_size, self.channels))
        self.cls_token = self.add_weight(
            shape=(1, 1, self.embed_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0, seed=derived_seed(self.seed, "cls_token")),
            name="cls_token",
        )

    def check_inputs(self, images, padding_mask=None, check_values=True):
        """Raises a ValueError naming the problem if `images` cannot be embedded."""
        if padding_mask is not None:
            raise ValueError("ImageEncoder takes no `padding_mask`: every patch is real.")
        shape = tuple(images.shape)
        expected = (self.image_size, self.image_size, self.channels)
        if len(shape) != 4:
            raise ValueError(
                f"`images` must have rank 4 (batch, height, width, channels), got shape {shape}."
            )
        if shape[1:] != expected:
            raise ValueError(f"`images` must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}), got {shape}.")
        dtype = keras.backend.standardize_dtype(images.dtype)
        if "float" not in dtype:
            raise ValueError(
                f"`images` must be floating point, got dtype {dtype}; scale integer pixels first "
                "(e.g. `images.astype('float32') / 255`, then normalize)."
            )

    def teacher_features(self, teacher, images, student_features=None, padding_mask=None):
        """The teacher embeds the images with its own EMA patch embedding (the reference's
        `ema_local_encoder`)."""
        return teacher.embed(images)

    def token_positions(self):
        """The fixed sin-cos positions `(T, D)` of the patches."""
        return self.patch_embedding.positions[0]

    def embed(self, images, training=None, padding_mask=None):
        """Patch tokens with positions, `(B, T, D)`."""
        self.check_inputs(images, padding_mask)
        return self.patch_embedding(images)

    def prepend_extra_tokens(self, tokens):
        """The CLS token (no position) in front of `tokens`."""
        cls = ops.broadcast_to(ops.cast(self.cls_token, tokens.dtype), (ops.shape(tokens)[0], 1, self.embed_dim))
        return ops.concatenate([cls, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches + self.num_extra_tokens, self.embed_dim)
