"""The audio encoder of data2vec 2.0: conv feature extractor, conv positions, ALiBi, blocks."""

import keras
import numpy as np
from keras import ops

from keras_d2v2.layers.alibi import ALiBiBias
from keras_d2v2.layers.attention_bias import padding_attention_bias
from keras_d2v2.layers.conv_feature_extractor import (
    BASE_FEATURE_LAYERS,
    ConvFeatureExtractor,
    check_feature_layers,
    conv_output_length,
    receptive_field,
)
from keras_d2v2.layers.conv_positional_encoding import ConvPositionalEncoding
from keras_d2v2.layers.grouped_conv import torch_default_uniform
from keras_d2v2.layers.masking import gather_tokens
from keras_d2v2.layers.random_state import derived_seed
from keras_d2v2.models.encoder import Encoder, is_concrete


@keras.saving.register_keras_serializable(package="keras_d2v2")
class AudioEncoder(Encoder):
    """Speech encoder in the reference layout (`AudioEncoder` of data2vec 2.0).

    `embed(audio)` gives the local features `(B, T, D)`: each waveform normalized to zero mean and
    unit variance (the reference's `normalize: true`, done in its data loader), the wav2vec 2.0
    conv stack (20 ms frames for the default stack), LayerNorm and a linear projection.
    `relative_positions(x, mask=..., ids_keep=...)` is the conv positional encoding added to the
    frames: the student computes it on each clone's full sequence with masked frames zeroed, then
    keeps the visible frames. `encode(x, padding_mask, positions)` runs the context LayerNorm, the prenet and main
    blocks with an ALiBi bias on the frames' original `positions` (scaled by a learned per-head
    scale, clamped at 0), and returns the hidden states with every main block's FFN output.

    Variable-length batches: pass `padding_mask` `(B, samples)` (True = padding) to `embed` and
    `padding_mask`. A frame is padding when it lies past the conv output length of the row's real
    samples (the reference's rule); padded samples are excluded from the waveform statistics and
    set to zero, padded frames are zeroed before the conv positional encoder and hidden from
    attention, so real frames come out as for the unpadded clip.

    The EMA teacher of audio (`teacher_config()`) has no feature extractor or projection: it
    encodes the student's local features with its own positional encoder, ALiBi scale, context
    LayerNorm and blocks (`ema_local_encoder=False` in the reference).

    Args:
        feature_layers: `(channels, kernel, stride)` per conv layer; the reference's 7 by default.
        embed_dim, depth, prenet_depth, num_heads, mlp_ratio, norm_eps, layer_norm_first: as in
            `ImageEncoder` (audio uses norm_eps 1e-5).
        dropout, attention_dropout, activation_dropout, post_mlp_dropout: block dropouts.
        prenet_dropout: float, dropout after the context LayerNorm.
        layerdrop, prenet_layerdrop: float, probability that the student skips a main (prenet)
            block in a training step; the teacher never does.
        drop_path_rate: float, stochastic depth rising linearly over all blocks from 0.
        conv_pos_width, conv_pos_depth, conv_pos_groups: the conv positional encoder.
        learned_alibi_scale: bool, whether the per-head ALiBi scale is trained.
        normalize_waveform: bool, per-utterance normalization inside the model.
        sample_rate: int, the rate the model expects; see `check_sample_rate`.
        contextualize_only: bool, build without the feature extractor and projection (the teacher).
        seed: int or None, seed of the initial weights and of the dropout and layerdrop draws.

    Example:
    >>> encoder = AudioEncoder(feature_layers=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
    ...                        embed_dim=48, depth=2, num_heads=6, conv_pos_width=25, conv_pos_groups=4)
    >>> encoder(np.random.randn(2, 16000).astype("float32")).shape
    (2, 49, 48)
    """

    input_name = "audio"
    extra_input_keys = ("padding_mask",)
    own_args = (
        "feature_layers",
        "prenet_depth",
        "prenet_dropout",
        "layerdrop",
        "prenet_layerdrop",
        "conv_pos_width",
        "conv_pos_depth",
        "conv_pos_groups",
        "learned_alibi_scale",
        "normalize_waveform",
        "sample_rate",
        "contextualize_only",
    )

    def __init__(
        self,
        *,
        feature_layers=BASE_FEATURE_LAYERS,
        embed_dim=768,
        depth=12,
        prenet_depth=0,
        num_heads=12,
        mlp_ratio=4.0,
        norm_eps=1e-5,
        layer_norm_first=False,
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        post_mlp_dropout=0.1,
        prenet_dropout=0.1,
        layerdrop=0.05,
        prenet_layerdrop=0.05,
        drop_path_rate=0.0,
        conv_pos_width=95,
        conv_pos_depth=5,
        conv_pos_groups=16,
        learned_alibi_scale=True,
        normalize_waveform=True,
        sample_rate=16000,
        contextualize_only=False,
        seed=None,
        **kwargs,
    ):
        super().__init__(
            embed_dim=embed_dim,
            depth=depth,
            prenet_depth=prenet_depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            norm_eps=norm_eps,
            layer_norm_first=layer_norm_first,
            dropout=dropout,
            attention_dropout=attention_dropout,
            activation_dropout=activation_dropout,
            post_mlp_dropout=post_mlp_dropout,
            prenet_dropout=prenet_dropout,
            layerdrop=layerdrop,
            prenet_layerdrop=prenet_layerdrop,
            drop_path_rate=drop_path_rate,
            seed=seed,
            **kwargs,
        )
        self.feature_layers = check_feature_layers(feature_layers)
        self.receptive_field = receptive_field(self.feature_layers)
        self.conv_pos_width = conv_pos_width
        self.conv_pos_depth = conv_pos_depth
        self.conv_pos_groups = conv_pos_groups
        self.learned_alibi_scale = learned_alibi_scale
        self.normalize_waveform = normalize_waveform
        self.sample_rate = sample_rate
        self.contextualize_only = contextualize_only
        self.num_tokens = None  # any clip length

        if not contextualize_only:
            self.feature_extractor = ConvFeatureExtractor(
                feature_layers=self.feature_layers, seed=seed, dtype=self.dtype_policy, name="feature_extractor"
            )
            self.feature_norm = keras.layers.LayerNormalization(
                epsilon=1e-5, dtype=self.dtype_policy, name="feature_norm"
            )
            channels = self.feature_layers[-1][0]
            self.feature_projection = keras.layers.Dense(
                embed_dim,
                kernel_initializer=torch_default_uniform(channels, derived_seed(seed, "feature_projection_kernel")),
                bias_initializer=torch_default_uniform(channels, derived_seed(seed, "feature_projection_bias")),
                dtype=self.dtype_policy,
                name="feature_projection",
            )
        self.conv_positions = ConvPositionalEncoding(
            width=conv_pos_width, depth=conv_pos_depth, groups=conv_pos_groups, seed=seed, dtype=self.dtype_policy,
            name="conv_positions",
        )
        self.alibi = ALiBiBias(num_heads=num_heads, learned_scale=learned_alibi_scale, name="alibi")
        self.make_transformer()

    def teacher_config(self):
        """Config of the EMA teacher: everything but the feature extractor and its projection."""
        return {**self.get_config(), "name": "teacher", "contextualize_only": True}

    def build_feature_encoder(self):
        if not self.contextualize_only:
            self.feature_extractor.build((None, None))
            channels = self.feature_layers[-1][0]
            self.feature_norm.build((None, None, channels))
            self.feature_projection.build((None, None, channels))
        self.conv_positions.build((None, None, self.embed_dim))
        self.alibi.build()

    def output_length(self, num_samples):
        """Frames for `num_samples` samples (int or integer tensor)."""
        return conv_output_length(num_samples, self.feature_layers)

    def check_feature_encoder(self, name="encoder"):
        if self.contextualize_only:
            raise ValueError(
                f"`{name}` was built with `contextualize_only=True` (an EMA teacher) and has no feature extractor."
            )

    def check_sample_rate(self, sample_rate):
        """Raises a ValueError unless `sample_rate` is the rate this encoder was built for."""
        if sample_rate != self.sample_rate:
            raise ValueError(
                f"The audio is sampled at {sample_rate} Hz but the encoder expects {self.sample_rate} Hz "
                f"(`sample_rate`); resample it first, e.g. scipy.signal.resample_poly(audio, {self.sample_rate}, "
                f"{sample_rate}, axis=-1)."
            )

    def check_inputs(self, audio, padding_mask=None, check_values=True):
        """Raises a ValueError naming the problem if `audio` cannot be embedded. With `check_values`
        and concrete values (eager calls, and the arrays `Data2Vec2.fit()` is given), rows whose
        real samples are fewer than the receptive field are refused."""
        shape = tuple(audio.shape)
        if len(shape) != 2:
            raise ValueError(
                f"`audio` must have rank 2 (batch, samples) of mono waveforms, got shape {shape}"
                + ("; drop the channel axis (e.g. `audio[..., 0]`)." if len(shape) == 3 else ".")
            )
        dtype = keras.backend.standardize_dtype(audio.dtype)
        if "float" not in dtype:
            raise ValueError(
                f"`audio` must be a floating-point waveform, got dtype {dtype}; scale integer PCM first "
                "(e.g. `pcm.astype('float32') / 32768`)."
            )
        field = self.receptive_field
        if shape[1] is not None and shape[1] < field:
            raise ValueError(
                f"`audio` has {shape[1]} samples, fewer than the conv feature extractor's receptive field "
                f"of {field} samples ({1000 * field / self.sample_rate:.0f} ms at {self.sample_rate} Hz)."
            )
        if padding_mask is not None:
            if tuple(padding_mask.shape) != shape:
                raise ValueError(
                    f"`padding_mask` must have the shape of `audio` {shape}, got {tuple(padding_mask.shape)}."
                )
            if check_values and is_concrete(padding_mask) and shape[0]:
                real = np.sum(~ops.convert_to_numpy(padding_mask).astype(bool), axis=1)
                if real.min() < field:
                    raise ValueError(
                        f"Row {int(real.argmin())} of `audio` has {int(real.min())} real samples (the rest is "
                        f"padding), fewer than the receptive field of {field}; drop all-padding or too-short rows."
                    )

    input_fault_names = ("short_audio_rows",)

    def input_faults(self, audio, padding_mask=None):
        if padding_mask is None:
            return {"short_audio_rows": ops.zeros((), "float32")}
        real = ops.sum(1 - ops.cast(padding_mask, "int32"), axis=1)
        return {"short_audio_rows": ops.sum(ops.cast(ops.less(real, self.receptive_field), "float32"))}

    def input_fault_message(self, name, count):
        if name != "short_audio_rows":
            raise KeyError(name)
        return (
            f"{count} rows of `audio` have fewer real samples than the receptive field of {self.receptive_field} "
            "(the rest is padding); drop all-padding or too-short rows"
        )

    def padding_mask(self, audio, padding_mask=None):
        """`(B, T)` bool frame padding (True = padding) from the `(B, samples)` sample padding, or None."""
        if padding_mask is None:
            return None
        lengths = ops.sum(1 - ops.cast(padding_mask, "int32"), axis=1)
        frames = self.output_length(lengths)
        num_frames = self.output_length(audio.shape[1])
        return ops.arange(num_frames, dtype="int32")[None, :] >= ops.cast(frames, "int32")[:, None]

    def embed(self, audio, training=None, padding_mask=None):
        """Normalized waveform -> conv features -> LayerNorm -> projection, `(B, T, D)`."""
        self.check_feature_encoder("This AudioEncoder")
        self.check_inputs(audio, check_values=not training, padding_mask=padding_mask)
        x = ops.cast(audio, "float32")
        real = None if padding_mask is None else 1.0 - ops.cast(padding_mask, "float32")
        if self.normalize_waveform:
            # F.layer_norm over each utterance's real samples: biased variance, eps 1e-5.
            if real is None:
                mean, variance = ops.moments(x, axes=[1], keepdims=True)
            else:
                count = ops.sum(real, axis=1, keepdims=True)
                mean = ops.sum(x * real, axis=1, keepdims=True) / count
                variance = ops.sum(ops.square(x - mean) * real, axis=1, keepdims=True) / count
            x = (x - mean) * ops.rsqrt(variance + 1e-5)
        if real is not None:
            x = x * real
        x = self.feature_extractor(ops.cast(x, self.compute_dtype))
        return self.feature_projection(self.feature_norm(x))

    def relative_positions(self, tokens, *, mask=None, ids_keep=None, clone_batch=1, padding_mask=None):
        """The conv positional encoding, computed on each clone's full frame sequence with its
        masked frames (`mask`, 1 = masked) set to zero at the input, as the reference, and padded
        frames (`padding_mask`, True = padding) held at zero throughout; kept at the visible frames
        `ids_keep` when given."""
        x = tokens if clone_batch == 1 else ops.repeat(tokens, clone_batch, axis=0)
        if mask is not None:
            x = x * (1.0 - ops.cast(mask, x.dtype))[..., None]
        if padding_mask is None:
            encoding = self.conv_positions(x)
        else:
            encoding = self.conv_positions(x, padding_mask=padding_mask)
        return encoding if ids_keep is None else gather_tokens(encoding, ids_keep)

    def attention_bias(self, positions, padding_mask=None):
        """The ALiBi bias of frames at their original indices `positions`, plus padded keys hidden."""
        bias = self.alibi(positions)
        if padding_mask is not None:
            bias = bias + padding_attention_bias(padding_mask)
        return bias

    def compute_output_shape(self, input_shape):
        frames = None if input_shape[1] is None else self.output_length(input_shape[1])
        return (input_shape[0], frames, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config["feature_layers"] = [list(layer) for layer in self.feature_layers]
        return config
