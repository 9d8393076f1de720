"""Masked token optimization (MTO, docs/mto.md): the research variants of the student, all off by
default (off is the reference). Everything MTO lives here: argument checks, the learnable mask
token, the full-sequence student, its loss terms and their depth weights."""

import math

import keras
import numpy as np
from keras import ops

from keras_d2v2.layers.attention_bias import forbidden_pairs_bias
from keras_d2v2.layers.random_state import derived_seed

STUDENT_MODES = ("visible_only", "full_sequence")
MASK_FILLS = ("noise", "token")
DEPTH_WEIGHTINGS = ("shallow", "uniform", "deep")


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


class MaskedTokenOptimization:
    """Mixin of `Data2Vec2` with the MTO variants; their `Data2Vec2` arguments:

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
    """

    def init_mto(
        self,
        *,
        student_mode,
        mask_fill,
        attention_recalibration,
        singularity_loss_weight,
        entropy_loss_weight,
        entropy_sign,
        depth_weighting,
    ):
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
        if full and self.encoder.token_positions() is None:
            raise ValueError(
                '`student_mode="full_sequence"` is implemented for images only (encoders with fixed token '
                'positions); text and audio students encode the visible tokens (`student_mode="visible_only"`).'
            )
        for name, value in (
            ("singularity_loss_weight", singularity_loss_weight),
            ("entropy_loss_weight", entropy_loss_weight),
        ):
            if not value >= 0.0:
                raise ValueError(f"`{name}` must be >= 0, got {value}.")
        if not full and (attention_recalibration or entropy_loss_weight):
            raise ValueError(
                '`attention_recalibration` and `entropy_loss_weight` need `student_mode="full_sequence"`: '
                "a visible_only student never attends to a masked position."
            )
        if singularity_loss_weight and mask_fill != "token":
            raise ValueError('`singularity_loss_weight` needs `mask_fill="token"` (it constrains the learnable token).')
        self.student_mode, self.mask_fill = student_mode, mask_fill
        self.attention_recalibration = bool(attention_recalibration)
        self.singularity_loss_weight = float(singularity_loss_weight)
        self.entropy_loss_weight = float(entropy_loss_weight)
        self.entropy_sign, self.depth_weighting = float(entropy_sign), depth_weighting
        num_blocks = len(self.encoder.prenet_blocks) + len(self.encoder.blocks)
        self._depth_weights = depth_weights(num_blocks, depth_weighting)
        self.mask_token = None
        if mask_fill == "token":
            self.mask_token = self.add_weight(
                shape=(self.embed_dim,),
                initializer=keras.initializers.RandomNormal(stddev=0.02, seed=derived_seed(self.seed, "mask_token")),
                name="mask_token",
            )

    def mto_config(self):
        return {
            "student_mode": self.student_mode,
            "mask_fill": self.mask_fill,
            "attention_recalibration": self.attention_recalibration,
            "singularity_loss_weight": self.singularity_loss_weight,
            "entropy_loss_weight": self.entropy_loss_weight,
            "entropy_sign": self.entropy_sign,
            "depth_weighting": self.depth_weighting,
        }

    def make_mto_trackers(self):
        self.singularity_tracker = (
            keras.metrics.Mean(name="singularity_loss") if self.singularity_loss_weight else None
        )
        self.entropy_tracker = keras.metrics.Mean(name="entropy_loss") if self.entropy_loss_weight else None

    def check_no_mask_noise(self, mask_noise):
        if mask_noise is not None:
            raise ValueError(
                f'`mask_noise` is an input of the reference student only (student_mode="visible_only", '
                f'mask_fill="noise"); this model has student_mode={self.student_mode!r}, mask_fill={self.mask_fill!r}.'
            )

    def mask_token_fill(self, shape, dtype, mask_noise):
        """The learnable token broadcast to `shape` as the decoder's fill of masked slots."""
        self.check_no_mask_noise(mask_noise)
        return ops.broadcast_to(ops.cast(self.mask_token, dtype), shape)

    def token_singularity(self, real_tokens, real_weights):
        """The data-singularity term at the mask token's insertion point, per row `(N,)`."""
        token = ops.reshape(ops.convert_to_tensor(self.mask_token), (1, 1, self.embed_dim))
        token = ops.broadcast_to(token, (ops.shape(real_tokens)[0], 1, self.embed_dim))
        return singularity_loss(token, ops.ones_like(token[..., 0]), real_tokens, real_weights)

    def full_sequence_student(self, tokens, mask, mask_noise, training):
        """Every position through the student: masked ones as the fill plus their position; the
        decoder reads the encoder's output at every position (no gather, no noise)."""
        self.check_no_mask_noise(mask_noise)
        real = ops.repeat(tokens, self.masking.clone_batch, axis=0)
        masked = ops.cast(mask, real.dtype)[..., None]
        if self.mask_token is not None:
            fill = ops.cast(self.mask_token, real.dtype)
        else:
            fill = ops.cast(
                keras.random.normal(ops.shape(real), stddev=self.mask_noise_std, seed=self.seed_generator), real.dtype
            )
        positions = ops.cast(self.encoder.token_positions(), real.dtype)
        x = real * (1.0 - masked) + (fill + positions) * masked
        # Token 0 is CLS, a visible token.
        masked_with_cls = ops.pad(ops.cast(mask, "float32"), [[0, 0], [1, 0]])
        bias = None
        if self.attention_recalibration:
            bias = forbidden_pairs_bias((1.0 - masked_with_cls)[:, :, None] * masked_with_cls[:, None, :])
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
            term = self.token_singularity(real, 1.0 - mask)
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

    def add_mto_terms(self, loss, y_pred):
        """`loss` plus the weighted MTO terms (none when MTO is off); logs each term."""
        if self.singularity_tracker is not None:
            singularity = ops.mean(y_pred["singularity_loss"])
            loss = loss + self.singularity_loss_weight * singularity
            self.singularity_tracker.update_state(singularity)
        if self.entropy_tracker is not None:
            entropy = ops.mean(y_pred["entropy_loss"])
            loss = loss + self.entropy_loss_weight * self.entropy_sign * entropy
            self.entropy_tracker.update_state(entropy)
        return loss
