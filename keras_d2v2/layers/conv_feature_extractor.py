"""The wav2vec 2.0 convolutional feature extractor that data2vec 2.0 audio uses (`layer_norm` mode)."""

import keras
from keras import ops

from keras_d2v2.layers.random_state import derived_seed

# The reference's `feature_encoder_spec`: (channels, kernel, stride) per layer; stride 320 (20 ms at
# 16 kHz) and a receptive field of 400 samples (25 ms) in all.
BASE_FEATURE_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


def check_feature_layers(feature_layers):
    """`feature_layers` as a tuple of `(channels, kernel, stride)` int triples, or a ValueError."""
    layers = tuple(tuple(layer) for layer in feature_layers)
    if not layers or any(len(layer) != 3 or any(int(v) != v or v < 1 for v in layer) for layer in layers):
        raise ValueError(
            f"`feature_layers` must be a non-empty list of (channels, kernel, stride) positive integers, got {feature_layers!r}."
        )
    return tuple(tuple(int(v) for v in layer) for layer in layers)


def conv_output_length(length, feature_layers):
    """Frames the conv stack makes of `length` samples: `(L - k) // s + 1` per layer, as the
    reference's `_get_feat_extract_output_lengths`. Works on ints and on integer tensors."""
    for _, kernel, stride in feature_layers:
        length = (length - kernel) // stride + 1
    return length


def receptive_field(feature_layers):
    """Samples that one output frame sees (400 for the reference's stack)."""
    field, jump = 1, 1
    for _, kernel, stride in feature_layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field


@keras.saving.register_keras_serializable(package="keras_d2v2")
class ConvFeatureExtractor(keras.layers.Layer):
    """Raw waveform `(B, samples)` to frame features `(B, frames, channels)`.

    Each layer is a bias-free strided Conv1D (kaiming-normal, as the reference), a LayerNorm over
    the channels (affine, eps 1e-5, computed in float32 like fairseq's `Fp32LayerNorm`) and exact
    GELU: fairseq's `ConvFeatureExtractionModel(mode="layer_norm", conv_bias=False)`. There is no
    gradient down-scaling: data2vec 2.0 sets `local_grad_mult=1`.

    Args:
        feature_layers: sequence of `(channels, kernel, stride)`; default the reference's 7 layers.
        seed: int or None, seed of the initial weights (`None`: Keras' global seed).

    Example:
    >>> extractor = ConvFeatureExtractor(feature_layers=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2)
    >>> extractor(np.zeros((2, 16000), "float32")).shape
    (2, 49, 32)
    """

    def __init__(self, *, feature_layers=BASE_FEATURE_LAYERS, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.feature_layers = check_feature_layers(feature_layers)
        self.channels = self.feature_layers[-1][0]
        self.seed = seed
        self.receptive_field = receptive_field(self.feature_layers)
        self.convs, self.norms = [], []
        for i, (channels, kernel, stride) in enumerate(self.feature_layers):
            self.convs.append(
                keras.layers.Conv1D(
                    channels,
                    kernel,
                    strides=stride,
                    use_bias=False,
                    # torch's kaiming_normal_: N(0, 2 / fan_in), not truncated.
                    kernel_initializer=keras.initializers.VarianceScaling(
                        2.0, "fan_in", "untruncated_normal", seed=derived_seed(seed, f"conv{i}")
                    ),
                    dtype=self.dtype_policy,
                    name=f"conv{i}",
                )
            )
            self.norms.append(keras.layers.LayerNormalization(epsilon=1e-5, dtype="float32", name=f"norm{i}"))

    def build(self, input_shape=None):
        in_channels = 1
        for conv, norm, (channels, _, _) in zip(self.convs, self.norms, self.feature_layers):
            conv.build((None, None, in_channels))
            norm.build((None, None, channels))
            in_channels = channels

    def output_length(self, num_samples):
        return conv_output_length(num_samples, self.feature_layers)

    def call(self, waveforms):
        x = ops.expand_dims(waveforms, -1)
        for conv, norm in zip(self.convs, self.norms):
            x = ops.gelu(norm(conv(x)), approximate=False)
        return x

    def compute_output_shape(self, input_shape):
        frames = None if input_shape[1] is None else self.output_length(input_shape[1])
        return (input_shape[0], frames, self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(feature_layers=[list(layer) for layer in self.feature_layers], seed=self.seed)
        return config
