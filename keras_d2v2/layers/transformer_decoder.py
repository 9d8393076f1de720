"""A transformer decoder over the patch grid: the alternative to the conv decoder where masked tokens
meet attention (MAE's decoder; fairseq's unused `TransformerDecoder` beside `Decoder2d`)."""

import math

import keras
from keras import ops

from keras_d2v2.layers.patch_embedding import sincos_positions_2d
from keras_d2v2.layers.random_state import derived_seed
from keras_d2v2.layers.transformer_block import TransformerBlock, bert_init


@keras.saving.register_keras_serializable(package="keras_d2v2")
class TransformerDecoder(keras.layers.Layer):
    """Pre-LN transformer decoder over a square grid of tokens (images).

    Input `(N, T, D)`: every position in row-major grid order, the encoded visible tokens and the
    mask fill in masked slots (the `Data2Vec2` student builds it exactly as for `ConvDecoder2D`).
    A Dense maps `D` to `decoder_dim`, fixed 2-D sin-cos positions of width `decoder_dim` are
    added to every slot (the fill carries no position of its own, as in MAE), `num_layers` pre-LN
    `TransformerBlock`s attend over all `T` slots, a LayerNorm and a Dense map to `output_dim`
    (`D` when None: data2vec 2.0's targets; `patch_size**2 * channels` for pixel targets).

    `call(x, attention_bias=None, return_layers=False)`: `attention_bias` `(N, T, T)` is added to
    every block's attention logits (MTO's recalibration forbids visible -> masked pairs with it);
    with `return_layers` the result is `(prediction, layers)`, `layers` each block's
    `(output, attention_probabilities)`, the latter float32 `(N, heads, T, T)`: what MTO's block
    terms read.

    Args:
        decoder_dim: int, width of the blocks; divisible by 4 (the 2-D positions) and `num_heads`.
        num_layers: int, number of blocks.
        num_heads: int, attention heads.
        mlp_ratio: float, MLP width relative to `decoder_dim`.
        output_dim: int or None, width of the prediction; None means the input's `D`.
        norm_eps: float, LayerNorm epsilon.
        input_dropout: float, dropout on the encoder output before the fill (as the conv decoder's).
        seed: int or None, seed of the initial weights.

    Example:
    >>> decoder = TransformerDecoder(decoder_dim=32, num_layers=2, num_heads=4)
    >>> decoder(np.zeros((2, 49, 16), "float32")).shape
    (2, 49, 16)
    """

    spatial_rank = 2

    def __init__(
        self,
        *,
        decoder_dim=512,
        num_layers=8,
        num_heads=16,
        mlp_ratio=4.0,
        output_dim=None,
        norm_eps=1e-6,
        input_dropout=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if decoder_dim % 4 or decoder_dim % num_heads:
            raise ValueError(
                f"`decoder_dim` ({decoder_dim}) must be divisible by 4 (2-D sin-cos positions) and by "
                f"`num_heads` ({num_heads})."
            )
        if int(num_layers) != num_layers or num_layers < 1:
            raise ValueError(f"`num_layers` must be an integer >= 1, got {num_layers}.")
        if output_dim is not None and (int(output_dim) != output_dim or output_dim < 1):
            raise ValueError(f"`output_dim` must be None or an integer >= 1, got {output_dim}.")
        self.decoder_dim = decoder_dim
        self.num_layers = int(num_layers)
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.output_dim = output_dim
        self.norm_eps = norm_eps
        self.input_dropout = input_dropout
        self.seed = seed

    def build(self, input_shape):
        num_tokens, dim = input_shape[-2], input_shape[-1]
        if num_tokens is None:
            raise ValueError("TransformerDecoder needs a fixed number of tokens (a square patch grid), got None.")
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"TransformerDecoder needs a square token grid, got {num_tokens} tokens.")

        def dense(units, name, fan_in):
            layer = keras.layers.Dense(
                units,
                kernel_initializer=bert_init(derived_seed(self.seed, name)),
                bias_initializer="zeros",
                dtype=self.dtype_policy,
                name=name,
            )
            layer.build((None, None, fan_in))
            return layer

        self.input_projection = dense(self.decoder_dim, "input_projection", dim)
        self.positions = ops.convert_to_tensor(sincos_positions_2d(self.decoder_dim, side))
        self.blocks = []
        for i in range(self.num_layers):
            block = TransformerBlock(
                num_heads=self.num_heads,
                mlp_ratio=self.mlp_ratio,
                norm_eps=self.norm_eps,
                layer_norm_first=True,
                seed=derived_seed(self.seed, f"block{i}"),
                dtype=self.dtype_policy,
                name=f"block{i}",
            )
            block.build((None, num_tokens, self.decoder_dim))
            self.blocks.append(block)
        self.norm = keras.layers.LayerNormalization(epsilon=self.norm_eps, dtype=self.dtype_policy, name="norm")
        self.norm.build((None, num_tokens, self.decoder_dim))
        self.projection = dense(self.output_dim or dim, "projection", self.decoder_dim)

    def call(self, x, padding_mask=None, attention_bias=None, return_layers=False, training=None):
        if padding_mask is not None:
            raise ValueError("TransformerDecoder decodes fixed image grids; it takes no `padding_mask`.")
        x = self.input_projection(x) + ops.cast(self.positions, self.compute_dtype)
        layers = []
        for block in self.blocks:
            x, _, *probs = block(x, attention_bias=attention_bias, training=training, return_attention=return_layers)
            if return_layers:
                layers.append((x, probs[0]))
        prediction = self.projection(self.norm(x))
        return (prediction, layers) if return_layers else prediction

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            decoder_dim=self.decoder_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            output_dim=self.output_dim,
            norm_eps=self.norm_eps,
            input_dropout=self.input_dropout,
            seed=self.seed,
        )
        return config
