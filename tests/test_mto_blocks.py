"""MTO's block terms (heterogeneity `L_e`, rank `L_r`, sparsity `L_spa`) and the positioned
singularity term: each equals an independent NumPy computation, moves only what it should, is
logged by `fit` under jit, and is checked when misconfigured (docs/mto.md)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_d2v2 import Data2Vec2
from keras_d2v2.pretraining.mto import (
    cosine_heterogeneity,
    entropy_heterogeneity,
    heterogeneity_terms,
    visible_to_masked_attention,
)

from conftest import assert_close
from test_mto import changed, inputs, numpy_singularity, weights_by_path
from test_transformer_decoder import decoder_input, numpy_decoder

FULL = {"student_mode": "full_sequence"}
DECODER = {"decoder": "transformer", "mask_fill": "token"}
TERMS = {"heterogeneity_loss_weight": 1.0, "rank_loss_weight": 0.5, "sparsity_loss_weight": 0.25}


def tiny(**overrides):
    keras.utils.set_random_seed(0)
    return Data2Vec2.image(preset="tiny_test", seed=0, **overrides)


def numpy_js(probs, masked):
    m = masked[:, None, :, None]
    p_m = (probs * m).sum(2) / m.sum(2)
    p_v = (probs * (1 - m)).sum(2) / (1 - m).sum(2)
    h = lambda p: -(p * np.log(np.maximum(p, 1e-12))).sum(-1)  # noqa: E731
    return (h((p_m + p_v) / 2) - (h(p_m) + h(p_v)) / 2).mean(1) / np.log(2)


def numpy_cosine(states, masked):
    u = states / np.linalg.norm(states, axis=-1, keepdims=True)
    pairs = np.einsum("nqd,nkd->nqk", u, u) * masked[:, :, None] * (1 - masked)[:, None, :]
    return 1 - pairs.sum((1, 2)) / (masked.sum(1) * (1 - masked).sum(1))


def numpy_terms(layers, masked, early, margin, measure):
    if measure == "entropy":
        h = [numpy_js(probs, masked) for _, probs in layers]
    else:
        h = [numpy_cosine(states, masked) for states, _ in layers]
    rank = sum(np.maximum(h[i + 1] - h[i] + margin, 0) for i in range(early - 1, len(h) - 1))
    vis = 1 - masked
    sparsity = np.mean(
        [((probs * masked[:, None, None, :]).sum(-1) * vis[:, None]).sum((1, 2)) / (vis.sum(1) * probs.shape[1])
         for _, probs in layers], axis=0,
    )
    return {"heterogeneity_loss": -sum(h[:early]) / early, "rank_loss": rank, "sparsity_loss": sparsity}


def test_heterogeneity_measures_on_known_cases():
    masked = np.array([[1.0, 1.0, 0.0, 0.0]])
    disjoint = np.zeros((1, 2, 4, 4))
    disjoint[:, :, :2, :2] = 0.5  # masked queries attend to masked keys only, visible to visible
    disjoint[:, :, 2:, 2:] = 0.5
    alike = np.full((1, 2, 4, 4), 0.25)
    assert_close(entropy_heterogeneity(disjoint, masked), [1.0], rtol=1e-5)
    assert_close(entropy_heterogeneity(alike, masked), [0.0], atol=1e-6)
    assert_close(visible_to_masked_attention(disjoint, masked), [0.0], atol=1e-7)
    assert_close(visible_to_masked_attention(alike, masked), [0.5], rtol=1e-6)
    states = np.array([[[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [-3.0, 0.0]]])
    assert_close(cosine_heterogeneity(states, masked), [2.0], rtol=1e-6)
    assert_close(cosine_heterogeneity(np.abs(states), masked), [0.0], atol=1e-6)


def test_early_and_rank_terms_on_known_heterogeneities():
    h = [np.array([0.2]), np.array([0.6]), np.array([0.5]), np.array([0.7])]
    early, rank = heterogeneity_terms(h, early_blocks=2, margin=0.1)
    assert_close(early, [-0.4], rtol=1e-6)
    # pairs (1, 2) and (2, 3): relu(0.5 - 0.6 + 0.1) + relu(0.7 - 0.5 + 0.1)
    assert_close(rank, [0.3], rtol=1e-5)


@pytest.mark.parametrize("measure", ["entropy", "cosine"])
def test_decoder_block_terms_equal_numpy(measure):
    model = tiny(**DECODER, **TERMS, heterogeneity_measure=measure, early_blocks=2, rank_margin=0.05)
    x = inputs()
    out = model(x, training=False)
    decoder_x, mask = decoder_input(model, x["images"], x["mask"])
    _, layers = numpy_decoder(model.decoder, decoder_x)
    expected = numpy_terms(layers, mask, early=2, margin=0.05, measure=measure)
    for name, value in expected.items():
        assert_close(out[name], value, rtol=1e-4, atol=1e-6, name=name)
    reference = tiny(**DECODER)
    loss = float(ops.convert_to_numpy(model.compute_loss(x, y_pred=out, training=False)))
    base = float(ops.convert_to_numpy(reference.compute_loss(x, y_pred=out, training=False)))
    weighted = sum(TERMS[f"{name}_weight"] * value.mean() for name, value in expected.items())
    assert loss == pytest.approx(base + weighted, rel=1e-5)


def test_full_sequence_block_terms_and_positioned_singularity_equal_numpy():
    model = tiny(
        **FULL, attention_recalibration=True, heterogeneity_loss_weight=1.0, rank_loss_weight=1.0,
        singularity_loss_weight=1.0, singularity_position=True, early_blocks=1,
    )
    x = inputs()
    out = model(x, training=False)
    mask = x["mask"].reshape(8, 64)
    real = np.repeat(ops.convert_to_numpy(model.encoder.embed(x["images"])), 4, axis=0)
    token = ops.convert_to_numpy(model.mask_token) + ops.convert_to_numpy(model.encoder.patch_embedding.positions)
    filled = real * (1 - mask[..., None]) + token * mask[..., None]
    with_cls = np.pad(mask, ((0, 0), (1, 0)))
    bias = ((1 - with_cls)[:, :, None] * with_cls[:, None, :] * -1e4)[:, None].astype("float32")
    _, _, layers = model.encoder.encode(filled.astype("float32"), attention_bias=bias, return_layers=True)
    layers = [(ops.convert_to_numpy(s).astype(np.float64), ops.convert_to_numpy(p).astype(np.float64)) for s, p in layers]
    expected = numpy_terms(layers, with_cls, early=1, margin=0.0, measure="entropy")
    for name in ("heterogeneity_loss", "rank_loss"):
        assert_close(out[name], expected[name], rtol=1e-4, atol=1e-6, name=name)
    # The token plus its position against the visible tokens, then the per-block terms.
    singularity = numpy_singularity(filled, mask, real, 1 - mask)
    for w, (states, _) in zip((3 - np.arange(3)) / 3, layers):
        singularity = singularity + w * numpy_singularity(states[:, 1:], mask, states[:, 1:], 1 - mask)
    assert_close(out["singularity_loss"], singularity, rtol=1e-4, atol=1e-6, name="singularity")


def one_sgd_step(**overrides):
    model = tiny(**overrides)
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    model.fit(inputs(), batch_size=2, epochs=1, shuffle=False, verbose=0)
    return weights_by_path(model)


@pytest.mark.parametrize(
    "term, untouched",
    [
        # Attention probabilities depend on neither the output head nor the last block's MLP. At
        # init both groups attend almost alike, where the divergence's gradient is nearly 0: hence the weight.
        ({"heterogeneity_loss_weight": 1e3}, ("decoder/projection", "decoder/norm", "decoder/block2/fc")),
        ({"sparsity_loss_weight": 1.0}, ("decoder/projection", "decoder/norm", "decoder/block2/fc")),
        # Block outputs depend on every block, not on the head.
        ({"heterogeneity_loss_weight": 1.0, "heterogeneity_measure": "cosine"}, ("decoder/projection", "decoder/norm")),
    ],
)
def test_decoder_block_terms_move_the_token_and_blocks_not_the_head(term, untouched):
    base = one_sgd_step(**DECODER, heterogeneity_measure=term.get("heterogeneity_measure", "entropy"))
    moved = changed(base, one_sgd_step(**DECODER, **term), "")
    assert "mask_token" in moved and any("decoder/block0/qkv" in p for p in moved)
    assert not [p for p in moved if p.startswith(untouched)]


def test_full_sequence_block_terms_move_the_encoder_not_the_decoder():
    base = one_sgd_step(**FULL, heterogeneity_measure="cosine")
    terms = {"heterogeneity_loss_weight": 1.0, "rank_loss_weight": 1.0, "heterogeneity_measure": "cosine"}
    moved = changed(base, one_sgd_step(**FULL, **terms), "")
    assert "mask_token" in moved and any(p.startswith("encoder/prenet_block0") for p in moved)
    assert not [p for p in moved if p.startswith("decoder")]


def test_fit_logs_the_block_terms_under_jit():
    model = tiny(**DECODER, **TERMS, heterogeneity_measure="cosine")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=True)
    history = model.fit(inputs(), batch_size=2, epochs=2, verbose=0)
    for name in ("heterogeneity_loss", "rank_loss", "sparsity_loss"):
        assert np.isfinite(history.history[name]).all(), name
    assert model.get_config()["heterogeneity_measure"] == "cosine"
    clone = Data2Vec2.from_config(model.get_config())
    assert (clone.early_blocks, clone.rank_loss_weight, clone.sparsity_blocks) == (1, 0.5, "all")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"heterogeneity_loss_weight": 1.0}, "where masked tokens meet attention"),
        ({"attention_recalibration": True}, "where masked tokens meet attention"),
        ({**DECODER, "attention_recalibration": True, "sparsity_loss_weight": 1.0}, "use one of them"),
        ({**DECODER, "rank_loss_weight": 1.0, "early_blocks": 3}, "must be below the number of blocks"),
        ({**DECODER, "heterogeneity_loss_weight": 1.0, "early_blocks": 0}, r"`early_blocks` must be an integer in \[1, 3\]"),
        ({**DECODER, "heterogeneity_measure": "kl"}, "`heterogeneity_measure` must be one of"),
        ({**DECODER, "sparsity_loss_weight": 1.0, "sparsity_blocks": "middle"}, "`sparsity_blocks` must be one of"),
        ({**DECODER, "rank_margin": -0.1}, "`rank_margin` must be >= 0"),
        ({**DECODER, "singularity_loss_weight": 1.0, "singularity_position": True}, "only the full-sequence"),
    ],
)
def test_bad_block_term_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)
