"""`Data2Vec2`: the data2vec 2.0 pre-training model with its EMA teacher inside the training step."""

import math

import keras
import numpy as np
from keras import ops
from keras_d2v2.layers.random_state import ReplicaSeedGenerator, SavesRandomState

from keras_d2v2.layers.contextualized_targets import ContextualizedTargets
from keras_d2v2.layers.conv_decoder import ConvDecoder2D
from keras_d2v2.layers.inverse_block_masking import InverseBlockMasking, mask_info
from keras_d2v2.metrics import LastValue
from keras_d2v2.replicas import data_parallel_replica
from keras_d2v2.models.image_encoder import ImageEncoder


def gather_tokens(x, ids):
    """`x[n, ids[n, k]]` for `x` of shape (N, T, D) and `ids` of shape (N, K)."""
    ids = ops.broadcast_to(ops.expand_dims(ids, -1), (ops.shape(ids)[0], ops.shape(ids)[1], x.shape[-1]))
    return ops.take_along_axis(x, ids, axis=1)


def masked_std(y, weights):
    """Per-dimension (unbiased) std of the rows of `y` (N, T, D) where `weights` (N, T) is 1, averaged."""
    count = ops.sum(weights)
    w = weights[..., None]
    mean = ops.sum(y * w, axis=(0, 1)) / count
    var = ops.sum(ops.square(y - mean) * w, axis=(0, 1)) / (count - 1.0)
    return ops.mean(ops.sqrt(var + 1e-6))


STUDENT_MODES = ("visible_only", "full_sequence")
MASK_FILLS = ("noise", "token")
DEPTH_WEIGHTINGS = ("shallow", "uniform", "deep")
# Added to attention logits that recalibration forbids; finite, so float16 and bfloat16 stay NaN-free.
RECALIBRATION_BIAS = -1e4


def depth_weights(num_layers, weighting):
    """MTO's per-layer weights `w_l`, l = 0 (first block) ... L-1: "shallow" (L - l) / L,
    "uniform" 1, "deep" (l + 1) / L."""
    layers = np.arange(num_layers, dtype="float32")
    return {
        "shallow": (num_layers - layers) / num_layers,
        "uniform": np.ones(num_layers, "float32"),
        "deep": (layers + 1) / num_layers,
    }[weighting]


def singularity_loss(queries, query_weights, keys, key_weights):
    """MTO's data-singularity term per row, float32 `(N,)`: the mean of `relu(cos(q, k))**2` over
    the queries `q` of `queries` `(N, Q, D)` and keys `k` of `keys` `(N, K, D)` whose weights
    (`(N, Q)`, `(N, K)`, 1 = counts) are 1. The keys are constants (stop-gradient): the term moves
    the masked tokens away from the real ones, not the real ones away from them."""
    def unit(x):
        x = ops.cast(x, "float32")
        return x / ops.maximum(ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True)), 1e-6)

    cos = ops.einsum("nqd,nkd->nqk", unit(queries), ops.stop_gradient(unit(keys)))
    query_weights, key_weights = ops.cast(query_weights, "float32"), ops.cast(key_weights, "float32")
    pairs = query_weights[:, :, None] * key_weights[:, None, :]
    return ops.sum(ops.square(ops.relu(cos)) * pairs, axis=(1, 2)) / ops.maximum(ops.sum(pairs, axis=(1, 2)), 1.0)


def masked_query_entropy(probs, query_weights):
    """Attention entropy of the rows of `probs` `(N, H, Q, K)` whose `query_weights` `(N, Q)` are 1,
    divided by log(K) and averaged over heads and those rows; float32 `(N,)`."""
    probs = ops.cast(probs, "float32")
    entropy = -ops.sum(probs * ops.log(ops.maximum(probs, 1e-12)), axis=-1) / math.log(probs.shape[-1])
    weights = ops.cast(query_weights, "float32")[:, None, :]
    return ops.sum(entropy * weights, axis=(1, 2)) / ops.maximum(ops.sum(weights, axis=(1, 2)) * probs.shape[1], 1.0)


def _deserialize(obj):
    return keras.saving.deserialize_keras_object(obj) if isinstance(obj, dict) else obj


