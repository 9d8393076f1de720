"""The encoder contract: what `Data2Vec2`, the classifiers and the evaluation call on every modality."""

import keras
import numpy as np
from keras import ops

from keras_d2v2.array_inputs import refuse_sequence_inputs
from keras_d2v2.layers.attention_bias import padding_attention_bias
from keras_d2v2.layers.random_state import ReplicaSeedGenerator, SavesRandomState, derived_seed
from keras_d2v2.layers.transformer_block import TransformerBlock

# The transformer-block arguments every encoder takes, in its constructor and its config.
BLOCK_ARGS = (
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "norm_eps",
    "layer_norm_first",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "post_mlp_dropout",
    "drop_path_rate",
)


def is_concrete(x):
    """Whether `x` holds values now (eager), rather than being traced into a compiled graph or
    being a placeholder of Keras' shape inference (which fills torch inputs with ones)."""
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope

    if isinstance(x, np.ndarray):
        return True
    if in_symbolic_scope():
        return False
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly() and hasattr(x, "numpy")
    return backend in ("torch", "numpy")


class Encoder(SavesRandomState, keras.layers.Layer):
    """Base of `ImageEncoder`, `TextEncoder` and `AudioEncoder`: a feature encoder and a transformer.

    The reference splits every modality the same way, and so does this contract:
    - `embed(inputs, padding_mask=None)`: the modality's feature encoder, raw input to local
      features `(B, T, D)` (patches, token embeddings, conv frames).
    - `relative_positions(tokens, ...)`: the position encoding to add to the tokens the
      transformer sees, for encoders whose positions depend on the masked sequence (audio's conv
      positional encoder); None where `embed` already added them.
    - `encode(x, padding_mask=None, positions=None)`: the transformer: extra tokens (CLS), the
      context encoder (LayerNorm, dropout, `prenet_depth` blocks) and the `depth` main blocks;
      returns the hidden states and the main blocks' FFN outputs (the teacher's target source).
    - `padding_mask(inputs, padding_mask=None)`: the `(B, T)` token padding (True = padding), or
      None where there is none; `check_inputs(inputs, padding_mask=None)`: a clear error for input
      the encoder cannot take; `teacher_config()`: the config of the EMA teacher built from it.

    A subclass sets `input_name` (its key in dict inputs), `extra_input_keys`, `num_extra_tokens`
    and `own_args` (its constructor arguments besides the blocks'), makes its feature encoder in
    `__init__` (then calls `make_transformer()`) and `build_feature_encoder()`, and implements the
    methods above that have no default here. The block stack, the config and `encode` are this
    class's. See docs/architecture.md, which has a new modality as an example.

    Example:
    >>> encoder = ImageEncoder(image_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4)
    >>> tokens = encoder.embed(np.zeros((2, 32, 32, 3), "float32"))  # (2, 64, 32)
    >>> hidden, ffn_outputs = encoder.encode(tokens)  # (2, 65, 32) and 2 x (2, 64, 32)
    """

    input_name = None
    # Keys of a dict input besides `input_name` (e.g. audio's "padding_mask").
    extra_input_keys = ()
    num_extra_tokens = 0
    # Post-LN normalizes the first block's input (the reference's context-encoder LayerNorm);
    # text normalizes its embeddings in the feature encoder instead.
    post_ln_context_norm = True
    own_args = ()

    def __init__(
        self,
        *,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        norm_eps=1e-5,
        layer_norm_first=False,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        post_mlp_dropout=0.0,
        drop_path_rate=0.0,
        prenet_depth=0,
        prenet_dropout=0.0,
        layerdrop=0.0,
        prenet_layerdrop=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if depth < 1:
            raise ValueError(f"`depth` must be >= 1, got {depth}.")
        for name, rate in (("layerdrop", layerdrop), ("prenet_layerdrop", prenet_layerdrop)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {rate}.")
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.norm_eps = norm_eps
        self.layer_norm_first = layer_norm_first
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.post_mlp_dropout = post_mlp_dropout
        self.drop_path_rate = drop_path_rate
        self.prenet_depth = prenet_depth
        self.prenet_dropout = prenet_dropout
        self.layerdrop = layerdrop
        self.prenet_layerdrop = prenet_layerdrop
        self.seed = seed
        self.seed_generator = ReplicaSeedGenerator(seed)

    def make_transformer(self):
        """Creates the prenet blocks, the main blocks and the context or final LayerNorm. A subclass
        calls it in `__init__` after creating its feature encoder's sublayers: the order in which
        sublayers are made is the order of the weights in saved files and optimizer states."""
        names = [f"prenet_block{i}" for i in range(self.prenet_depth)] + [f"block{i}" for i in range(self.depth)]
        # Stochastic depth rises linearly from 0 over prenet and main blocks together, as in the reference.
        rates = np.linspace(0.0, self.drop_path_rate, len(names))
        blocks = [
            TransformerBlock(
                num_heads=self.num_heads,
                mlp_ratio=self.mlp_ratio,
                norm_eps=self.norm_eps,
                layer_norm_first=self.layer_norm_first,
                dropout=self.dropout,
                attention_dropout=self.attention_dropout,
                activation_dropout=self.activation_dropout,
                post_mlp_dropout=self.post_mlp_dropout,
                drop_path_rate=float(rate),
                seed=derived_seed(self.seed, name),
                dtype=self.dtype_policy,
                name=name,
            )
            for name, rate in zip(names, rates)
        ]
        self.prenet_blocks, self.blocks = blocks[: self.prenet_depth], blocks[self.prenet_depth :]
        # Post-LN normalizes the first block's input, pre-LN the last block's output.
        self.context_norm = self.final_norm = None
        if self.layer_norm_first:
            self.final_norm = self._layer_norm("final_norm")
        elif self.post_ln_context_norm:
            self.context_norm = self._layer_norm("context_norm")

    def _layer_norm(self, name):
        return keras.layers.LayerNormalization(epsilon=self.norm_eps, dtype=self.dtype_policy, name=name)

    # --------------------------------------------------------------------------- the contract
    def build_feature_encoder(self):
        """Creates the feature encoder's weights (before the blocks')."""

    def build(self, input_shape=None):
        self.build_feature_encoder()
        token_shape = (None, None, self.embed_dim)
        for layer in self.prenet_blocks + self.blocks + [n for n in (self.context_norm, self.final_norm) if n]:
            layer.build(token_shape)

    def check_inputs(self, inputs, padding_mask=None, check_values=True):
        """Raises a ValueError naming the problem if `inputs` cannot be embedded. With
        `check_values`, values are checked too where they are known (eager calls, and the arrays
        `Data2Vec2.fit()` is given); training steps skip that, since reading values would stall
        every step on an accelerator."""
        raise NotImplementedError

    def embed(self, inputs, training=None, padding_mask=None):
        """Local features `(B, T, D)`: the feature encoder on raw `inputs`."""
        raise NotImplementedError

    # What `check_inputs` checks on values, counted inside a compiled step instead (streamed
    # inputs, whose values are not known up front): `Data2Vec2` logs each count as a metric of
    # this name, and `TrainingGuard` turns a count above 0 into `input_fault_message`'s error.
    input_fault_names = ()

    def input_faults(self, inputs, padding_mask=None):
        """`{name: float32 count}` of the value faults `check_inputs` would refuse, in-graph."""
        return {}

    def input_fault_message(self, name, count):
        """The error for `count` faults of kind `name`, worded as `check_inputs` words it."""
        raise KeyError(name)

    def check_feature_encoder(self, name="encoder"):
        """Raises a ValueError, naming the argument `name`, if this encoder was built without a
        feature encoder (a text or audio EMA teacher) and so cannot embed raw inputs."""

    def padding_mask(self, inputs, padding_mask=None):
        """`(B, T)` bool token padding (True = padding) for `inputs`, or None."""
        return None

    def teacher_config(self):
        """Config of the EMA teacher built from this encoder."""
        return {**self.get_config(), "name": "teacher"}

    def teacher_features(self, teacher, inputs, student_features=None, padding_mask=None):
        """What the EMA `teacher` encodes for `inputs`: by default the student's local features
        `student_features` (embedding dropout included, as the reference), embedded here when not
        given. An encoder whose teacher has its own feature encoder overrides this."""
        if student_features is None:
            student_features = self.embed(inputs, padding_mask=padding_mask)
        return student_features

    def token_positions(self):
        """The fixed position encoding `(T, D)` that `embed` adds to token t, or None where positions
        depend on the input (text's padding-aware ones, audio's relative ones)."""
        return None

    def relative_positions(self, tokens, *, mask=None, ids_keep=None, clone_batch=1, padding_mask=None):
        """The position encoding to add to the tokens `encode` will see, or None (the default) when
        `embed` added positions already. `tokens` `(B, T, D)` are the local features; with a
        multi-mask student, `mask` `(B * clone_batch, T)` (1 = masked) and `ids_keep`
        `(B * clone_batch, K)` say which tokens of each clone are visible, and the encoding of
        those is returned `(B * clone_batch, K, D)`; `padding_mask` is the clones' `(B *
        clone_batch, T)` padding."""
        return None

    def attention_bias(self, positions, padding_mask=None):
        """Additive attention bias `(N|1, H|1, T, T)` for tokens at `positions` `(N|1, T)` (their
        original indices), or None: padded keys hidden; subclasses add relative position biases."""
        return None if padding_mask is None else padding_attention_bias(padding_mask)

    def encode(self, x, padding_mask=None, positions=None, training=None, attention_bias=None, return_layers=False):
        """The transformer on tokens `x` `(N, T', D)` (positions already added); returns `(hidden,
        ffn_outputs)`: hidden states `(N, num_extra_tokens + T', D)` and each main block's FFN
        output `(N, T', D)` (extra tokens stripped).

        `padding_mask` `(N, T')` hides padded keys; `positions` `(N, T')` are the tokens' original
        indices (default `0..T'-1`) for relative position biases; `attention_bias` is added to every
        block's logits (extra tokens first). With `return_layers`, also returns each block's (prenet
        and main, in order) `(output, attention_probabilities)`, the latter float32 `(N, H, Q, K)`."""
        x = self.prepend_extra_tokens(x)
        if positions is None:
            positions = ops.arange(ops.shape(x)[1] - self.num_extra_tokens, dtype="int32")[None, :]
        bias = self.attention_bias(positions, padding_mask)
        if attention_bias is not None:
            bias = attention_bias if bias is None else bias + attention_bias
        if self.context_norm is not None:
            x = self.context_norm(x)
        if training and self.prenet_dropout > 0.0:
            x = keras.random.dropout(x, self.prenet_dropout, seed=self.seed_generator)
        ffn_outputs, layers = [], []
        for i, block in enumerate(self.prenet_blocks + self.blocks):
            main = i >= len(self.prenet_blocks)
            out, ffn, *probs = block(x, attention_bias=bias, training=training, return_attention=return_layers)
            layerdrop = self.layerdrop if main else self.prenet_layerdrop
            if training and layerdrop > 0.0:
                # One draw per step for the whole batch, as the reference's `np.random.random() >
                # layerdrop`. The block still runs: a data-dependent branch would not compile the
                # same on every backend.
                keep = keras.random.uniform((), seed=self.seed_generator) >= layerdrop
                out = ops.where(keep, out, x)
            x = out
            if main:
                ffn_outputs.append(ffn[:, self.num_extra_tokens :])
            if return_layers:
                layers.append((x, probs[0]))
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (x, ffn_outputs, layers) if return_layers else (x, ffn_outputs)

    def prepend_extra_tokens(self, x):
        """`x` with the encoder's extra tokens (CLS) in front; none by default."""
        return x

    def __call__(self, inputs, *args, **kwargs):
        refuse_sequence_inputs(inputs, self.input_name)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=None, padding_mask=None):
        """The hidden states `(B, num_extra_tokens + T, D)` of every token of `inputs`."""
        x = self.embed(inputs, training=training, padding_mask=padding_mask)
        padding = self.padding_mask(inputs, padding_mask)
        positions = self.relative_positions(x, padding_mask=padding)
        if positions is not None:
            x = x + positions
        hidden, _ = self.encode(x, padding_mask=padding, training=training)
        return hidden

    def mean_pool(self, hidden, inputs, padding_mask=None):
        """The mean of the hidden states `hidden` `(B, num_extra_tokens + T, D)` of `inputs` over
        their real tokens: extra tokens (CLS) and padding are left out, so a padded input pools as
        the unpadded one."""
        hidden = hidden[:, self.num_extra_tokens :]
        padding = self.padding_mask(inputs, padding_mask)
        if padding is None:
            return ops.mean(hidden, axis=1)
        weights = ops.cast(ops.logical_not(padding), hidden.dtype)[..., None]
        return ops.sum(hidden * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)

    @classmethod
    def get_layout_map(cls, device_mesh, *, model_dim="model"):
        """A `keras.distribution.LayoutMap` on `device_mesh` that splits every transformer block
        Megatron-style over the mesh axis `model_dim` (qkv and first MLP kernels by output column,
        the attention projection and second MLP kernels by input row); other weights are
        replicated. The patterns match the blocks of any encoder, student or teacher.

        Example:
        >>> mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"])
        >>> keras.distribution.set_distribution(keras.distribution.ModelParallel(
        ...     layout_map=ImageEncoder.get_layout_map(mesh), batch_dim_name="batch"))
        """
        layout_map = keras.distribution.LayoutMap(device_mesh)
        block = r".*block\d+"
        layout_map[rf"{block}/qkv/kernel"] = (None, model_dim)
        layout_map[rf"{block}/qkv/bias"] = (model_dim,)
        layout_map[rf"{block}/attention_projection/kernel"] = (model_dim, None)
        layout_map[rf"{block}/fc1/kernel"] = (None, model_dim)
        layout_map[rf"{block}/fc1/bias"] = (model_dim,)
        layout_map[rf"{block}/fc2/kernel"] = (model_dim, None)
        return layout_map

    def get_config(self):
        config = super().get_config()
        for name in BLOCK_ARGS + self.own_args:
            config[name] = getattr(self, name)
        config["seed"] = self.seed
        return config
