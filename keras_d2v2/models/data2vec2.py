"""`Data2Vec2`: the data2vec 2.0 pre-training model with its EMA teacher inside the training step."""

import math

import keras
import numpy as np
from keras import ops
from keras_d2v2.layers.random_state import SavesRandomState

from keras_d2v2.layers.contextualized_targets import ContextualizedTargets
from keras_d2v2.layers.conv_decoder import ConvDecoder2D
from keras_d2v2.layers.inverse_block_masking import InverseBlockMasking, mask_info
from keras_d2v2.metrics import LastValue
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
        seed: int or None, seed of the mask-noise generator.

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
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._ema_defaults = (ema_decay, ema_end_decay, ema_anneal_end_step)

        # Images have a fixed number of tokens (checked here); text takes any length per batch.
        self.num_tokens = self.encoder.num_tokens
        self.num_visible = None if self.num_tokens is None else self.masking.num_visible(self.num_tokens)
        self.embed_dim = self.encoder.embed_dim

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
        self.built = True

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
        if mask_noise is None:
            mask_noise = keras.random.normal(
                (ops.shape(x)[0], num_masked, self.embed_dim), stddev=self.mask_noise_std, seed=self.seed_generator
            )
        else:
            mask_noise = self._per_sample(mask_noise, "mask_noise", (num_masked, self.embed_dim))
        x = ops.concatenate([x, ops.cast(mask_noise, x.dtype)], axis=1)
        decoder_kwargs = {} if padding is None else {"padding_mask": clone_padding}
        prediction = self.decoder(gather_tokens(x, ids_restore), **decoder_kwargs)
        outputs = {"prediction": prediction, "mask": mask}
        if self.encoder.num_extra_tokens:
            outputs["cls"] = hidden[:, 0]
        if not self.encoder.teacher_embeds_input:
            # The teacher encodes these very embeddings (dropout draw included), as the reference does.
            outputs["local_features"] = tokens
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
        loss = regression + cls
        if self.losses:
            loss = loss + ops.sum(self.losses)
        if training:
            self.num_updates.assign_add(1)
        self.regression_loss_tracker.update_state(regression)
        self.cls_loss_tracker.update_state(cls)
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
        )
        return config
