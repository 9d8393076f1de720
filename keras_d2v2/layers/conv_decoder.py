"""The data2vec 2.0 convolutional decoders (`Decoder2d`, `Decoder1d`)."""

import math

import keras
from keras import ops

from keras_d2v2.layers.grouped_conv import GroupedConvStack, check_conv_impl, torch_default_uniform
from keras_d2v2.layers.random_state import derived_seed


class _ConvDecoder(GroupedConvStack, keras.layers.Layer):
    """Conv decoder over a 1-D sequence or a 2-D grid of tokens; see `ConvDecoder2D`/`ConvDecoder1D`."""

    spatial_rank = None

    def __init__(
        self,
        *,
        decoder_dim=768,
        num_layers=6,
        kernel_size=3,
        groups=16,
        residual=True,
        projection_layers=1,
        projection_ratio=2.0,
        input_dropout=0.0,
        output_dim=None,
        conv_impl="auto",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_conv_impl(conv_impl)
        if decoder_dim % groups:
            raise ValueError(f"`groups` ({groups}) must divide `decoder_dim` ({decoder_dim}).")
        if int(projection_layers) != projection_layers or projection_layers < 1:
            raise ValueError(f"`projection_layers` must be an integer >= 1, got {projection_layers}.")
        if output_dim is not None and (int(output_dim) != output_dim or output_dim < 1):
            raise ValueError(f"`output_dim` must be None or an integer >= 1, got {output_dim}.")
        self.decoder_dim = decoder_dim
        self.num_layers = num_layers
        self.kernel_size = kernel_size
        self.groups = groups
        self.residual = residual
        self.projection_layers = int(projection_layers)
        self.projection_ratio = projection_ratio
        self.input_dropout = input_dropout
        self.output_dim = output_dim
        self.conv_impl = conv_impl
        self.seed = seed

    def _grid(self, num_tokens):
        """The token layout `(height, width)` the convolutions run over."""
        raise NotImplementedError

    def build(self, input_shape):
        num_tokens, dim = input_shape[-2], input_shape[-1]
        if num_tokens is not None:
            self._grid(num_tokens)
        if dim % self.groups:
            raise ValueError(f"`groups` ({self.groups}) must divide the token dimension ({dim}).")
        self.build_conv_stack(
            in_channels=dim,
            out_channels=self.decoder_dim,
            kernel_window=(self.kernel_size,) * self.spatial_rank,
            groups=self.groups,
            num_layers=self.num_layers,
        )
        # The reference's projection: Linear(decoder_dim -> decoder_dim * ratio) -> GELU -> ... -> Linear(-> D).
        self.projections = []
        widths = [self.decoder_dim]
        for i in range(self.projection_layers - 1):
            widths.append(int(widths[-1] * self.projection_ratio) if i == 0 else widths[-1])
        widths.append(self.output_dim or dim)
        for i, (fan_in, units) in enumerate(zip(widths[:-1], widths[1:])):
            name = "projection" if self.projection_layers == 1 else f"projection{i}"
            dense = keras.layers.Dense(
                units,
                kernel_initializer=torch_default_uniform(fan_in, derived_seed(self.seed, f"{name}_kernel")),
                bias_initializer=torch_default_uniform(fan_in, derived_seed(self.seed, f"{name}_bias")),
                dtype=self.dtype_policy,
                name=name,
            )
            dense.build((None, None, fan_in))
            self.projections.append(dense)

    def call(self, x, padding_mask=None):
        dim = x.shape[-1]
        height, width = self._grid(x.shape[1])
        x = ops.reshape(x, (-1, height, width, dim))
        real = None if padding_mask is None else ops.reshape(1.0 - ops.cast(padding_mask, x.dtype), (-1, height, width, 1))
        x = self.apply_conv_stack(
            x,
            groups=self.groups,
            conv_impl=self.conv_impl,
            real=real,
            residual=self.residual,
            pad_width=self.spatial_rank == 2,
        )
        x = ops.reshape(x, (-1, height * width, self.decoder_dim))
        for i, dense in enumerate(self.projections):
            x = dense(x) if i == len(self.projections) - 1 else ops.gelu(dense(x), approximate=False)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            decoder_dim=self.decoder_dim,
            num_layers=self.num_layers,
            kernel_size=self.kernel_size,
            groups=self.groups,
            residual=self.residual,
            projection_layers=self.projection_layers,
            projection_ratio=self.projection_ratio,
            input_dropout=self.input_dropout,
            output_dim=self.output_dim,
            conv_impl=self.conv_impl,
            seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_d2v2")
class ConvDecoder2D(_ConvDecoder):
    """Grouped-conv decoder over the patch grid that regresses the teacher's targets (`Decoder2d`).

    Input `(N, T, D)` tokens in row-major grid order (visible tokens and mask fill). Each of
    `num_layers` layers is a grouped `kernel_size x kernel_size` conv (PyTorch padding: `k//2`
    before, `(k-1)//2` after), a non-affine channel LayerNorm (eps 1e-5) and exact GELU. A
    layer's input is added to its output when `residual` is on and the channel counts match
    (so the first layer gets no residual when `D != decoder_dim`). A final Dense maps back to `D`.
    `call(x, padding_mask)` takes an optional `(N, T)` mask (True = padding, text and audio) and
    zeroes those positions before every conv, so that they do not reach the real ones.

    Args:
        decoder_dim: int, channels of the conv layers.
        num_layers: int, number of conv layers.
        kernel_size: int, conv kernel side.
        groups: int, conv groups; must divide both `D` and `decoder_dim`.
        residual: bool, the residual rule above.
        projection_layers: int, Dense layers mapping back to `D` (GELU between them); 1 in the reference.
        projection_ratio: float, width of the first hidden projection relative to `decoder_dim`.
        input_dropout: float, dropout on the encoder output before the fill (`decoder.input_dropout`).
        output_dim: int or None, width of the prediction; None (the reference) maps back to `D`.
        conv_impl: "auto", "native" (`ops.conv`), "grouped_matmul" (`grouped_conv2d_matmul`) or
            "per_group" (`grouped_conv2d_per_group`); "auto" picks per-group convs for XLA (JAX,
            TensorFlow) on CPU and native otherwise. All compute the same function with the same weights.
        seed: int or None, seed of the initial weights (`None`: Keras' global seed).

    Example:
    >>> decoder = ConvDecoder2D(decoder_dim=32, num_layers=2, kernel_size=3, groups=4)
    >>> decoder(np.zeros((2, 64, 16), "float32")).shape
    (2, 64, 16)
    """

    spatial_rank = 2

    def _grid(self, num_tokens):
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"ConvDecoder2D needs a square token grid, got {num_tokens} tokens.")
        return side, side


@keras.saving.register_keras_serializable(package="keras_d2v2")
class ConvDecoder1D(_ConvDecoder):
    """Grouped-conv decoder over a token sequence (`Decoder1d`), for audio frames and text tokens.

    As `ConvDecoder2D` with 1-D convolutions of width `kernel_size` along the sequence (an even
    kernel drops the last frame, as the reference's `SamePad`). The published text decoder uses
    `groups=1`, `residual=False` and `projection_layers=2`; the audio decoder `groups=16`,
    `residual=True`, one projection.

    Example:
    >>> decoder = ConvDecoder1D(decoder_dim=32, num_layers=2, kernel_size=9, groups=1, residual=False,
    ...                         projection_layers=2)
    >>> decoder(np.zeros((2, 16, 32), "float32")).shape
    (2, 16, 32)
    """

    spatial_rank = 1

    def _grid(self, num_tokens):
        return num_tokens, 1
