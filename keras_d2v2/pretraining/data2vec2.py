"""`Data2Vec2`: the data2vec 2.0 pre-training model with its EMA teacher inside the training step."""

import math

import keras
from keras import ops

from keras_d2v2.array_inputs import refuse_sequence_inputs
from keras_d2v2.atomic_write import AtomicSaves
from keras_d2v2.callbacks import InvalidInputBatch, TrainingDiverged
from keras_d2v2.layers.masking import gather_tokens, mask_info
from keras_d2v2.layers.pixel_targets import PixelTargets
from keras_d2v2.layers.random_state import ReplicaSeedGenerator, SavesRandomState
from keras_d2v2.layers.transformer_decoder import TransformerDecoder
from keras_d2v2.metrics import LastValue
from keras_d2v2.optimizers import exclude_1d_weights_from_weight_decay
from keras_d2v2.pretraining import preset_io, training
from keras_d2v2.pretraining.ema import TeacherEMA, teacher_pairs
from keras_d2v2.pretraining.mto import MaskedTokenOptimization
from keras_d2v2.replicas import data_parallel_replica

# Constructor arguments of files written before these were renamed: the threshold always was a
# standard deviation (the reference's `compute_var` returns one).
_RENAMED_ARGS = {"min_target_var": "min_target_std", "min_pred_var": "min_pred_std"}


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
class Data2Vec2(MaskedTokenOptimization, AtomicSaves, SavesRandomState, keras.Model):
    """data2vec 2.0 pre-training: multi-mask student, conv decoder, EMA teacher, contextualized targets.

    `call()` runs the student: it embeds the inputs once, draws `clone_batch` masks per sample,
    encodes only the visible tokens of each copy, fills the masked slots with
    `N(0, mask_noise_std**2)` noise and decodes every position. `compute_loss()` runs the rest of
    the reference's step: the EMA update of the teacher (the decayed average of the student's
    post-update weights, applied once per optimizer step), the teacher on the unmasked input once
    per sample, the contextualized targets, and the loss. So `fit()`, `steps_per_execution`,
    mixed precision and `keras.distribution` work unchanged on TensorFlow, JAX and PyTorch.

    Loss, as the reference scales it: the squared error summed over features and masked positions
    of every clone, times `loss_scale` (1/sqrt(D) when None), divided by the number of masked
    positions; plus the CLS term `cls_loss_weight * loss_scale * sum((cls - mean_T(y))**2)` summed
    (not averaged) over the `B * clone_batch` clones in the batch. That CLS weighting grows with
    the batch, as in the reference (its weight relative to a token is `cls_loss_weight * B * M`);
    keep it in mind when changing the per-device batch.

    Inputs: the encoder's input (images `(B, H, W, C)` float, token ids `(B, T)` int, waveforms
    `(B, samples)` float), or a dict with it under `encoder.input_name` (`"images"`, `"tokens"`,
    `"audio"`) and optionally: `"padding_mask"` `(B, samples)` (audio, True = padding) for batches
    of clips of different lengths; a precomputed `"mask"` `(B, clone_batch, T)` (1 = masked,
    exactly `masking.num_visible(T)` zeros per row, as the reference's data loader makes them);
    `"mask_noise"` `(B, clone_batch, T_masked, D)` to reproduce a reference run. Labels, if the
    dataset has them, are ignored.
    Outputs: `"prediction"` `(B * clone_batch, T, D)`, `"mask"` `(B * clone_batch, T)`,
    `"local_features"` `(B, T, D)` (the student's embeddings, which the text and audio teachers
    encode), and for encoders with a CLS token `"cls"` `(B * clone_batch, D)`; the clones of
    sample `i` are rows `i * clone_batch ...`.

    Args:
        encoder: an `Encoder` (`ImageEncoder`, `TextEncoder`, `AudioEncoder`), the student; the
            teacher is built from `encoder.teacher_config()`.
        decoder: `ConvDecoder2D` (images; the reference) or `ConvDecoder1D` (text, audio), or a
            `TransformerDecoder` (images: masked slots meet attention, where MTO's block terms act).
        masking: `InverseBlockMasking`, `RandomMasking` or `BlockMasking1D` (its `clone_batch` is the
            number of masks per sample).
        targets: `ContextualizedTargets` (`top_k` must not exceed `encoder.depth`), or
            `PixelTargets` (images: MAE's per-patch normalized pixels; no teacher, no CLS term, and
            the decoder's `output_dim` must be `patch_size**2 * channels`).
        mask_noise_std: float, std of the noise placed in masked slots of the decoder input.
        loss_scale: float or None; None means 1/sqrt(D) for contextualized targets of width D (the
            reference) and 1/D for pixel targets (MAE's mean over a patch's values).
        cls_loss_weight: float, weight of the CLS regression (0 turns it off).
        ema_decay, ema_end_decay, ema_anneal_end_step: the teacher's decay rises linearly from
            `ema_decay` to `ema_end_decay` over `ema_anneal_end_step` updates; a decay of 1 freezes
            it. Held by `model.ema` (`TeacherEMA`), which `EMATeacher` callbacks change.
        min_target_std, min_pred_std, collapse_check_after: the reference's collapse guard (its
            `min_target_var`, `min_pred_var`, which are compared with standard deviations); after
            `collapse_check_after` updates training stops when the target (prediction) std,
            logged as `target_std` (`pred_std`), falls below it; 0 disables a check.
        decay_1d_weights: bool, let `compile()` keep weight decay on 1-D weights (see `compile`).
        input_checks: bool, count inside the training step the input values `check_inputs` would
            refuse (token ids outside the vocabulary, audio rows shorter than the receptive field
            once padding is left out), logged as `invalid_token_ids` / `short_audio_rows`; the
            `TrainingGuard` stops `fit()` with a `ValueError` at the batch where one appears. This
            is what protects streamed inputs (`tf.data`, `PyDataset`, a torch `DataLoader`), whose
            values cannot be checked up front; in-memory arrays are also checked before training.
        seed: int or None, seed of the mask noise, the decoder-input dropout and the MTO token's
            initial value. The builders (`Data2Vec2.image(seed=...)`, `from_preset`) also derive the
            masking, encoder and decoder seeds from their `seed`, so it fixes the initial weights too.

    Masked token optimization (docs/mto.md): `student_mode`, `mask_fill`,
    `attention_recalibration`, `singularity_loss_weight`, `entropy_loss_weight`, `entropy_sign`,
    `depth_weighting`, `singularity_position`, and the block terms `heterogeneity_measure`,
    `early_blocks`, `heterogeneity_loss_weight`, `rank_loss_weight`, `rank_margin`,
    `sparsity_loss_weight`, `sparsity_blocks`; all off by default, which is the reference. See
    `MaskedTokenOptimization`.

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
        min_target_std=0.0,
        min_pred_std=0.0,
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
        singularity_position=False,
        heterogeneity_measure="entropy",
        early_blocks=None,
        heterogeneity_loss_weight=0.0,
        rank_loss_weight=0.0,
        rank_margin=0.0,
        sparsity_loss_weight=0.0,
        sparsity_blocks="all",
        input_checks=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = _deserialize(encoder)
        self.decoder = _deserialize(decoder)
        self.masking = _deserialize(masking)
        self.targets = _deserialize(targets)
        self.pixel_targets = isinstance(self.targets, PixelTargets)
        if self.pixel_targets:
            self._check_pixel_targets(cls_loss_weight)
        elif self.targets.top_k > self.encoder.depth:
            raise ValueError(
                f"`targets.top_k` ({self.targets.top_k}) is larger than `encoder.depth` ({self.encoder.depth}): "
                "only main blocks give targets."
            )
        self.mask_noise_std = mask_noise_std
        self.loss_scale = loss_scale
        self.cls_loss_weight = cls_loss_weight
        self.min_target_std = min_target_std
        self.min_pred_std = min_pred_std
        self.collapse_check_after = collapse_check_after
        self.decay_1d_weights = decay_1d_weights
        self.input_checks = bool(input_checks)
        self.seed = seed
        self.seed_generator = ReplicaSeedGenerator(seed)
        # Images have a fixed number of tokens (checked here); text and audio take any length per batch.
        self.num_tokens = self.encoder.num_tokens
        self.num_visible = None if self.num_tokens is None else self.masking.num_visible(self.num_tokens)
        self.embed_dim = self.encoder.embed_dim
        # Layers deserialized from a `.keras` file arrive already built.
        if not self.encoder.built:
            self.encoder.build()
        self.init_mto(
            student_mode=student_mode,
            mask_fill=mask_fill,
            attention_recalibration=attention_recalibration,
            singularity_loss_weight=singularity_loss_weight,
            entropy_loss_weight=entropy_loss_weight,
            entropy_sign=entropy_sign,
            depth_weighting=depth_weighting,
            singularity_position=singularity_position,
            heterogeneity_measure=heterogeneity_measure,
            early_blocks=early_blocks,
            heterogeneity_loss_weight=heterogeneity_loss_weight,
            rank_loss_weight=rank_loss_weight,
            rank_margin=rank_margin,
            sparsity_loss_weight=sparsity_loss_weight,
            sparsity_blocks=sparsity_blocks,
        )

        # Pixel targets (MAE) need no teacher; the EMA then only counts updates.
        self.teacher = None
        if not self.pixel_targets:
            self.teacher = self.encoder.__class__.from_config(self.encoder.teacher_config())
            self.teacher.build(None)
            # After build: sublayers made in build() would otherwise come out trainable.
            self.teacher.trainable = False
        if not self.decoder.built:
            self.decoder.build((None, self.num_tokens, self.embed_dim))
        # A tracked attribute: the pairs' weights become the model's own, which orders its
        # `trainable_variables`, and so the optimizer's slots, as every file written so far has them.
        self._ema_pairs = [] if self.teacher is None else teacher_pairs(self.encoder, self.teacher)
        self.ema = TeacherEMA(
            self, pairs=self._ema_pairs, decay=ema_decay, end_decay=ema_end_decay, anneal_end_step=ema_anneal_end_step
        )

        self.regression_loss_tracker = keras.metrics.Mean(name="regression_loss")
        self.cls_loss_tracker = keras.metrics.Mean(name="cls_loss")
        self.target_std_tracker = LastValue(name="target_std")
        self.pred_std_tracker = LastValue(name="pred_std")
        self.ema_decay_tracker = None if self.teacher is None else LastValue(name="ema_decay")
        self.make_mto_trackers()
        names = self.encoder.input_fault_names if self.input_checks else ()
        self.input_fault_trackers = {name: keras.metrics.Sum(name=name) for name in names}
        self.built = True

    def _check_pixel_targets(self, cls_loss_weight):
        encoder = self.encoder
        if encoder.input_name != "images":
            raise ValueError(f"`PixelTargets` are for images; this model's encoder takes {encoder.input_name!r}.")
        if self.targets.patch_size != encoder.patch_size:
            raise ValueError(
                f"`targets.patch_size` ({self.targets.patch_size}) must equal the encoder's `patch_size` "
                f"({encoder.patch_size})."
            )
        if cls_loss_weight:
            raise ValueError(
                f"Pixel targets have no CLS target (no teacher): `cls_loss_weight` must be 0, got {cls_loss_weight}."
            )
        expected = self.targets.target_dim(encoder.channels)
        if self.decoder.output_dim != expected:
            raise ValueError(
                f"Pixel targets are {expected} values per patch (patch_size**2 * channels): the decoder's "
                f"`output_dim` must be {expected}, got {self.decoder.output_dim}."
            )

    @property
    def num_updates(self):
        """Optimizer updates so far (an int32 variable, `model.ema.num_updates`)."""
        return self.ema.num_updates

    # ------------------------------------------------------------------------------- builders
    @classmethod
    def image(cls, preset=None, **overrides):
        """An image model from a preset name (see `keras_d2v2.presets`) and/or explicit arguments."""
        return preset_io.build_model("image", preset, **overrides)

    @classmethod
    def text(cls, preset=None, **overrides):
        """A text model from a preset name (see `keras_d2v2.presets`) and/or explicit arguments."""
        return preset_io.build_model("text", preset, **overrides)

    @classmethod
    def audio(cls, preset=None, **overrides):
        """An audio model from a preset name (see `keras_d2v2.presets`) and/or explicit arguments."""
        return preset_io.build_model("audio", preset, **overrides)

    @classmethod
    def from_preset(cls, preset, **overrides):
        """A model from a built-in preset name such as `"image_base"` or `"text_tiny"`
        (`keras_d2v2.presets.preset_names()`), or from a directory written by `save_to_preset`."""
        return preset_io.from_preset(preset, **overrides)

    def save_to_preset(self, directory):
        """Writes this model, weights included, to `directory`; `Data2Vec2.from_preset(directory)` restores it."""
        preset_io.save_to_preset(self, directory)

    # -------------------------------------------------------------------------------- student
    def call(self, inputs, training=None):
        source, mask, mask_noise, input_padding = self._unpack(inputs)
        tokens = self.encoder.embed(source, training=training, padding_mask=input_padding)
        padding = self.encoder.padding_mask(source, input_padding)
        num_tokens = tokens.shape[1]
        num_visible = self.masking.num_visible(num_tokens)
        if mask is None:
            mask = self.masking(tokens)
        else:
            mask = ops.cast(self._per_sample(mask, "mask", (num_tokens,)), "float32")
        if self.student_mode == "full_sequence":
            return {**self.full_sequence_student(tokens, mask, mask_noise, training), "local_features": tokens}
        clones = self.masking.clone_batch

        # The student encodes the visible tokens of each clone, gathered straight from the
        # un-repeated tokens (no (B * M, T, D) copy).
        ids_keep, ids_restore = mask_info(mask, num_visible)
        sample = ops.arange(ops.shape(ids_keep)[0], dtype="int32") // clones
        flat_ids = sample[:, None] * num_tokens + ops.cast(ids_keep, "int32")
        visible = ops.take(ops.reshape(tokens, (-1, self.embed_dim)), flat_ids, axis=0)
        visible_padding = clone_padding = None
        if padding is not None:
            visible_padding = ops.take(ops.reshape(padding, (-1,)), flat_ids, axis=0)
            clone_padding = ops.repeat(padding, clones, axis=0)
        positions = self.encoder.relative_positions(
            tokens, mask=mask, ids_keep=ids_keep, clone_batch=clones, padding_mask=clone_padding
        )
        if positions is not None:
            visible = visible + positions
        hidden, _ = self.encoder.encode(visible, padding_mask=visible_padding, positions=ids_keep, training=training)

        # The decoder sees every position: the encoded visible tokens, and a fill in masked slots.
        x = hidden
        if training and self.decoder.input_dropout > 0.0:
            x = keras.random.dropout(x, self.decoder.input_dropout, seed=self.seed_generator)
        x = x[:, self.encoder.num_extra_tokens :]
        num_masked = num_tokens - num_visible
        fill_shape = (ops.shape(x)[0], num_masked, self.embed_dim)
        if self.mask_token is not None:
            fill = self.mask_token_fill(fill_shape, x.dtype, mask_noise)
        elif mask_noise is None:
            fill = keras.random.normal(fill_shape, stddev=self.mask_noise_std, seed=self.seed_generator)
        else:
            fill = self._per_sample(mask_noise, "mask_noise", (num_masked, self.embed_dim))
        outputs = {}
        if self.singularity_loss_weight:
            real = ops.ones_like(x[..., 0]) if visible_padding is None else 1.0 - ops.cast(visible_padding, "float32")
            outputs["singularity_loss"] = self.token_singularity(x, real)
        x = gather_tokens(ops.concatenate([x, ops.cast(fill, x.dtype)], axis=1), ids_restore)
        if isinstance(self.decoder, TransformerDecoder):
            # Masked tokens meet attention here, so MTO's recalibration and block terms act here.
            bias = self.recalibration_bias(mask) if self.attention_recalibration else None
            if self.wants_block_terms():
                prediction, layers = self.decoder(x, attention_bias=bias, return_layers=True, training=training)
                outputs.update(self.block_terms(layers, mask))
            else:
                prediction = self.decoder(x, attention_bias=bias, training=training)
        else:
            prediction = self.decoder(x, **({} if padding is None else {"padding_mask": clone_padding}))
        # The text and audio teachers encode these very embeddings (dropout draw included), as the reference does.
        outputs.update(prediction=prediction, mask=mask, local_features=tokens)
        if self.encoder.num_extra_tokens:
            outputs["cls"] = hidden[:, 0]
        return outputs

    def _unpack(self, inputs):
        """`(source, mask, mask_noise, padding_mask)` from an input array or dict."""
        refuse_sequence_inputs(inputs, self.encoder.input_name)
        if isinstance(inputs, dict):
            name = self.encoder.input_name
            keys = [name, "mask", "mask_noise", *self.encoder.extra_input_keys]
            if name not in inputs or set(inputs) - set(keys):
                raise ValueError(
                    f"Dict inputs take the keys '{name}' (required), {', '.join(repr(k) for k in keys[1:])}; "
                    f"got {sorted(inputs)}."
                )
            return inputs[name], inputs.get("mask"), inputs.get("mask_noise"), inputs.get("padding_mask")
        return inputs, None, None, None

    def _per_sample(self, value, name, tail):
        """Checks a per-sample `(B, clone_batch, *tail)` input and flattens it to `(B * clone_batch, *tail)`."""
        expected = (None, self.masking.clone_batch) + tail
        shape = tuple(value.shape)
        if len(shape) != len(expected) or shape[1:] != expected[1:]:
            raise ValueError(f"`{name}` must have shape (batch, clone_batch, ...) = {expected}, got {shape}.")
        return ops.reshape(value, (-1,) + tail)

    # -------------------------------------------------------------------------------- teacher
    def teacher_targets(self, source, local_features=None, padding_mask=None):
        """Contextualized targets `(B, T, D)` in float32 from the teacher on the unmasked input.

        What the teacher encodes is the encoder's choice (`Encoder.teacher_features`): images are
        embedded again by the teacher's own patch embedding; text and audio teachers encode the
        student's local features, `local_features` (computed here from `source` when not given).
        `padding_mask` is the input's padding, for audio `(B, samples)`."""
        if self.teacher is None:
            raise ValueError("This model regresses pixel targets (`PixelTargets`); it has no teacher.")
        padding = self.encoder.padding_mask(source, padding_mask)
        x = ops.stop_gradient(self.encoder.teacher_features(self.teacher, source, local_features, padding_mask))
        positions = self.teacher.relative_positions(x, padding_mask=padding)
        if positions is not None:
            x = x + positions
        _, ffn_outputs = self.teacher.encode(x, padding_mask=padding, training=False)
        return ops.stop_gradient(self.targets(ffn_outputs, padding_mask=padding))

    def reset_teacher(self):
        """Makes the teacher an exact copy of the student, as at the start of pre-training."""
        self.ema.reset()

    def sync_teacher(self):
        """Brings the teacher up to date with the last optimizer step (see `TeacherEMA.sync`)."""
        self.ema.sync()

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

    # ----------------------------------------------------------------------------------- loss
    def loss_terms(self, targets, y_pred, padding_mask=None):
        """Returns `(regression, cls, weights, prediction, repeated_targets)`: the two loss terms
        divided by the number of masked positions, as the reference's trainer scales them, the
        masked-position weights (0 at padding), and the float32 predictions and clone-repeated
        targets."""
        clones = self.masking.clone_batch
        scale = self.loss_scale
        if scale is None:
            scale = 1.0 / (targets.shape[-1] if self.pixel_targets else math.sqrt(targets.shape[-1]))
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
        decay = self.ema.update() if training else self.ema.current_decay()
        if self.pixel_targets:
            targets = ops.stop_gradient(self.targets(source))
        else:
            targets = self.teacher_targets(source, y_pred.get("local_features"), input_padding)
        regression, cls, weights, prediction, repeated = self.loss_terms(
            targets, y_pred, self.encoder.padding_mask(source, input_padding)
        )
        loss = self.add_mto_terms(regression, y_pred)
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
            self.ema.count_update()
        self.regression_loss_tracker.update_state(regression)
        self.cls_loss_tracker.update_state(cls * replicas)
        self.target_std_tracker.update_state(masked_std(repeated, weights))
        self.pred_std_tracker.update_state(masked_std(prediction, weights))
        if self.ema_decay_tracker is not None:
            self.ema_decay_tracker.update_state(decay)
        if self.input_fault_trackers:
            for name, count in self.encoder.input_faults(source, input_padding).items():
                self.input_fault_trackers[name].update_state(count)
        return loss

    # ---------------------------------------------------------------------------- keras hooks
    def compile(self, optimizer="adamw", **kwargs):
        """As `keras.Model.compile`; like the reference's composite optimizer, 1-D weights (biases,
        LayerNorm, the ALiBi scale) are excluded from the optimizer's weight decay and the CLS token
        and kernels are decayed, unless the model was built with `decay_1d_weights=True` (the
        reference's plain-Adam audio config decays every weight)."""
        super().compile(optimizer=optimizer, **kwargs)
        if not self.decay_1d_weights:
            exclude_1d_weights_from_weight_decay(self.optimizer, self.trainable_variables)

    def compile_from_config(self, config):
        # Keras skips compile() on load when it is overridden, which would drop the optimizer state.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, *args, callbacks=None, **kwargs):
        """As `keras.Model.fit`; adds `TrainingGuard` (first) and `EMATeacher` with the model's own
        settings when the caller did not pass them, checks in-memory inputs up front, puts back
        the guard's last good state when training diverges or a batch is refused, and with `x`
        a `keras_d2v2.data.ShuffledBatches` takes each epoch's order from the dataset, so a run
        resumed by `BackupAndRestore` replays the same batches (`pretraining/training.py`)."""
        callbacks = training.with_default_callbacks(callbacks)
        training.check_in_memory_inputs(self.encoder, x)
        training.shuffled_batches_wiring(x, callbacks, kwargs)
        try:
            return super().fit(x, *args, callbacks=callbacks, **kwargs)
        except (TrainingDiverged, InvalidInputBatch) as error:
            restored = callbacks[0].restore_last_good()
            raise type(error)(f"{error} {restored}") from error

    def evaluate(self, *args, **kwargs):
        """As `keras.Model.evaluate`; without `compile()` it raises the ValueError Keras raises on
        JAX and TensorFlow (Keras' PyTorch trainer does not check, and fails on the missing optimizer)."""
        if not self.compiled:
            raise ValueError("You must call `compile()` before using the model.")
        return super().evaluate(*args, **kwargs)

    @classmethod
    def get_layout_map(cls, device_mesh, *, modality="image", model_dim="model"):
        """A `keras.distribution.LayoutMap` for `keras.distribution.ModelParallel` on `device_mesh`,
        for a model of `modality` ("image", "text", "audio"): the student's and teacher's blocks
        split Megatron-style over the mesh axis `model_dim` (`Encoder.get_layout_map`) and the
        decoder's conv kernels by output channel; every other weight is replicated. A class
        method: the distribution must be set before the model is made.

        Example:
        >>> mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"])
        >>> keras.distribution.set_distribution(keras.distribution.ModelParallel(
        ...     layout_map=Data2Vec2.get_layout_map(mesh), batch_dim_name="batch"))
        >>> model = Data2Vec2.image("base")
        """
        classes = preset_io.modality_classes(modality)
        layout_map = classes["encoder"].get_layout_map(device_mesh, model_dim=model_dim)
        layout_map[r"decoder/conv\d+_kernel"] = (None,) * (classes["decoder"].spatial_rank + 1) + (model_dim,)
        return layout_map

    @classmethod
    def from_config(cls, config):
        config = {_RENAMED_ARGS.get(key, key): value for key, value in config.items()}
        return cls(**config)

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            decoder=keras.saving.serialize_keras_object(self.decoder),
            masking=keras.saving.serialize_keras_object(self.masking),
            targets=keras.saving.serialize_keras_object(self.targets),
            mask_noise_std=self.mask_noise_std,
            loss_scale=self.loss_scale,
            cls_loss_weight=self.cls_loss_weight,
            **self.ema.schedule(),
            min_target_std=self.min_target_std,
            min_pred_std=self.min_pred_std,
            collapse_check_after=self.collapse_check_after,
            decay_1d_weights=self.decay_1d_weights,
            input_checks=self.input_checks,
            seed=self.seed,
            **self.mto_config(),
        )
        return config
