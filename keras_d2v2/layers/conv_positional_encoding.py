"""The relative (convolutional) positional encoder of data2vec 2.0 audio."""

import keras
from keras import ops

from keras_d2v2.layers.grouped_conv import GroupedConvStack, check_conv_impl


@keras.saving.register_keras_serializable(package="keras_d2v2")
class ConvPositionalEncoding(GroupedConvStack, keras.layers.Layer):
    """Positional information from a stack of grouped 1-D convolutions over frames `(N, T, D)`.

    `depth` layers of [grouped Conv1D (D -> D, kernel `max(3, width // depth)`, "same" padding with
    fairseq's `SamePad`), LayerNorm without affine parameters (eps 1e-5), exact GELU], with no
    residual inside. The layer returns the encoding; the audio encoder adds it to the frames. In
    the student it runs on the full sequence with masked frames set to zero, as in the reference.
    `call(x, padding_mask)` holds padded frames `(N, T)` (True = padding) at zero before every
    conv, as the convolution's zero padding past the end of an unpadded sequence.

    Args:
        width: int, the reference's `conv_pos_width` (95 in the published audio configs).
        depth: int, `conv_pos_depth` (5).
        groups: int, `conv_pos_groups` (16); must divide D.
        conv_impl: "auto", "native", "grouped_matmul" or "per_group", as in `ConvDecoder1D`.
        seed: int or None, seed of the initial weights (`None`: Keras' global seed).

    Example:
    >>> encoding = ConvPositionalEncoding(width=25, depth=5, groups=4)
    >>> encoding(np.zeros((2, 49, 48), "float32")).shape
    (2, 49, 48)
    """

    def __init__(self, *, width=95, depth=5, groups=16, conv_impl="auto", seed=None, **kwargs):
        super().__init__(**kwargs)
        if int(depth) != depth or depth < 1:
            raise ValueError(f"`depth` must be an integer >= 1, got {depth}.")
        check_conv_impl(conv_impl)
        self.width = width
        self.depth = int(depth)
        self.groups = groups
        self.conv_impl = conv_impl
        self.seed = seed
        self.kernel_size = max(3, width // self.depth)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.groups:
            raise ValueError(f"`groups` ({self.groups}) must divide the frame dimension ({dim}).")
        self.build_conv_stack(
            in_channels=dim, out_channels=dim, kernel_window=(self.kernel_size,), groups=self.groups, num_layers=self.depth
        )

    def call(self, x, padding_mask=None):
        dim = x.shape[-1]
        x = ops.expand_dims(x, 2)
        real = None if padding_mask is None else (1.0 - ops.cast(padding_mask, x.dtype))[:, :, None, None]
        x = self.apply_conv_stack(x, groups=self.groups, conv_impl=self.conv_impl, real=real, pad_width=False)
        return ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], dim))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(width=self.width, depth=self.depth, groups=self.groups, conv_impl=self.conv_impl, seed=self.seed)
        return config
