"""The text encoder of data2vec 2.0: token + learned position embeddings, LayerNorm, main blocks."""

import keras
import numpy as np
from keras import ops

from keras_d2v2.layers.random_state import derived_seed
from keras_d2v2.layers.transformer_block import bert_init
from keras_d2v2.models.encoder import Encoder, is_concrete


@keras.saving.register_keras_serializable(package="keras_d2v2")
class TextEncoder(Encoder):
    """Transformer text encoder in the reference layout (`TextEncoder` + `TextLocalEncoder`).

    `embed(tokens)` gives the local features: token embedding (scale 1) plus a learned position
    embedding, then LayerNorm and dropout. Positions follow fairseq's `make_positions`: the
    non-padding tokens of a row are numbered from `pad_id + 1`; padding tokens get no token or
    position embedding (the reference's padding rows are zero and never trained). `encode(x,
    padding_mask)` runs the `depth` post-LN blocks with padded keys hidden and returns the hidden
    states with every block's FFN output (the target source). There is no CLS token (`<s>` is an
    ordinary token) and, as in every published text config, no prenet and no context LayerNorm.

    The EMA teacher of text is the blocks only, fed the student's embeddings: it is built with
    `blocks_only=True` and has no embedding weights.

    Args:
        vocab_size: int, size of the token vocabulary (ids `0 .. vocab_size - 1`).
        max_positions: int, longest sequence; the position table has `max_positions + pad_id + 1` rows.
        pad_id: int, id of the padding token.
        embed_dim, depth, num_heads, mlp_ratio, norm_eps, layer_norm_first: the blocks, as in
            `ImageEncoder`.
        dropout, attention_dropout, activation_dropout, post_mlp_dropout: block dropouts.
        embedding_dropout: float, dropout after the embedding LayerNorm.
        drop_path_rate: float, stochastic depth rising linearly over the blocks from 0.
        blocks_only: bool, build only the blocks (the teacher).
        seed: int or None, seed of the initial weights and of the dropout draws.

    Example:
    >>> encoder = TextEncoder(vocab_size=100, max_positions=32, embed_dim=32, depth=2, num_heads=4)
    >>> encoder(np.full((2, 16), 5)).shape
    (2, 16, 32)
    """

    input_name = "tokens"
    # The embedding LayerNorm takes the place of the context encoder's.
    post_ln_context_norm = False
    own_args = ("vocab_size", "max_positions", "pad_id", "embedding_dropout", "blocks_only")

    def __init__(
        self,
        *,
        vocab_size,
        max_positions=512,
        pad_id=1,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        norm_eps=1e-5,
        layer_norm_first=False,
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        post_mlp_dropout=0.1,
        embedding_dropout=0.1,
        drop_path_rate=0.0,
        blocks_only=False,
        seed=None,
        **kwargs,
    ):
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"`pad_id` must be a token id in [0, {vocab_size}), got {pad_id}.")
        super().__init__(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            norm_eps=norm_eps,
            layer_norm_first=layer_norm_first,
            dropout=dropout,
            attention_dropout=attention_dropout,
            activation_dropout=activation_dropout,
            post_mlp_dropout=post_mlp_dropout,
            drop_path_rate=drop_path_rate,
            seed=seed,
            **kwargs,
        )
        self.vocab_size = vocab_size
        self.max_positions = max_positions
        self.pad_id = pad_id
        self.embedding_dropout = embedding_dropout
        self.blocks_only = blocks_only
        self.num_tokens = None  # any length up to max_positions
        self.make_transformer()
        self.embedding_norm = None
        if not blocks_only:
            self.embedding_norm = self._layer_norm("embedding_norm")

    def teacher_config(self):
        """Config of the EMA teacher: the blocks only."""
        return {**self.get_config(), "name": "teacher", "blocks_only": True}

    def build_feature_encoder(self):
        if not self.blocks_only:
            self.token_embedding = self.add_weight(
                shape=(self.vocab_size, self.embed_dim),
                initializer=bert_init(derived_seed(self.seed, "token_embedding")),
                name="token_embedding",
            )
            self.position_embedding = self.add_weight(
                shape=(self.max_positions + self.pad_id + 1, self.embed_dim),
                initializer=bert_init(derived_seed(self.seed, "position_embedding")),
                name="position_embedding",
            )
            self.embedding_norm.build((None, None, self.embed_dim))

    def check_inputs(self, tokens, padding_mask=None, check_values=True):
        """Raises a ValueError naming the problem if `tokens` cannot be embedded. With
        `check_values`, ids are checked against the vocabulary when their values are known (eager
        calls, and the arrays `Data2Vec2.fit()` is given); training steps skip it, since reading
        values would stall every step on an accelerator."""
        if padding_mask is not None:
            raise ValueError(
                "TextEncoder takes no `padding_mask`: padding is where the tokens are `pad_id` "
                f"({self.pad_id})."
            )
        shape = tuple(tokens.shape)
        if len(shape) != 2:
            raise ValueError(f"`tokens` must have rank 2 (batch, sequence), got shape {shape}.")
        dtype = keras.backend.standardize_dtype(tokens.dtype)
        if "int" not in dtype:
            raise ValueError(f"`tokens` must be integer token ids, got dtype {dtype}.")
        if shape[1] is not None and shape[1] > self.max_positions:
            raise ValueError(
                f"`tokens` has {shape[1]} positions but the position table holds {self.max_positions} "
                "(`max_positions`); cut the text into shorter blocks."
            )
        if check_values and is_concrete(tokens) and int(np.prod(shape)):
            low, high = (int(ops.convert_to_numpy(f(tokens))) for f in (ops.min, ops.max))
            if low < 0 or high >= self.vocab_size:
                raise ValueError(
                    f"`tokens` holds ids in [{low}, {high}], outside the vocabulary [0, {self.vocab_size})."
                )

    def check_feature_encoder(self, name="encoder"):
        if self.blocks_only:
            raise ValueError(f"`{name}` was built with `blocks_only=True` (an EMA teacher) and has no embeddings.")

    def padding_mask(self, tokens, padding_mask=None):
        """`(B, T)` bool, True at padding tokens."""
        return ops.equal(tokens, self.pad_id)

    input_fault_names = ("invalid_token_ids",)

    def input_faults(self, tokens, padding_mask=None):
        tokens = ops.cast(tokens, "int32")
        outside = ops.logical_or(ops.less(tokens, 0), ops.greater_equal(tokens, self.vocab_size))
        return {"invalid_token_ids": ops.sum(ops.cast(outside, "float32"))}

    def input_fault_message(self, name, count):
        if name != "invalid_token_ids":
            raise KeyError(name)
        return f"`tokens` holds {count} ids outside the vocabulary [0, {self.vocab_size})"

    def embed(self, tokens, training=None, padding_mask=None):
        """Token + position embeddings, LayerNorm and dropout, `(B, T, D)`: the local features."""
        self.check_feature_encoder("This TextEncoder")
        self.check_inputs(tokens, padding_mask, check_values=not training)
        # Ids outside the vocabulary, which only a compiled step can reach (`check_inputs` refuses
        # them elsewhere), are clamped so that the step completes the same way on every backend
        # and `TrainingGuard` reports them (`input_faults`) instead of a backend's gather error.
        tokens = ops.clip(ops.cast(tokens, "int32"), 0, self.vocab_size - 1)
        real = ops.cast(ops.not_equal(tokens, self.pad_id), "int32")
        positions = ops.cumsum(real, axis=1) * real + self.pad_id
        keep = ops.cast(real, self.compute_dtype)[..., None]
        x = ops.take(self.token_embedding, tokens, axis=0) + ops.take(self.position_embedding, positions, axis=0)
        x = self.embedding_norm(ops.cast(x * keep, self.compute_dtype))
        if training and self.embedding_dropout > 0.0:
            x = keras.random.dropout(x, self.embedding_dropout, seed=self.seed_generator)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.embed_dim,)
