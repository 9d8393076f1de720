"""The data2vec 2.0 convolutional decoders (`Decoder2d`, `Decoder1d`)."""

import math

import keras
from keras import ops

from keras_d2v2.layers.random_state import initializer_seed


def _xla_on_cpu():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    return False


def grouped_conv2d_matmul(x, kernel, groups):
    """Stride-1 'valid' grouped conv as one batched matmul over groups (im2col, group-major).

    Same result as `ops.conv`. On CPU, XLA's gradient of a grouped convolution is ~10x slower
    than this form (benchmarks/grouped_conv.py); `grouped_conv2d_per_group` is faster still.
    """
    k_h, k_w, group_in, out = kernel.shape
    height, width = x.shape[1] - k_h + 1, x.shape[2] - k_w + 1
    windows = [x[:, dy : dy + height, dx : dx + width, :] for dy in range(k_h) for dx in range(k_w)]
    patches = ops.reshape(ops.stack(windows, axis=3), (-1, k_h * k_w, groups, group_in))
    patches = ops.reshape(ops.transpose(patches, (2, 0, 1, 3)), (groups, -1, k_h * k_w * group_in))
    weights = ops.reshape(kernel, (k_h * k_w, group_in, groups, out // groups))
    weights = ops.reshape(ops.transpose(weights, (2, 0, 1, 3)), (groups, k_h * k_w * group_in, out // groups))
    result = ops.transpose(ops.matmul(patches, weights), (1, 0, 2))
    return ops.reshape(result, (-1, height, width, out))


def grouped_conv2d_per_group(x, kernel, groups, padding="valid"):
    """Stride-1 grouped conv as `groups` dense convs over channel slices, concatenated.

    Same result as `ops.conv` with the same `padding`. On CPU, XLA lowers a grouped convolution's
    gradient to a slow generic loop, while a dense conv per group reaches the CPU's conv kernels;
    for the image decoders this was 2-4x faster than the im2col matmul, whose stacked windows and
    group-major transposes cost more than its matmul (benchmarks/grouped_conv.py).
    """
    group_in, group_out = kernel.shape[2], kernel.shape[3] // groups
    outputs = [
        ops.conv(x[..., g * group_in : (g + 1) * group_in], kernel[..., g * group_out : (g + 1) * group_out], padding=padding)
        for g in range(groups)
    ]
    return ops.concatenate(outputs, axis=-1)


def same_grouped_conv(x, kernel, bias, groups, conv_impl="auto", pad_width=True):
    """Grouped stride-1 conv of `x` `(N, H, W, C)` with `kernel` `(k_h, k_w, C / groups, out)`,
    padded as PyTorch's `padding=k//2` followed by fairseq's `SamePad` (`k//2` before, `(k-1)//2`
    after: an even kernel drops the last position). `pad_width=False` leaves the width axis
    unpadded (a 1-D sequence laid out as a width-1 grid). `conv_impl` as in `ConvDecoder2D`."""
    k_h, k_w = kernel.shape[0], kernel.shape[1]
    kernel = ops.cast(kernel, x.dtype)
    if conv_impl == "auto":
        conv_impl = "per_group" if _xla_on_cpu() else "native"
    # Odd kernels pad k//2 on both sides, which is "same". A conv that pads its own input is
    # faster, forward and backward, than one over a padded copy: 16-35 % less time for the image
    # decoder's layer on JAX, TF and PyTorch CPUs (benchmarks/grouped_conv.py). The im2col form
    # needs the copy.
    padding = "same" if conv_impl != "grouped_matmul" and k_h % 2 and k_w % 2 and (pad_width or k_w == 1) else "valid"
    if padding == "valid":
        width_pad = [k_w // 2, (k_w - 1) // 2] if pad_width else [0, 0]
        x = ops.pad(x, [[0, 0], [k_h // 2, (k_h - 1) // 2], width_pad, [0, 0]])
    if conv_impl == "grouped_matmul":
        x = grouped_conv2d_matmul(x, kernel, groups)
    elif conv_impl == "per_group":
        x = grouped_conv2d_per_group(x, kernel, groups, padding=padding)
    else:
        x = ops.conv(x, kernel, padding=padding)
    return x + ops.cast(bias, x.dtype)


CONV_IMPLS = ("auto", "native", "grouped_matmul", "per_group")


def check_conv_impl(conv_impl):
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"`conv_impl` must be one of {', '.join(map(repr, CONV_IMPLS))}, got {conv_impl!r}.")


def torch_default_uniform(fan_in, seed=None):
    """PyTorch's default Linear/Conv init (kaiming-uniform with a=sqrt(5)): U(+-1/sqrt(fan_in))."""
    limit = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-limit, limit, seed=seed)


class _ConvDecoder(keras.layers.Layer):
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
        self.decoder_dim = decoder_dim
        self.num_layers = num_layers
        self.kernel_size = kernel_size
        self.groups = groups
        self.residual = residual
        self.projection_layers = int(projection_layers)
        self.projection_ratio = projection_ratio
        self.input_dropout = input_dropout
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
        kernel_window = (self.kernel_size,) * self.spatial_rank
        self.kernels, self.biases, self.norms = [], [], []
        channels = dim
        for i in range(self.num_layers):
            fan_in = channels // self.groups * self.kernel_size**self.spatial_rank
            self.kernels.append(
                self.add_weight(
                    shape=kernel_window + (channels // self.groups, self.decoder_dim),
                    initializer=torch_default_uniform(fan_in, initializer_seed(self.seed, f"conv{i}_kernel")),
                    name=f"conv{i}_kernel",
                )
            )
            self.biases.append(
                self.add_weight(
                    shape=(self.decoder_dim,),
                    initializer=torch_default_uniform(fan_in, initializer_seed(self.seed, f"conv{i}_bias")),
                    name=f"conv{i}_bias",
                )
            )
            norm = keras.layers.LayerNormalization(
                epsilon=1e-5, center=False, scale=False, dtype=self.dtype_policy, name=f"norm{i}"
            )
            norm.build((None, None, None, self.decoder_dim))
            self.norms.append(norm)
            channels = self.decoder_dim
        # The reference's projection: Linear(decoder_dim -> decoder_dim * ratio) -> GELU -> ... -> Linear(-> D).
        self.projections = []
        widths = [self.decoder_dim]
        for i in range(self.projection_layers - 1):
            widths.append(int(widths[-1] * self.projection_ratio) if i == 0 else widths[-1])
        widths.append(dim)
        for i, (fan_in, units) in enumerate(zip(widths[:-1], widths[1:])):
            name = "projection" if self.projection_layers == 1 else f"projection{i}"
            dense = keras.layers.Dense(
                units,
                kernel_initializer=torch_default_uniform(fan_in, initializer_seed(self.seed, f"{name}_kernel")),
                bias_initializer=torch_default_uniform(fan_in, initializer_seed(self.seed, f"{name}_bias")),
                dtype=self.dtype_policy,
                name=name,
            )
            dense.build((None, None, fan_in))
            self.projections.append(dense)

    def _conv(self, x, kernel, bias):
        if self.spatial_rank == 1:
            kernel = ops.expand_dims(kernel, 1)
        return same_grouped_conv(x, kernel, bias, self.groups, self.conv_impl, pad_width=self.spatial_rank == 2)

    def call(self, x, padding_mask=None):
        dim = x.shape[-1]
        height, width = self._grid(x.shape[1])
        x = ops.reshape(x, (-1, height, width, dim))
        # Padded positions are held at zero before every conv, as the convolution's own zero
        # padding past the end of an unpadded sequence, so they never reach real positions.
        real = None if padding_mask is None else ops.reshape(1.0 - ops.cast(padding_mask, x.dtype), (-1, height, width, 1))
        for kernel, bias, norm in zip(self.kernels, self.biases, self.norms):
            if real is not None:
                x = x * real
            residual = x
            x = self._conv(x, kernel, bias)
            x = ops.gelu(norm(x), approximate=False)
            if self.residual and residual.shape[-1] == x.shape[-1]:
                x = x + residual
        x = ops.reshape(x, (-1, height * width, self.decoder_dim))
        for i, dense in enumerate(self.projections):
            x = dense(x) if i == len(self.projections) - 1 else ops.gelu(dense(x), approximate=False)
        return x

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
            projection_layers=self.projection_layers,
            projection_ratio=self.projection_ratio,
            input_dropout=self.input_dropout,
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
