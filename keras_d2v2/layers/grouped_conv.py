"""Grouped stride-1 convolutions in the reference's padding, and the conv stack that the decoders
and the audio conv positional encoder share."""

import math

import keras
from keras import ops

from keras_d2v2.layers.random_state import derived_seed


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

    Same result as `ops.conv`. On CPU, XLA's gradient of a grouped convolution is much slower than
    this form, and `grouped_conv2d_per_group` faster still (benchmarks/grouped_conv.py, figures in
    benchmarks/results).
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
    for the image decoders it beats the im2col matmul, whose stacked windows and group-major
    transposes cost more than its matmul (benchmarks/grouped_conv.py).
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
    # faster, forward and backward, than one over a padded copy on JAX, TF and PyTorch CPUs
    # (benchmarks/grouped_conv.py). The im2col form needs the copy.
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


class GroupedConvStack:
    """Mixin for a layer made of `num_layers` x [grouped conv, non-affine LayerNorm (eps 1e-5), exact
    GELU], as the reference's `Decoder1d`/`Decoder2d` blocks and its conv positional encoder.

    The weights belong to the layer itself (`conv{i}_kernel`, `conv{i}_bias`, sublayers `norm{i}`),
    each with PyTorch's default init from its own seed, so both users keep their weight names.
    """

    def build_conv_stack(self, *, in_channels, out_channels, kernel_window, groups, num_layers):
        """Creates the stack's weights; `kernel_window` is `(k,)` or `(k, k)`."""
        self.kernels, self.biases, self.norms = [], [], []
        channels = in_channels
        for i in range(num_layers):
            fan_in = channels // groups * math.prod(kernel_window)
            self.kernels.append(
                self.add_weight(
                    shape=tuple(kernel_window) + (channels // groups, out_channels),
                    initializer=torch_default_uniform(fan_in, derived_seed(self.seed, f"conv{i}_kernel")),
                    name=f"conv{i}_kernel",
                )
            )
            self.biases.append(
                self.add_weight(
                    shape=(out_channels,),
                    initializer=torch_default_uniform(fan_in, derived_seed(self.seed, f"conv{i}_bias")),
                    name=f"conv{i}_bias",
                )
            )
            norm = keras.layers.LayerNormalization(
                epsilon=1e-5, center=False, scale=False, dtype=self.dtype_policy, name=f"norm{i}"
            )
            norm.build((None, None, None, out_channels))
            self.norms.append(norm)
            channels = out_channels

    def apply_conv_stack(self, x, *, groups, conv_impl, real=None, residual=False, pad_width=True):
        """Runs the stack on `x` `(N, H, W, C)`. `real` `(N, H, W, 1)` (1 = real, 0 = padding) zeroes
        padded positions before every conv, as the conv's own zero padding past the end of an
        unpadded sequence, so they never reach real ones. With `residual`, a layer's input is
        added to its output where the channel counts match. A 1-D stack keeps its kernels
        `(k, C / groups, out)` and runs over `(N, T, 1, C)` with `pad_width=False`."""
        for kernel, bias, norm in zip(self.kernels, self.biases, self.norms):
            if real is not None:
                x = x * real
            layer_input = x
            if len(kernel.shape) == 3:
                kernel = ops.expand_dims(kernel, 1)
            x = same_grouped_conv(x, kernel, bias, groups, conv_impl, pad_width=pad_width)
            x = ops.gelu(norm(x), approximate=False)
            if residual and layer_input.shape[-1] == x.shape[-1]:
                x = x + layer_input
        return x
