"""Masked token optimization (MTO, docs/mto.md): the research variants of the student, all off by
default (off is the reference). Everything MTO lives here: argument checks, the learnable mask
token, the full-sequence student, its loss terms and their depth weights, and the block terms
(heterogeneity, rank, sparsity) read from whichever transformer masked tokens enter: the
full-sequence encoder or a `TransformerDecoder`."""

import math

import keras
import numpy as np
from keras import ops

from keras_d2v2.layers.attention_bias import forbidden_pairs_bias
from keras_d2v2.layers.random_state import derived_seed
from keras_d2v2.layers.transformer_decoder import TransformerDecoder

STUDENT_MODES = ("visible_only", "full_sequence")
MASK_FILLS = ("noise", "token")
DEPTH_WEIGHTINGS = ("shallow", "uniform", "deep", "none")
HETEROGENEITY_MEASURES = ("entropy", "cosine")
SPARSITY_BLOCKS = ("all", "early", "late")


def depth_weights(num_layers, weighting):
    """MTO's per-layer weights `w_l`, l = 0 (first block) ... L-1: "shallow" (L - l) / L,
    "uniform" 1, "deep" (l + 1) / L, "none" 0 (the terms act at the input only)."""
    layers = np.arange(num_layers, dtype="float32")
    return {
        "shallow": (num_layers - layers) / num_layers,
        "uniform": np.ones(num_layers, "float32"),
        "deep": (layers + 1) / num_layers,
        "none": np.zeros(num_layers, "float32"),
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


def _group_means(x, weights, axis):
    """Weighted mean of `x` along `axis` with `weights` broadcast to it (0/1), empty groups giving 0."""
    return ops.sum(x * weights, axis=axis) / ops.maximum(ops.sum(weights, axis=axis), 1.0)


def entropy_heterogeneity(probs, masked):
    """Masked/visible heterogeneity of one block's attention, per row, float32 `(N,)` in [0, 1]:
    the Jensen-Shannon divergence, in units of log 2, between the mean attention distribution of
    the masked queries and that of the visible queries (`masked` `(N, Q)`, 1 = masked; keys and
    queries are the same tokens), per head, averaged over heads. 0: both groups of tokens attend
    alike; 1: to disjoint keys."""
    probs = ops.cast(probs, "float32")
    masked = ops.cast(masked, "float32")[:, None, :, None]
    p_masked = _group_means(probs, masked, axis=2)
    p_visible = _group_means(probs, 1.0 - masked, axis=2)

    def entropy(p):
        return -ops.sum(p * ops.log(ops.maximum(p, 1e-12)), axis=-1)

    divergence = entropy(0.5 * (p_masked + p_visible)) - 0.5 * (entropy(p_masked) + entropy(p_visible))
    return ops.mean(divergence, axis=1) / math.log(2.0)


def cosine_heterogeneity(states, masked):
    """Masked/visible heterogeneity of one block's output states `(N, T, D)`, per row, float32
    `(N,)` in [0, 2]: 1 minus the mean cosine similarity over all (masked, visible) pairs (the dot
    product of the two groups' mean unit vectors)."""
    states = ops.cast(states, "float32")
    unit = states / ops.maximum(ops.sqrt(ops.sum(ops.square(states), axis=-1, keepdims=True)), 1e-6)
    masked = ops.cast(masked, "float32")[..., None]
    return 1.0 - ops.sum(_group_means(unit, masked, axis=1) * _group_means(unit, 1.0 - masked, axis=1), axis=-1)


def visible_to_masked_attention(probs, masked):
    """The attention mass visible queries put on masked keys, averaged over heads and visible
    queries, float32 `(N,)`; what weight recalibration forces to 0."""
    probs = ops.cast(probs, "float32")
    masked = ops.cast(masked, "float32")
    mass = ops.sum(probs * masked[:, None, None, :], axis=-1)
    visible = (1.0 - masked)[:, None, :]
    return ops.sum(mass * visible, axis=(1, 2)) / ops.maximum(ops.sum(visible, axis=(1, 2)) * probs.shape[1], 1.0)


def heterogeneity_terms(heterogeneities, early_blocks, margin):
    """`(L_e, L_r)` per row from the per-block heterogeneities `H_l` `[(N,), ...]`: `L_e` is minus
    the mean of `H_l` over the first `early_blocks` blocks (minimizing it raises early
    heterogeneity); `L_r = sum relu(H_{l+1} - H_l + margin)` over l = early_blocks - 1 ... L - 2
    (minimizing it makes heterogeneity fall block by block after the early ones)."""
    early = -sum(heterogeneities[:early_blocks]) / early_blocks
    start = max(early_blocks - 1, 0)
    pairs = zip(heterogeneities[start:-1], heterogeneities[start + 1 :])
    rank = sum(ops.relu(later - earlier + margin) for earlier, later in pairs)
    return early, rank


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
        depth_weighting: "shallow" (w_l = (L - l) / L), "uniform", "deep" (w_l = (l + 1) / L) or
            "none" (w_l = 0: only the input term), over the student's L blocks (prenet included).
        singularity_position: bool, full_sequence only: the data-singularity term at the encoder
            input compares the token plus its position (what the encoder sees at a masked slot)
            with the visible tokens, instead of the bare token.

    The block terms act on the transformer that masked tokens enter: the encoder when
    `student_mode="full_sequence"`, the decoder when it is a `TransformerDecoder` (the visible-only
    student's encoder never sees a masked token); each needs one of them. `attention_recalibration`
    also applies to a `TransformerDecoder`. Per block l of that transformer a heterogeneity
    `H_l` between masked and visible tokens is measured (`heterogeneity_measure`):

        heterogeneity_measure: "entropy" (Jensen-Shannon divergence between the masked and the
            visible queries' mean attention distributions, `entropy_heterogeneity`) or "cosine"
            (1 - mean cosine between masked and visible states, `cosine_heterogeneity`).
        early_blocks: int or None, how many first blocks are "early" (None: half, at least 1).
        heterogeneity_loss_weight: float, weight of `L_e = -mean H_l` over the early blocks
            (raises early heterogeneity), logged as `heterogeneity_loss`.
        rank_loss_weight: float, weight of `L_r = sum relu(H_{l+1} - H_l + rank_margin)` from the
            last early block on (heterogeneity falling with depth), logged as `rank_loss`.
        rank_margin: float, the margin of `L_r`.
        sparsity_loss_weight: float, weight of `L_spa`, the attention mass of visible queries on
            masked keys averaged over `sparsity_blocks` ("all", "early", "late"), logged as
            `sparsity_loss`: a soft alternative to `attention_recalibration` (not both).
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
        singularity_position,
        heterogeneity_measure,
        early_blocks,
        heterogeneity_loss_weight,
        rank_loss_weight,
        rank_margin,
        sparsity_loss_weight,
        sparsity_blocks,
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
        choice("heterogeneity_measure", heterogeneity_measure, HETEROGENEITY_MEASURES)
        choice("sparsity_blocks", sparsity_blocks, SPARSITY_BLOCKS)
        if full and self.encoder.token_positions() is None:
            raise ValueError(
                '`student_mode="full_sequence"` is implemented for images only (encoders with fixed token '
                'positions); text and audio students encode the visible tokens (`student_mode="visible_only"`).'
            )
        for name, value in (
            ("singularity_loss_weight", singularity_loss_weight),
            ("entropy_loss_weight", entropy_loss_weight),
            ("heterogeneity_loss_weight", heterogeneity_loss_weight),
            ("rank_loss_weight", rank_loss_weight),
            ("rank_margin", rank_margin),
            ("sparsity_loss_weight", sparsity_loss_weight),
        ):
            if not value >= 0.0:
                raise ValueError(f"`{name}` must be >= 0, got {value}.")
        if not full and entropy_loss_weight:
            raise ValueError(
                '`entropy_loss_weight` needs `student_mode="full_sequence"`: a visible_only student never '
                "attends to a masked position."
            )
        block_terms = bool(heterogeneity_loss_weight or rank_loss_weight or sparsity_loss_weight)
        transformer_decoder = isinstance(self.decoder, TransformerDecoder)
        if not full and not transformer_decoder and (attention_recalibration or block_terms):
            raise ValueError(
                "`attention_recalibration`, `heterogeneity_loss_weight`, `rank_loss_weight` and "
                '`sparsity_loss_weight` act where masked tokens meet attention: use `student_mode="full_sequence"` '
                f"or a `TransformerDecoder`; this visible_only student has a {type(self.decoder).__name__}."
            )
        if sparsity_loss_weight and attention_recalibration:
            raise ValueError(
                "`sparsity_loss_weight` is the soft alternative to `attention_recalibration`, which already "
                "makes the visible -> masked attention 0; use one of them."
            )
        if singularity_position and not (full and singularity_loss_weight):
            raise ValueError(
                '`singularity_position` needs `student_mode="full_sequence"` and `singularity_loss_weight` > 0: '
                "only the full-sequence encoder input gives a masked slot a position."
            )
        num_mto_blocks = (
            len(self.encoder.prenet_blocks) + len(self.encoder.blocks) if full else getattr(self.decoder, "num_layers", 0)
        )
        if early_blocks is None:
            early_blocks = max(num_mto_blocks // 2, 1)
        if block_terms and not (int(early_blocks) == early_blocks and 1 <= early_blocks <= num_mto_blocks):
            raise ValueError(f"`early_blocks` must be an integer in [1, {num_mto_blocks}] (the blocks), got {early_blocks}.")
        if rank_loss_weight and early_blocks >= num_mto_blocks:
            raise ValueError(
                f"`rank_loss_weight` ranks the blocks after the early ones: `early_blocks` ({early_blocks}) must be "
                f"below the number of blocks ({num_mto_blocks})."
            )
        late_sparsity = sparsity_loss_weight and sparsity_blocks == "late"
        if late_sparsity and early_blocks >= num_mto_blocks:
            raise ValueError(f'`sparsity_blocks="late"` needs `early_blocks` below {num_mto_blocks}, got {early_blocks}.')
        if singularity_loss_weight and mask_fill != "token":
            raise ValueError('`singularity_loss_weight` needs `mask_fill="token"` (it constrains the learnable token).')
        self.student_mode, self.mask_fill = student_mode, mask_fill
        self.attention_recalibration = bool(attention_recalibration)
        self.singularity_loss_weight = float(singularity_loss_weight)
        self.entropy_loss_weight = float(entropy_loss_weight)
        self.entropy_sign, self.depth_weighting = float(entropy_sign), depth_weighting
        self.singularity_position = bool(singularity_position)
        self.heterogeneity_measure = heterogeneity_measure
        self.early_blocks = int(early_blocks)
        self.heterogeneity_loss_weight = float(heterogeneity_loss_weight)
        self.rank_loss_weight = float(rank_loss_weight)
        self.rank_margin = float(rank_margin)
        self.sparsity_loss_weight = float(sparsity_loss_weight)
        self.sparsity_blocks = sparsity_blocks
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
            "singularity_position": self.singularity_position,
            "heterogeneity_measure": self.heterogeneity_measure,
            "early_blocks": self.early_blocks,
            "heterogeneity_loss_weight": self.heterogeneity_loss_weight,
            "rank_loss_weight": self.rank_loss_weight,
            "rank_margin": self.rank_margin,
            "sparsity_loss_weight": self.sparsity_loss_weight,
            "sparsity_blocks": self.sparsity_blocks,
        }

    def make_mto_trackers(self):
        self.singularity_tracker = (
            keras.metrics.Mean(name="singularity_loss") if self.singularity_loss_weight else None
        )
        self.entropy_tracker = keras.metrics.Mean(name="entropy_loss") if self.entropy_loss_weight else None
        self.block_term_trackers = {
            name: keras.metrics.Mean(name=name)
            for name, weight in self.block_term_weights().items()
            if weight
        }

    def block_term_weights(self):
        return {
            "heterogeneity_loss": self.heterogeneity_loss_weight,
            "rank_loss": self.rank_loss_weight,
            "sparsity_loss": self.sparsity_loss_weight,
        }

    def wants_block_terms(self):
        return any(self.block_term_weights().values())

    def recalibration_bias(self, masked):
        """The attention bias forbidding (visible query -> masked key), from `masked` `(N, T)` floats."""
        return forbidden_pairs_bias((1.0 - masked)[:, :, None] * masked[:, None, :])

    def block_terms(self, layers, masked):
        """MTO's block terms per row `{name: (N,)}` from the blocks' `(states, attention_probs)` of
        the transformer masked tokens enter, with `masked` `(N, T)` (1 = masked, 0 = visible or CLS)."""
        if not self.wants_block_terms():
            return {}
        if self.heterogeneity_measure == "entropy":
            heterogeneities = [entropy_heterogeneity(probs, masked) for _, probs in layers]
        else:
            heterogeneities = [cosine_heterogeneity(states, masked) for states, _ in layers]
        early, rank = heterogeneity_terms(heterogeneities, self.early_blocks, self.rank_margin)
        terms = {}
        if self.heterogeneity_loss_weight:
            terms["heterogeneity_loss"] = early
        if self.rank_loss_weight:
            terms["rank_loss"] = rank
        if self.sparsity_loss_weight:
            chosen = {"all": layers, "early": layers[: self.early_blocks], "late": layers[self.early_blocks :]}
            chosen = chosen[self.sparsity_blocks]
            terms["sparsity_loss"] = sum(visible_to_masked_attention(probs, masked) for _, probs in chosen) / len(chosen)
        return terms

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
        bias = self.recalibration_bias(masked_with_cls) if self.attention_recalibration else None
        wants_layers = bool(self.singularity_loss_weight or self.entropy_loss_weight or self.wants_block_terms())
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
            if self.singularity_position:
                term = singularity_loss(x, mask, real, 1.0 - mask)
            else:
                term = self.token_singularity(real, 1.0 - mask)
            for weight, (states, _) in zip(self._depth_weights, layers):
                if not weight:
                    continue
                states = states[:, self.encoder.num_extra_tokens :]
                term = term + float(weight) * singularity_loss(states, mask, states, 1.0 - mask)
            outputs["singularity_loss"] = term
        if self.entropy_loss_weight:
            outputs["entropy_loss"] = sum(
                float(weight) * masked_query_entropy(probs, masked_with_cls)
                for weight, (_, probs) in zip(self._depth_weights, layers)
            )
        outputs.update(self.block_terms(layers, masked_with_cls))
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
        for name, tracker in self.block_term_trackers.items():
            term = ops.mean(y_pred[name])
            loss = loss + self.block_term_weights()[name] * term
            tracker.update_state(term)
        return loss
