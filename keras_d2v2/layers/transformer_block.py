"""The data2vec 2.0 transformer block (`AltBlock`): post-LN by default, returns its FFN output."""

import keras
from keras import ops

from keras_d2v2.layers.random_state import ReplicaSeedGenerator, SavesRandomState, derived_seed


def bert_init(seed=None):
    """N(0, 0.02), the reference's `init_bert_params`. A fresh instance per weight, with its own
    `seed` (`derived_seed`): one shared seeded instance would give every layer of the same shape
    the same values."""
    return keras.initializers.RandomNormal(stddev=0.02, seed=seed)


@keras.saving.register_keras_serializable(package="keras_d2v2")
class TransformerBlock(SavesRandomState, keras.layers.Layer):
    """Self-attention + MLP block that returns `(output, ffn_output)`.

    Post-LN (the reference and every published data2vec 2.0 config):
    `r = LN1(h + Attn(h)); f = MLP(r); out = LN2(r + f)`. Pre-LN (`layer_norm_first=True`) is
    the standard `h = h + Attn(LN1(h)); f = MLP(LN2(h)); out = h + f`; the reference's own pre-LN
    branch drops the FFN residual and is deliberately not reproduced. `f`, the raw FFN (fc2)
    output before the residual and the final LayerNorm, is what the teacher's targets are made of.

    Args:
        num_heads: int, attention heads; must divide the input dimension.
        mlp_ratio: float, hidden size of the MLP relative to the input dimension.
        norm_eps: float, LayerNorm epsilon (1e-6 for images, 1e-5 for audio and text).
        layer_norm_first: bool, pre-LN instead of post-LN.
        dropout: float, dropout after the attention projection (`encoder_dropout`).
        attention_dropout: float, dropout on the attention probabilities.
        activation_dropout: float, dropout inside the MLP (after GELU and after fc2).
        post_mlp_dropout: float, dropout on the MLP output before the residual.
        drop_path_rate: float, stochastic-depth rate of both residual branches.
        seed: int or None, seed of the initial weights and of the dropout and drop-path draws.

    Example:
    >>> block = TransformerBlock(num_heads=4)
    >>> out, ffn = block(np.zeros((2, 10, 32), "float32"))
    >>> out.shape, ffn.shape
    ((2, 10, 32), (2, 10, 32))
    """

    def __init__(
        self,
        *,
        num_heads=12,
        mlp_ratio=4.0,
        norm_eps=1e-6,
        layer_norm_first=False,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        post_mlp_dropout=0.0,
        drop_path_rate=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.norm_eps = norm_eps
        self.layer_norm_first = layer_norm_first
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.post_mlp_dropout = post_mlp_dropout
        self.drop_path_rate = drop_path_rate
        self.seed = seed
        self.seed_generator = ReplicaSeedGenerator(seed)

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"TransformerBlock expects inputs of rank 3 (batch, tokens, dim), got shape {tuple(input_shape)}.")
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"`num_heads` ({self.num_heads}) must divide the token dimension ({dim}).")
        hidden = int(dim * self.mlp_ratio)

        def dense(units, name):
            return keras.layers.Dense(
                units,
                kernel_initializer=bert_init(derived_seed(self.seed, name)),
                bias_initializer="zeros",
                dtype=self.dtype_policy,
                name=name,
            )

        def norm(name):
            return keras.layers.LayerNormalization(epsilon=self.norm_eps, dtype=self.dtype_policy, name=name)

        self.qkv = dense(3 * dim, "qkv")
        self.attention_projection = dense(dim, "attention_projection")
        self.norm1 = norm("norm1")
        self.fc1 = dense(hidden, "fc1")
        self.fc2 = dense(dim, "fc2")
        self.norm2 = norm("norm2")
        for layer in (self.qkv, self.attention_projection, self.fc1):
            layer.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (hidden,))
        self.norm1.build(input_shape)
        self.norm2.build(input_shape)

    def _dropout(self, x, rate, training):
        if not training or rate == 0.0:
            return x
        return keras.random.dropout(x, rate, seed=self.seed_generator)

    def _drop_path(self, x, training):
        if not training or self.drop_path_rate == 0.0:
            return x
        keep = 1.0 - self.drop_path_rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        kept = ops.cast(keras.random.uniform(shape, seed=self.seed_generator) < keep, x.dtype)
        return x * kept / keep

    def attention(self, x, attention_bias=None, training=None, return_attention=False):
        """Multi-head self-attention with an optional additive bias `(B|1, H, T, T)`. With
        `return_attention`, returns `(output, probabilities)`, the float32 `(B, H, T, T)`
        probabilities before attention dropout (an explicit softmax instead of the fused kernel)."""
        batch, length, dim = ops.shape(x)[0], ops.shape(x)[1], x.shape[-1]
        head_dim = dim // self.num_heads
        qkv = ops.reshape(self.qkv(x), (batch, length, 3, self.num_heads, head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        probs = None
        if return_attention or (training and self.attention_dropout > 0.0):
            logits = ops.einsum("bqhd,bkhd->bhqk", q, k) * (head_dim**-0.5)
            logits = ops.cast(logits, "float32")
            if attention_bias is not None:
                logits = logits + ops.cast(attention_bias, "float32")
            probs = ops.softmax(logits, axis=-1)
            dropped = self._dropout(ops.cast(probs, v.dtype), self.attention_dropout, training)
            out = ops.einsum("bhqk,bkhd->bqhd", dropped, v)
        else:
            bias = None if attention_bias is None else ops.cast(attention_bias, q.dtype)
            out = ops.dot_product_attention(q, k, v, bias=bias)
        out = self.attention_projection(ops.reshape(out, (batch, length, dim)))
        out = self._dropout(out, self.dropout, training)
        return (out, probs) if return_attention else out

    def mlp(self, x, training=None):
        x = ops.gelu(self.fc1(x), approximate=False)
        x = self._dropout(x, self.activation_dropout, training)
        return self._dropout(self.fc2(x), self.activation_dropout, training)

    def call(self, x, attention_bias=None, training=None, return_attention=False):
        """Returns `(output, ffn_output)`, and the attention probabilities third with `return_attention`."""
        if "float" not in keras.backend.standardize_dtype(x.dtype):
            raise ValueError(f"TransformerBlock expects floating-point inputs, got dtype {keras.backend.standardize_dtype(x.dtype)}.")
        attention_input = self.norm1(x) if self.layer_norm_first else x
        attended = self.attention(attention_input, attention_bias, training, return_attention=return_attention)
        attended, probs = attended if return_attention else (attended, None)
        if self.layer_norm_first:
            x = x + self._drop_path(attended, training)
            ffn = self.mlp(self.norm2(x), training)
            out = x + self._drop_path(self._dropout(ffn, self.post_mlp_dropout, training), training)
        else:
            x = self.norm1(x + self._drop_path(attended, training))
            ffn = self.mlp(x, training)
            out = self.norm2(x + self._drop_path(self._dropout(ffn, self.post_mlp_dropout, training), training))
        return (out, ffn, probs) if return_attention else (out, ffn)

    def compute_output_shape(self, input_shape):
        return input_shape, input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            norm_eps=self.norm_eps,
            layer_norm_first=self.layer_norm_first,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            activation_dropout=self.activation_dropout,
            post_mlp_dropout=self.post_mlp_dropout,
            drop_path_rate=self.drop_path_rate,
            seed=self.seed,
        )
        return config