@keras.saving.register_keras_serializable(package="keras_d2v2")
class Data2Vec2(SavesRandomState, keras.Model):
    """data2vec 2.0 pre-training: multi-mask student, conv decoder, EMA teacher, contextualized targets.

    `call()` runs the student: it embeds the images once, repeats them `clone_batch` times,
    masks each copy independently, encodes only the visible tokens, fills the masked slots with
    `N(0, mask_noise_std**2)` noise and decodes every position. `compute_loss()` runs the rest of
    the reference's step: the EMA update of the teacher (the decayed average of the student's
    post-update weights, applied once per optimizer step), the teacher on the unmasked images once
    per sample, the contextualized targets, and the loss. So `fit()`, `steps_per_execution`,
    mixed precision and `keras.distribution` work unchanged on TensorFlow, JAX and PyTorch.

    Loss, as the reference scales it: the squared error summed over features and masked positions
    of every clone, times `loss_scale` (1/sqrt(D) when None), divided by the number of masked
    positions; plus the CLS term `cls_loss_weight * loss_scale * sum((cls - mean_T(y))**2)` summed
    (not averaged) over the `B * clone_batch` clones in the batch. That CLS weighting grows with
    the batch, as in the reference (its weight relative to a token is `cls_loss_weight * B * M`);
    keep it in mind when changing the per-device batch.

    Inputs: images `(B, H, W, C)` float, or a dict with `"images"`, an optional precomputed
    `"mask"` `(B, clone_batch, T)` (1 = masked, exactly `masking.num_visible(T)` zeros per row, as
    the reference's data loader makes them) and an optional `"mask_noise"`
    `(B, clone_batch, T_masked, D)` to reproduce a reference run. Labels, if the dataset has them,
    are ignored. Text takes int token ids `(B, T)` the same way, under the key `"tokens"`. Audio
    takes float waveforms `(B, samples)` under `"audio"`, with an optional `"padding_mask"`
    `(B, samples)` (True = padding) for batches of clips of different lengths; `T` is then the
    number of conv frames.
    Outputs: `"prediction"` `(B * clone_batch, T, D)`, `"mask"` `(B * clone_batch, T)`, for images
    `"cls"` `(B * clone_batch, D)`, for text and audio `"local_features"` `(B, T, D)` (the student's
    embeddings or CNN features, which the teacher encodes); the clones of sample `i` are rows
    `i * clone_batch ...`.

    Args:
        encoder: `ImageEncoder`, `TextEncoder` or `AudioEncoder`, the student; the teacher is built
            from `encoder.teacher_config()` (images: a full copy; text: the blocks only; audio:
            everything but the feature extractor).
        decoder: `ConvDecoder2D` (images) or `ConvDecoder1D` (text, audio).
        masking: `InverseBlockMasking`, `RandomMasking` or `BlockMasking1D` (its `clone_batch` is the
            number of masks per sample).
        targets: `ContextualizedTargets`; `top_k` must not exceed `encoder.depth`.
        mask_noise_std: float, std of the noise placed in masked slots of the decoder input.
        loss_scale: float or None; None means 1/sqrt(embed_dim).
        cls_loss_weight: float, weight of the CLS regression (0 turns it off).
        ema_decay, ema_end_decay, ema_anneal_end_step: the teacher's decay rises linearly from
            `ema_decay` to `ema_end_decay` over `ema_anneal_end_step` updates; a decay of 1 freezes it.
        min_target_var, min_pred_var, collapse_check_after: collapse guard; after
            `collapse_check_after` updates training stops when the target (prediction) std falls
            below `min_target_var` (`min_pred_var`); 0 disables a check.
        decay_1d_weights: bool, let `compile()` keep weight decay on 1-D weights (see `compile`).
        seed: int or None, seed of the mask noise, the decoder-input dropout and the MTO token's
            initial value. The builders (`Data2Vec2.image(seed=...)`, `from_preset`) also derive the
            masking, encoder and decoder seeds from their `seed`, so it fixes the initial weights too.

    Masked token optimization (MTO; docs/mto.md; all off by default, which is the reference):
        student_mode: "visible_only" (the reference: the student encodes the visible tokens only)
            or "full_sequence" (images only: every position enters the student, masked ones as the
            fill plus their position, data2vec 1.0 / SimMIM style; the decoder takes the encoder's
            output at every position).
        mask_fill: "noise" (`N(0, mask_noise_std**2)` per slot), "token" (one learnable token,
            `mask_token`, N(0, 0.02**2) at init) or None: "noise" for "visible_only", "token" for
            "full_sequence". Fills the decoder input (visible_only) or the encoder input.
        attention_recalibration: bool, full_sequence only: visible queries (and CLS) never attend
            to masked keys.
        singularity_loss_weight: float, weight of the data-singularity term (needs
            `mask_fill="token"`): `mean relu(cos(mask_token, stop_gradient(x_k)))**2` over the real
            tokens `x_k` beside it at the insertion point, plus in full_sequence the same term
            between each block's masked and visible outputs, weighted by depth. Logged as
            `singularity_loss`.
        entropy_loss_weight: float, full_sequence only: weight of the attention entropy of the
            masked query rows (normalized by log of the number of keys, averaged, depth-weighted
            sum over blocks), logged as `entropy_loss`.
        entropy_sign: +1 minimizes that entropy, -1 maximizes it.
        depth_weighting: "shallow" (w_l = (L - l) / L), "uniform" or "deep" (w_l = (l + 1) / L),
            over the student's L blocks (prenet included).

    Example:
    >>> model = Data2Vec2.image(preset="tiny_test")
    >>> model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05))
    >>> model.fit(np.random.rand(8, 32, 32, 3).astype("float32"), batch_size=4, epochs=1)
    """

    def __init__(
        self,
        *,
        encoder,
        decoder,
        masking,
        targets,
        mask_noise_std=0.01,
        loss_scale=None,
        cls_loss_weight=0.01,
        ema_decay=0.9998,
        ema_end_decay=0.99999,
        ema_anneal_end_step=100_000,
        min_target_var=0.0,
        min_pred_var=0.0,
        collapse_check_after=5000,
        decay_1d_weights=False,
        seed=None,
        student_mode="visible_only",
        mask_fill=None,
        attention_recalibration=False,
        singularity_loss_weight=0.0,
        entropy_loss_weight=0.0,
        entropy_sign=1.0,
        depth_weighting="shallow",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = _deserialize(encoder)
        self.decoder = _deserialize(decoder)
        self.masking = _deserialize(masking)
        self.targets = _deserialize(targets)
        if self.targets.top_k > self.encoder.depth:
            raise ValueError(
                f"`targets.top_k` ({self.targets.top_k}) is larger than `encoder.depth` ({self.encoder.depth}): "
                "only main blocks give targets."
            )
        if not 0.0 <= ema_decay <= 1.0 or not 0.0 <= ema_end_decay <= 1.0:
            raise ValueError(f"EMA decays must be in [0, 1], got {ema_decay} and {ema_end_decay}.")
        self.mask_noise_std = mask_noise_std
        self.loss_scale = loss_scale
        self.cls_loss_weight = cls_loss_weight
        self.min_target_var = min_target_var
        self.min_pred_var = min_pred_var
        self.collapse_check_after = collapse_check_after
        self.decay_1d_weights = decay_1d_weights
        self.seed = seed
        self.seed_generator = ReplicaSeedGenerator(seed)
        self._ema_defaults = (ema_decay, ema_end_decay, ema_anneal_end_step)

        # Images have a fixed number of tokens (checked here); text takes any length per batch.
        self.num_tokens = self.encoder.num_tokens
        self.num_visible = None if self.num_tokens is None else self.masking.num_visible(self.num_tokens)
        self.embed_dim = self.encoder.embed_dim
        self._init_mto(student_mode, mask_fill, attention_recalibration, singularity_loss_weight,
                       entropy_loss_weight, entropy_sign, depth_weighting)

        self.teacher = self.encoder.__class__.from_config(self.encoder.teacher_config())
        # Layers deserialized from a `.keras` file arrive already built.
        for layer, shape in ((self.encoder, None), (self.teacher, None), (self.decoder, (None, self.num_tokens, self.embed_dim))):
            if not layer.built:
                layer.build(shape)
        # After build: sublayers made in build() would otherwise come out trainable.
        self.teacher.trainable = False
        student_by_path = {v.path.split("/", 1)[1]: v for v in self.encoder.weights}
        self._ema_pairs = []
        for teacher in self.teacher.weights:
            student = student_by_path.get(teacher.path.split("/", 1)[1])
            if student is None:
                raise RuntimeError(f"Teacher weight {teacher.path} has no student weight of the same path.")
            self._ema_pairs.append((student, teacher))
        self.reset_teacher()

        def state(name, value, dtype):
            return self.add_weight(shape=(), initializer=keras.initializers.Constant(value), dtype=dtype, trainable=False, name=name)

        self.num_updates = state("num_updates", 0, "int32")
        self.teacher_updates = state("teacher_updates", 0, "int32")
        self.ema_decay = state("ema_decay", ema_decay, "float32")
        self.ema_end_decay = state("ema_end_decay", ema_end_decay, "float32")
        self.ema_anneal_end_step = state("ema_anneal_end_step", ema_anneal_end_step, "float32")

        self.regression_loss_tracker = keras.metrics.Mean(name="regression_loss")
        self.cls_loss_tracker = keras.metrics.Mean(name="cls_loss")
        self.target_var_tracker = LastValue(name="target_var")
        self.pred_var_tracker = LastValue(name="pred_var")
        self.ema_decay_tracker = LastValue(name="ema_decay")
        self.singularity_tracker = keras.metrics.Mean(name="singularity_loss") if singularity_loss_weight else None
        self.entropy_tracker = keras.metrics.Mean(name="entropy_loss") if entropy_loss_weight else None
        self.built = True

    def _init_mto(self, student_mode, mask_fill, recalibration, singularity_weight, entropy_weight, entropy_sign,
                  depth_weighting):
        """Checks the MTO arguments and makes the mask token (only when used: MTO off is the reference)."""
        def choice(name, value, options):
            if value not in options:
                raise ValueError(f"`{name}` must be one of {options}, got {value!r}.")

        choice("student_mode", student_mode, STUDENT_MODES)
        full = student_mode == "full_sequence"
        mask_fill = mask_fill or ("token" if full else "noise")
        choice("mask_fill", mask_fill, MASK_FILLS)
        choice("depth_weighting", depth_weighting, DEPTH_WEIGHTINGS)
        choice("entropy_sign", entropy_sign, (1.0, -1.0))
        if full and not self.encoder.teacher_embeds_input:
            raise ValueError(
                '`student_mode="full_sequence"` is implemented for images only; text and audio students '
                'encode the visible tokens (`student_mode="visible_only"`).'
            )
        for name, value in (("singularity_loss_weight", singularity_weight), ("entropy_loss_weight", entropy_weight)):
            if not value >= 0.0:
                raise ValueError(f"`{name}` must be >= 0, got {value}.")
        if not full and (recalibration or entropy_weight):
            raise ValueError(
                '`attention_recalibration` and `entropy_loss_weight` need `student_mode="full_sequence"`: '
                "a visible_only student never attends to a masked position."
            )
        if singularity_weight and mask_fill != "token":
            raise ValueError('`singularity_loss_weight` needs `mask_fill="token"` (it constrains the learnable token).')
        self.student_mode, self.mask_fill = student_mode, mask_fill
        self.attention_recalibration = bool(recalibration)
        self.singularity_loss_weight, self.entropy_loss_weight = float(singularity_weight), float(entropy_weight)
        self.entropy_sign, self.depth_weighting = float(entropy_sign), depth_weighting
        num_layers = len(getattr(self.encoder, "prenet_blocks", [])) + len(self.encoder.blocks)
        self._depth_weights = depth_weights(num_layers, depth_weighting)
        self.mask_token = None
        if mask_fill == "token":
            self.mask_token = self.add_weight(
                shape=(self.embed_dim,),
                initializer=keras.initializers.RandomNormal(stddev=0.02, seed=None if self.seed is None else self.seed + 3),
                name="mask_token",
            )

    @classmethod
    def image(cls, preset=None, **overrides):
        """An image model from a preset name (see `keras_d2v2.presets`) and/or explicit arguments."""
        from keras_d2v2.presets import image_model

        return image_model(preset, **overrides)

    @classmethod
    def text(cls, preset=None, **overrides):
        """A text model from a preset name (see `keras_d2v2.presets`) and/or explicit arguments."""
        from keras_d2v2.presets import text_model

        return text_model(preset, **overrides)

    @classmethod
    def audio(cls, preset=None, **overrides):
        """An audio model from a preset name (see `keras_d2v2.presets`) and/or explicit arguments."""
        from keras_d2v2.presets import audio_model

        return audio_model(preset, **overrides)

    @classmethod
    def from_preset(cls, preset, **overrides):
        """A model from a built-in preset name such as `"image_base"` or `"text_tiny"`
        (`keras_d2v2.presets.preset_names()`), or from a directory written by `save_to_preset`."""
        from keras_d2v2.presets import from_preset

        return from_preset(preset, **overrides)

    def save_to_preset(self, directory):
        """Writes this model, weights included, to `directory`; `Data2Vec2.from_preset(directory)` restores it."""
        from keras_d2v2.presets import save_to_preset

        save_to_preset(self, directory)

    # ----------------------------------------------------------------------------------- student
    def _unpack(self, inputs):
        """`(source, mask, mask_noise, padding_mask)` from an input array or dict."""
        if isinstance(inputs, dict):
            name = self.encoder.input_name
            keys = [name, "mask", "mask_noise"] + (["padding_mask"] if self.encoder.takes_padding_mask else [])
            if name not in inputs or set(inputs) - set(keys):
                raise ValueError(
                    f"Dict inputs take the keys '{name}' (required), {', '.join(repr(k) for k in keys[1:])}; "
                    f"got {sorted(inputs)}."
                )
            return inputs[name], inputs.get("mask"), inputs.get("mask_noise"), inputs.get("padding_mask")
        return inputs, None, None, None

    def _padding_kwargs(self, padding_mask):
        return {} if padding_mask is None else {"padding_mask": padding_mask}

    def _per_sample(self, value, name, tail):
        """Checks a per-sample `(B, clone_batch, *tail)` input and flattens it to `(B * clone_batch, *tail)`."""
        expected = (None, self.masking.clone_batch) + tail
        shape = tuple(value.shape)
        if len(shape) != len(expected) or shape[1:] != expected[1:]:
            raise ValueError(f"`{name}` must have shape (batch, clone_batch, ...) = {expected}, got {shape}.")
        return ops.reshape(value, (-1,) + tail)

    def call(self, inputs, training=None):
        source, mask, mask_noise, input_padding = self._unpack(inputs)
        tokens = self.encoder.embed(source, training=training, **self._padding_kwargs(input_padding))
        padding = self.encoder.padding_mask(source, **self._padding_kwargs(input_padding))
        num_tokens = tokens.shape[1]
        num_visible = self.masking.num_visible(num_tokens)
        if mask is None:
            mask = self.masking(tokens)
        else:
            mask = ops.cast(self._per_sample(mask, "mask", (num_tokens,)), "float32")
        if self.student_mode == "full_sequence":
            return self._full_sequence_student(tokens, mask, mask_noise, training)
        ids_keep, ids_restore = mask_info(mask, num_visible)
        # Visible tokens of each clone straight from the un-repeated tokens: no (B * M, T, D) copy.
        sample = ops.arange(ops.shape(ids_keep)[0], dtype="int32") // self.masking.clone_batch
        flat_ids = sample[:, None] * num_tokens + ops.cast(ids_keep, "int32")
        visible = ops.take(ops.reshape(tokens, (-1, self.embed_dim)), flat_ids, axis=0)
        visible_padding = clone_padding = None
        if padding is not None:
            visible_padding = ops.take(ops.reshape(padding, (-1,)), flat_ids, axis=0)
            clone_padding = ops.repeat(padding, self.masking.clone_batch, axis=0)
        position_kwargs = {}
        if self.encoder.relative_positions:
            # Audio: conv positions from each clone's full sequence with its masked frames zeroed,
            # then kept at the visible frames; ALiBi from the frames' original indices.
            clones = ops.repeat(tokens, self.masking.clone_batch, axis=0)
            positions = self.encoder.positional_encoding(clones, mask, padding_mask=clone_padding)
            visible = visible + gather_tokens(positions, ids_keep)
            position_kwargs["positions"] = ids_keep
        hidden, _ = self.encoder.encode(visible, padding_mask=visible_padding, training=training, **position_kwargs)

        x = hidden
        if training and self.decoder.input_dropout > 0.0:
            x = keras.random.dropout(x, self.decoder.input_dropout, seed=self.seed_generator)
        x = x[:, self.encoder.num_extra_tokens :]
        num_masked = num_tokens - num_visible
        fill_shape = (ops.shape(x)[0], num_masked, self.embed_dim)
        if self.mask_token is not None:
            self._check_no_mask_noise(mask_noise)
            fill = ops.broadcast_to(ops.cast(self.mask_token, x.dtype), fill_shape)
        elif mask_noise is None:
            fill = keras.random.normal(fill_shape, stddev=self.mask_noise_std, seed=self.seed_generator)
        else:
            fill = self._per_sample(mask_noise, "mask_noise", (num_masked, self.embed_dim))
        outputs = {}
        if self.singularity_loss_weight:
            real = ops.ones_like(x[..., 0]) if visible_padding is None else 1.0 - ops.cast(visible_padding, "float32")
            outputs["singularity_loss"] = self._token_singularity(x, real)
        x = ops.concatenate([x, ops.cast(fill, x.dtype)], axis=1)
        decoder_kwargs = {} if padding is None else {"padding_mask": clone_padding}
        prediction = self.decoder(gather_tokens(x, ids_restore), **decoder_kwargs)
        outputs.update(prediction=prediction, mask=mask)
        if self.encoder.num_extra_tokens:
            outputs["cls"] = hidden[:, 0]
        if not self.encoder.teacher_embeds_input:
            # The teacher encodes these very embeddings (dropout draw included), as the reference does.
            outputs["local_features"] = tokens
        return outputs

    def _check_no_mask_noise(self, mask_noise):
        if mask_noise is not None:
            raise ValueError(
                f'`mask_noise` is an input of the reference student only (student_mode="visible_only", '
                f'mask_fill="noise"); this model has student_mode={self.student_mode!r}, mask_fill={self.mask_fill!r}.'
            )

    def _token_singularity(self, real_tokens, real_weights):
        """The data-singularity term at the mask token's insertion point, per row `(N,)`."""
        token = ops.reshape(ops.convert_to_tensor(self.mask_token), (1, 1, self.embed_dim))
        token = ops.broadcast_to(token, (ops.shape(real_tokens)[0], 1, self.embed_dim))
        return singularity_loss(token, ops.ones_like(token[..., 0]), real_tokens, real_weights)

    def _full_sequence_student(self, tokens, mask, mask_noise, training):
        """Every position through the student: masked ones as the fill plus their position; the
        decoder reads the encoder's output at every position (no gather, no noise)."""
        self._check_no_mask_noise(mask_noise)
        real = ops.repeat(tokens, self.masking.clone_batch, axis=0)
        masked = ops.cast(mask, real.dtype)[..., None]
        if self.mask_token is not None:
            fill = ops.cast(self.mask_token, real.dtype)
        else:
            fill = ops.cast(keras.random.normal(ops.shape(real), stddev=self.mask_noise_std, seed=self.seed_generator), real.dtype)
        positions = ops.cast(self.encoder.patch_embedding.positions, real.dtype)
        x = real * (1.0 - masked) + (fill + positions) * masked
        # Token 0 is CLS, a visible token.
        masked_with_cls = ops.pad(ops.cast(mask, "float32"), [[0, 0], [1, 0]])
        bias = None
        if self.attention_recalibration:
            forbidden = (1.0 - masked_with_cls)[:, :, None] * masked_with_cls[:, None, :]
            bias = (forbidden * RECALIBRATION_BIAS)[:, None]
        wants_layers = bool(self.singularity_loss_weight or self.entropy_loss_weight)
        hidden, _, *layers = self.encoder.encode(x, training=training, attention_bias=bias, return_layers=wants_layers)
        layers = layers[0] if layers else []

        decoder_input = hidden
        if training and self.decoder.input_dropout > 0.0:
            decoder_input = keras.random.dropout(decoder_input, self.decoder.input_dropout, seed=self.seed_generator)
        outputs = {
            "prediction": self.decoder(decoder_input[:, self.encoder.num_extra_tokens :]),
            "mask": mask,
            "cls": hidden[:, 0],
        }
        mask = ops.cast(mask, "float32")
        if self.singularity_loss_weight:
            term = self._token_singularity(real, 1.0 - mask)
            for weight, (states, _) in zip(self._depth_weights, layers):
                states = states[:, self.encoder.num_extra_tokens :]
                term = term + float(weight) * singularity_loss(states, mask, states, 1.0 - mask)
            outputs["singularity_loss"] = term
        if self.entropy_loss_weight:
            outputs["entropy_loss"] = sum(
                float(weight) * masked_query_entropy(probs, masked_with_cls)
                for weight, (_, probs) in zip(self._depth_weights, layers)
            )
        return outputs

    # ----------------------------------------------------------------------------------- teacher
    def _teacher_pairs(self):
        return self._ema_pairs

    def current_ema_decay(self):
        """The decay the next teacher update uses (the reference's `get_annealed_rate`)."""
        step = ops.cast(self.num_updates, "float32")
        start, end, total = (ops.convert_to_tensor(v) for v in (self.ema_decay, self.ema_end_decay, self.ema_anneal_end_step))
        annealed = end - (end - start) * (1.0 - step / ops.maximum(total, 1.0))
        return ops.where(step >= total, end, annealed)

    def _update_teacher(self):
        """Applies the pending EMA update, if the student has moved since the teacher last saw it."""
        pending = ops.greater(self.num_updates, self.teacher_updates)
        decay = self.current_ema_decay()
        for student, teacher in self._teacher_pairs():
            current = ops.convert_to_tensor(teacher)
            source = ops.stop_gradient(ops.convert_to_tensor(student))
            if student.trainable:
                source = decay * current + (1.0 - decay) * source
            teacher.assign(ops.where(pending, source, current))
        # A fresh value, not the variable: on JAX two variables must never share a donated buffer.
        self.teacher_updates.assign(ops.maximum(self.teacher_updates, self.num_updates))
        return decay

    def reset_teacher(self):
        """Makes the teacher an exact copy of the student, as at the start of pre-training."""
        for student, teacher in self._ema_pairs:
            # A host copy: on JAX two variables must never share a donated buffer.
            teacher.assign(ops.convert_to_numpy(student))

    def sync_teacher(self):
        """Brings the teacher up to date with the last optimizer step (the `EMATeacher` callback
        calls this when `fit()` ends). Inside the compiled step each update is applied just before
        the next forward, which is when the reference's teacher is first used."""
        self._update_teacher()

    def export_encoder(self, **overrides):
        """A copy of the student encoder with its current weights: what users fine-tune or probe.

        `overrides` change the copy's configuration (e.g. `drop_path_rate=0.1`, `dropout`), not its
        weights. The copy shares nothing with this model; save it with
        `keras.saving.save_model(encoder, "encoder.keras")`.

        Example:
        >>> encoder = model.export_encoder(drop_path_rate=0.1)
        >>> features = encoder(images)  # (B, 1 + T, D), CLS first
        """
        config = self.encoder.get_config()
        unknown = sorted(set(overrides) - set(config))
        if unknown:
            raise ValueError(
                f"Unknown argument(s) {unknown} for {type(self.encoder).__name__}; it takes {sorted(config)}."
            )
        encoder = type(self.encoder).from_config({**config, **overrides, "name": "encoder"})
        encoder.build()
        # A host copy: on JAX two variables must never share a donated buffer.
        encoder.set_weights([ops.convert_to_numpy(w) for w in self.encoder.weights])
        return encoder

    def teacher_targets(self, source, local_features=None, padding_mask=None):
        """Contextualized targets `(B, T, D)` in float32 from the teacher on the unmasked input.

        Images: the teacher embeds `source` itself. Text and audio: it encodes the student's local
        features, `local_features` (computed here from `source` when not given). `padding_mask` is
        the input's padding, for audio `(B, samples)`."""
        pad = self._padding_kwargs(padding_mask)
        if self.encoder.teacher_embeds_input:
            local_features = self.teacher.embed(source)
        elif local_features is None:
            local_features = self.encoder.embed(source, **pad)
        padding = self.encoder.padding_mask(source, **pad)
        x = ops.stop_gradient(local_features)
        if self.teacher.relative_positions:
            x = x + self.teacher.positional_encoding(x, padding_mask=padding)
        _, ffn_outputs = self.teacher.encode(x, padding_mask=padding, training=False)
        return ops.stop_gradient(self.targets(ffn_outputs, padding_mask=padding))

    # -------------------------------------------------------------------------------------- loss
    def loss_terms(self, targets, y_pred, padding_mask=None):
        """Returns `(regression, cls, weights, prediction, repeated_targets)`: the two loss terms
        divided by the number of masked positions, as the reference's trainer scales them, the
        masked-position weights (0 at padding), and the float32 predictions and clone-repeated
        targets."""
        clones = self.masking.clone_batch
        scale = self.loss_scale if self.loss_scale is not None else 1.0 / math.sqrt(self.embed_dim)
        weights = ops.cast(y_pred["mask"], "float32")
        if padding_mask is not None:
            weights = weights * ops.repeat(1.0 - ops.cast(padding_mask, "float32"), clones, axis=0)
        prediction = ops.cast(y_pred["prediction"], "float32")
        repeated = ops.repeat(targets, clones, axis=0)
        sample_size = ops.sum(weights)
        regression = ops.sum(ops.square(prediction - repeated) * weights[..., None]) * scale / sample_size
        cls = ops.zeros((), "float32")
        if self.cls_loss_weight and "cls" in y_pred:
            cls_target = ops.repeat(ops.mean(targets, axis=1), clones, axis=0)
            cls_error = ops.square(ops.cast(y_pred["cls"], "float32") - cls_target)
            cls = self.cls_loss_weight * scale * ops.sum(cls_error)
        return regression, cls, weights, prediction, repeated

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        source, _, _, input_padding = self._unpack(x)
        decay = self._update_teacher() if training else self.current_ema_decay()
        targets = self.teacher_targets(source, y_pred.get("local_features"), input_padding)
        regression, cls, weights, prediction, repeated = self.loss_terms(
            targets, y_pred, self.encoder.padding_mask(source, **self._padding_kwargs(input_padding))
        )
        loss = regression
        if self.singularity_tracker is not None:
            singularity = ops.mean(y_pred["singularity_loss"])
            loss = loss + self.singularity_loss_weight * singularity
            self.singularity_tracker.update_state(singularity)
        if self.entropy_tracker is not None:
            entropy = ops.mean(y_pred["entropy_loss"])
            loss = loss + self.entropy_loss_weight * self.entropy_sign * entropy
            self.entropy_tracker.update_state(entropy)
        if self.losses:
            loss = loss + ops.sum(self.losses)
        # Data-parallel replicas must add up to the one-device gradient: the other terms are means
        # over the replica's share of the batch, the CLS term (as in the reference) a sum over
        # samples, so it is weighted by the replica count; summed gradients divide the whole.
        _, replicas, summed = data_parallel_replica()
        loss = loss + replicas * cls
        if summed:
            loss = loss / replicas
        if training:
            self.num_updates.assign_add(1)
        self.regression_loss_tracker.update_state(regression)
        self.cls_loss_tracker.update_state(cls * replicas)
        self.target_var_tracker.update_state(masked_std(repeated, weights))
        self.pred_var_tracker.update_state(masked_std(prediction, weights))
        self.ema_decay_tracker.update_state(decay)
        return loss

    # ------------------------------------------------------------------------------ keras hooks
    def compile(self, optimizer="adamw", **kwargs):
        """As `keras.Model.compile`; like the reference's composite optimizer, 1-D weights (biases,
        LayerNorm, the ALiBi scale) are excluded from the optimizer's weight decay and the CLS token
        and kernels are decayed, unless the model was built with `decay_1d_weights=True` (the
        reference's plain-Adam audio config decays every weight)."""
        super().compile(optimizer=optimizer, **kwargs)
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if getattr(inner, "weight_decay", None) and not self.decay_1d_weights:
            inner.exclude_from_weight_decay(var_list=[v for v in self.trainable_variables if len(v.shape) <= 1])

    def compile_from_config(self, config):
        # Keras skips compile() on load when it is overridden, which would drop the optimizer state.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, *args, callbacks=None, **kwargs):
        """As `keras.Model.fit`; adds `EMATeacher` and `TrainingGuard` with the model's own settings
        when the caller did not pass them. The guard runs first, so that a checkpointing callback
        never saves the state of a step whose loss, or whose weights, were not finite.

        With `x` a `keras_d2v2.data.ShuffledBatches`, each epoch's order is the dataset's own (set
        as the epoch begins), so a run resumed by `BackupAndRestore` replays the same batches."""
        from keras_d2v2.callbacks import EMATeacher, TrainingGuard
        from keras_d2v2.data.shuffled_batches import SetDataEpoch, ShuffledBatches

        callbacks = list(callbacks or [])
        guards = [c for c in callbacks if isinstance(c, TrainingGuard)] or [TrainingGuard()]
        callbacks = guards + [c for c in callbacks if not isinstance(c, TrainingGuard)]
        if not any(isinstance(c, EMATeacher) for c in callbacks):
            callbacks.append(EMATeacher())
        # Compiled steps cannot raise on values (e.g. token ids outside the vocabulary, which JAX
        # would silently clamp): in-memory data is checked once, up front.
        arrays = x.x if isinstance(x, ShuffledBatches) else x
        padding = {}
        if isinstance(arrays, dict):
            if isinstance(arrays.get("padding_mask"), np.ndarray) and self.encoder.takes_padding_mask:
                padding = {"padding_mask": arrays["padding_mask"]}
            arrays = arrays.get(self.encoder.input_name)
        if isinstance(arrays, np.ndarray):
            self.encoder.check_inputs(arrays, **padding)
        if isinstance(x, ShuffledBatches):
            if kwargs.get("steps_per_epoch"):
                # Keras then builds the next epoch's iterator before the epoch begins, and tf.data
                # prefetches from it, so batches could be drawn in the previous epoch's order.
                raise ValueError(
                    "`steps_per_epoch` cannot be used with a `ShuffledBatches` dataset: an epoch is "
                    f"the whole dataset ({len(x)} batches). Make the dataset smaller instead."
                )
            kwargs["shuffle"] = False
            callbacks.append(SetDataEpoch(x))
        return super().fit(x, *args, callbacks=callbacks, **kwargs)

    def get_config(self):
        config = super().get_config()
        decay, end_decay, anneal = self._ema_defaults
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            decoder=keras.saving.serialize_keras_object(self.decoder),
            masking=keras.saving.serialize_keras_object(self.masking),
            targets=keras.saving.serialize_keras_object(self.targets),
            mask_noise_std=self.mask_noise_std,
            loss_scale=self.loss_scale,
            cls_loss_weight=self.cls_loss_weight,
            ema_decay=decay,
            ema_end_decay=end_decay,
            ema_anneal_end_step=anneal,
            min_target_var=self.min_target_var,
            min_pred_var=self.min_pred_var,
            collapse_check_after=self.collapse_check_after,
            decay_1d_weights=self.decay_1d_weights,
            seed=self.seed,
            student_mode=self.student_mode,
            mask_fill=self.mask_fill,
            attention_recalibration=self.attention_recalibration,
            singularity_loss_weight=self.singularity_loss_weight,
            entropy_loss_weight=self.entropy_loss_weight,
            entropy_sign=self.entropy_sign,
            depth_weighting=self.depth_weighting,
        )
        return config
