"""The data2vec 2.0 convolutional decoder (`Decoder2d`)."""

import math

import keras
from keras import ops


def torch_default_uniform(fan_in):
    """PyTorch's default Linear/Conv init (kaiming-uniform with a=sqrt(5)): U(+-1/sqrt(fan_in))."""
    limit = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-limit, limit)


@keras.saving.register_keras_serializable(package="keras_d2v2")
class ConvDecoder2D(keras.layers.Layer):
    """Grouped-conv decoder over the patch grid that regresses the teacher's targets.

    Input `(N, T, D)` tokens in row-major grid order (visible tokens and mask fill). Each of
    `num_layers` layers is a grouped `kernel_size x kernel_size` conv (PyTorch padding: `k//2`
    before, `(k-1)//2` after), a non-affine channel LayerNorm (eps 1e-5) and exact GELU. A
    layer's input is added to its output when `residual` is on and the channel counts match
    (so the first layer gets no residual when `D != decoder_dim`). A final Dense maps back to `D`.

    Args:
        decoder_dim: int, channels of the conv layers.
        num_layers: int, number of conv layers.
        kernel_size: int, conv kernel side.
        groups: int, conv groups; must divide both `D` and `decoder_dim`.
        residual: bool, the residual rule above.
        input_dropout: float, dropout on the encoder output before the fill (`decoder.input_dropout`).

    Example:
    >>> decoder = ConvDecoder2D(decoder_dim=32, num_layers=2, kernel_size=3, groups=4)
    >>> decoder(np.zeros((2, 64, 16), "float32")).shape
    (2, 64, 16)
    """

    def __init__(self, *, decoder_dim=768, num_layers=6, kernel_size=3, groups=16, residual=True, input_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if decoder_dim % groups:
            raise ValueError(f"`groups` ({groups}) must divide `decoder_dim` ({decoder_dim}).")
        self.decoder_dim = decoder_dim
        self.num_layers = num_layers
        self.kernel_size = kernel_size
        self.groups = groups
        self.residual = residual
        self.input_dropout = input_dropout

    def build(self, input_shape):
        num_tokens, dim = input_shape[-2], input_shape[-1]
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"ConvDecoder2D needs a square token grid, got {num_tokens} tokens.")
        if dim % self.groups:
            raise ValueError(f"`groups` ({self.groups}) must divide the token dimension ({dim}).")
        self.side = side
        self.convs, self.norms = [], []
        channels = dim
        for i in range(self.num_layers):
            conv = keras.layers.Conv2D(
                self.decoder_dim,
                self.kernel_size,
                groups=self.groups,
                kernel_initializer=torch_default_uniform(channels // self.groups * self.kernel_size**2),
                bias_initializer=torch_default_uniform(channels // self.groups * self.kernel_size**2),
                dtype=self.dtype_policy,
                name=f"conv{i}",
            )
            conv.build((None, None, None, channels))
            norm = keras.layers.LayerNormalization(
                epsilon=1e-5, center=False, scale=False, dtype=self.dtype_policy, name=f"norm{i}"
            )
            norm.build((None, None, None, self.decoder_dim))
            self.convs.append(conv)
            self.norms.append(norm)
            channels = self.decoder_dim
        self.projection = keras.layers.Dense(
            dim,
            kernel_initializer=torch_default_uniform(self.decoder_dim),
            bias_initializer=torch_default_uniform(self.decoder_dim),
            dtype=self.dtype_policy,
            name="projection",
        )
        self.projection.build((None, None, self.decoder_dim))

    def call(self, x):
        dim = x.shape[-1]
        x = ops.reshape(x, (-1, self.side, self.side, dim))
        before, after = self.kernel_size // 2, (self.kernel_size - 1) // 2
        for conv, norm in zip(self.convs, self.norms):
            residual = x
            x = conv(ops.pad(x, [[0, 0], [before, after], [before, after], [0, 0]]))
            x = ops.gelu(norm(x), approximate=False)
            if self.residual and residual.shape[-1] == x.shape[-1]:
                x = x + residual
        x = ops.reshape(x, (-1, self.side * self.side, self.decoder_dim))
        return self.projection(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            decoder_dim=self.decoder_dim,
            num_layers=self.num_layers,
            kernel_size=self.kernel_size,
            groups=self.groups,
            residual=self.residual,
            input_dropout=self.input_dropout,
        )
        return config
