"""The image encoder of data2vec 2.0: patch embedding, CLS token, context encoder, main blocks."""

import keras
from keras import ops
from keras_d2v2.layers.random_state import ReplicaSeedGenerator, SavesRandomState, initializer_seed

from keras_d2v2.layers.patch_embedding import PatchEmbedding
from keras_d2v2.layers.transformer_block import encoder_stack


@keras.saving.register_keras_serializable(package="keras_d2v2")
class ImageEncoder(SavesRandomState, keras.layers.Layer):
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
    # The teacher re-embeds the raw images with its own EMA patch embedding (`ema_local_encoder`).
    teacher_embeds_input = True
    relative_positions = False
    takes_padding_mask = False

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
        super().__init__(**kwargs)
        if depth < 1:
            raise ValueError(f"`depth` must be >= 1, got {depth}.")
        self.image_size = image_size
        self.patch_size = patch_size
        self.channels = channels
        self.embed_dim = embed_dim
        self.depth = depth
        self.prenet_depth = prenet_depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.norm_eps = norm_eps
        self.layer_norm_first = layer_norm_first
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.post_mlp_dropout = post_mlp_dropout
        self.prenet_dropout = prenet_dropout
        self.drop_path_rate = drop_path_rate
        self.seed = seed
        self.num_extra_tokens = 1
        self.seed_generator = ReplicaSeedGenerator(seed)

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
        self.prenet_blocks, self.blocks, self.context_norm, self.final_norm = encoder_stack(
            prenet_depth=prenet_depth,
            depth=depth,
            drop_path_rate=drop_path_rate,
            seed=seed,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            norm_eps=norm_eps,
            layer_norm_first=layer_norm_first,
            dropout=dropout,
            attention_dropout=attention_dropout,
            activation_dropout=activation_dropout,
            post_mlp_dropout=post_mlp_dropout,
            dtype=self.dtype_policy,
        )

    def build(self, input_shape=None):
        self.patch_embedding.build((None, self.image_size, self.image_size, self.channels))
        self.cls_token = self.add_weight(
            shape=(1, 1, self.embed_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0, seed=initializer_seed(self.seed, "cls_token")),
            name="cls_token",
        )
        token_shape = (None, None, self.embed_dim)
        for layer in self.prenet_blocks + self.blocks + [n for n in (self.context_norm, self.final_norm) if n]:
            layer.build(token_shape)

    def check_inputs(self, images):
        """Raises a ValueError naming the problem if `images` cannot be embedded."""
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

    def teacher_config(self):
        """Config of the EMA teacher: a full copy (it embeds the images itself)."""
        return {**self.get_config(), "name": "teacher"}

    def padding_mask(self, images):
        """Images have no padding."""
        return None

    def embed(self, images, training=None):
        """Patch tokens with positions, `(B, T, D)`."""
        self.check_inputs(images)
        return self.patch_embedding(images)

    def encode(self, tokens, padding_mask=None, training=None, attention_bias=None, return_layers=False):
        """CLS + context encoder + main blocks on `tokens`; returns `(hidden, ffn_outputs)`.

        `attention_bias` `(B|1, 1|H, T+1, T+1)` is added to every block's attention logits (CLS
        first). With `return_layers`, also returns each block's (prenet and main, in order)
        `(output, attention_probabilities)`, the latter float32 `(B, H, T+1, T+1)`."""
        if padding_mask is not None:
            raise ValueError("ImageEncoder takes no padding mask: every patch is real.")
        cls = ops.broadcast_to(ops.cast(self.cls_token, tokens.dtype), (ops.shape(tokens)[0], 1, self.embed_dim))
        x = ops.concatenate([cls, tokens], axis=1)
        if self.context_norm is not None:
            x = self.context_norm(x)
        if training and self.prenet_dropout > 0.0:
            x = keras.random.dropout(x, self.prenet_dropout, seed=self.seed_generator)
        ffn_outputs, layers = [], []
        for i, block in enumerate(self.prenet_blocks + self.blocks):
            x, ffn, *probs = block(x, attention_bias=attention_bias, training=training, return_attention=return_layers)
            if i >= len(self.prenet_blocks):
                ffn_outputs.append(ffn[:, self.num_extra_tokens :])
            if return_layers:
                layers.append((x, probs[0]))
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (x, ffn_outputs, layers) if return_layers else (x, ffn_outputs)

    def call(self, images, training=None):
        hidden, _ = self.encode(self.embed(images), training=training)
        return hidden

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches + self.num_extra_tokens, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            patch_size=self.patch_size,
            channels=self.channels,
            embed_dim=self.embed_dim,
            depth=self.depth,
            prenet_depth=self.prenet_depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            norm_eps=self.norm_eps,
            layer_norm_first=self.layer_norm_first,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            activation_dropout=self.activation_dropout,
            post_mlp_dropout=self.post_mlp_dropout,
            prenet_dropout=self.prenet_dropout,
            drop_path_rate=self.drop_path_rate,
            seed=self.seed,
        )
        return config
