"""Masked token optimization (docs/mto.md): each term changes the loss and the gradients of what it
should and nothing else, recalibration blocks visible -> masked attention, MTO off is the reference."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_d2v2
from keras_d2v2 import Data2Vec2

FULL = {"student_mode": "full_sequence"}


def tiny(**overrides):
    """The same initial weights every time: weight initializers draw from Keras' global seed."""
    keras.utils.set_random_seed(0)
    return Data2Vec2.image(preset="tiny_test", seed=0, **overrides)


def inputs(n=2, seed=0):
    """Images with a fixed mask (4 clones, 64 patches), so two models see exactly the same step."""
    masking = keras_d2v2.InverseBlockMasking(mask_prob=0.8, clone_batch=4, seed=3)
    mask = ops.convert_to_numpy(masking(np.zeros((n, 64, 1), "float32"))).reshape(n, 4, 64)
    images = np.random.default_rng(seed).normal(size=(n, 32, 32, 3)).astype("float32")
    return {"images": images, "mask": mask}


def weights_by_path(model):
    """Trainable weights by path, the model's own (auto-numbered) name left out."""
    own = model.name + "/"
    return {v.path.removeprefix(own): ops.convert_to_numpy(v).copy() for v in model.trainable_variables}


def one_sgd_step(**overrides):
    """Trainable weights after one plain-SGD step (the update is the gradient) on fixed inputs."""
    model = tiny(**overrides)
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    x = inputs()
    model.fit(x, batch_size=2, epochs=1, shuffle=False, verbose=0)
    return weights_by_path(model)


def changed(a, b, prefix):
    """Paths under `prefix` whose values differ between the two weight dicts by more than float32
    round-off (a term that needs attention probabilities runs the explicit softmax instead of the
    fused kernel, which moves other gradients by ~1e-7)."""
    return sorted(p for p in a if p.startswith(prefix) and not np.allclose(a[p], b[p], rtol=1e-4, atol=1e-6))


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def numpy_singularity(queries, query_weights, keys, key_weights):
    cos = np.einsum("nqd,nkd->nqk", unit(queries), unit(keys))
    pairs = query_weights[:, :, None] * key_weights[:, None, :]
    return (np.maximum(cos, 0) ** 2 * pairs).sum((1, 2)) / pairs.sum((1, 2))


def test_mto_off_is_the_reference_model():
    model = tiny()
    assert model.mask_token is None and model.student_mode == "visible_only" and model.mask_fill == "noise"
    assert not any("mask_token" in v.path for v in model.weights)
    assert {"singularity_loss", "entropy_loss"}.isdisjoint(m.name for m in model.metrics)


@pytest.mark.parametrize("mode", [{}, FULL])
def test_singularity_term_equals_an_independent_computation(mode):
    model = tiny(mask_fill="token", singularity_loss_weight=2.0, **mode)
    x = inputs()
    out = model(x, training=False)
    mask = x["mask"].reshape(8, 64)
    token = ops.convert_to_numpy(model.mask_token)[None, None, :].repeat(8, 0)
    if mode:
        real = np.repeat(ops.convert_to_numpy(model.encoder.embed(x["images"])), 4, axis=0)
        expected = numpy_singularity(token, np.ones((8, 1)), real, 1 - mask)
        filled = real * (1 - mask[..., None]) + (token + ops.convert_to_numpy(model.encoder.patch_embedding.positions)) * mask[..., None]
        _, _, layers = model.encoder.encode(filled.astype("float32"), return_layers=True)
        weights = (3 - np.arange(3)) / 3
        for w, (states, _) in zip(weights, layers):
            states = ops.convert_to_numpy(states)[:, 1:]
            expected = expected + w * numpy_singularity(states, mask, states, 1 - mask)
    else:
        # The reference student encodes each clone's visible patches only.
        real = ops.convert_to_numpy(model.encoder.embed(x["images"])).repeat(4, 0)
        hidden, _ = model.encoder.encode(np.stack([real[i][mask[i] == 0] for i in range(8)]))
        visible = ops.convert_to_numpy(hidden)[:, 1:]
        expected = numpy_singularity(token, np.ones((8, 1)), visible, np.ones(visible.shape[:2]))
    np.testing.assert_allclose(ops.convert_to_numpy(out["singularity_loss"]), expected, rtol=1e-4, atol=1e-6)


def test_visible_only_singularity_moves_only_the_mask_token():
    base = one_sgd_step(mask_fill="token")
    with_term = one_sgd_step(mask_fill="token", singularity_loss_weight=1.0)
    assert changed(base, with_term, "") == ["mask_token"]


def test_full_sequence_singularity_moves_the_encoder_and_token_not_the_decoder():
    base = one_sgd_step(**FULL)
    with_term = one_sgd_step(**FULL, singularity_loss_weight=1.0)
    assert "mask_token" in changed(base, with_term, "")
    assert changed(base, with_term, "encoder/block")  # the per-layer term reaches the blocks
    assert changed(base, with_term, "decoder") == []


def test_entropy_term_moves_the_encoder_not_the_decoder_and_its_sign_matters():
    base = one_sgd_step(**FULL, attention_recalibration=True)
    lower = one_sgd_step(**FULL, attention_recalibration=True, entropy_loss_weight=1.0)
    higher = one_sgd_step(**FULL, attention_recalibration=True, entropy_loss_weight=1.0, entropy_sign=-1.0)
    moved = changed(base, lower, "encoder")
    assert any("qkv" in p for p in moved)
    assert changed(base, lower, "decoder") == []
    for path in moved:  # the opposite sign is the opposite gradient: base - lower == higher - base
        np.testing.assert_allclose(base[path] - lower[path], higher[path] - base[path], rtol=1e-3, atol=1e-6)


def test_entropy_term_equals_an_independent_computation_and_enters_the_loss():
    model = tiny(**FULL, attention_recalibration=True, entropy_loss_weight=0.5, entropy_sign=-1.0)
    x = inputs()
    out = model(x, training=False)
    mask = np.pad(x["mask"].reshape(8, 64), ((0, 0), (1, 0)))
    real = np.repeat(ops.convert_to_numpy(model.encoder.embed(x["images"])), 4, axis=0)
    token = ops.convert_to_numpy(model.mask_token) + ops.convert_to_numpy(model.encoder.patch_embedding.positions)
    filled = real * (1 - mask[:, 1:, None]) + token * mask[:, 1:, None]
    bias = ((1 - mask)[:, :, None] * mask[:, None, :] * -1e4)[:, None].astype("float32")
    _, _, layers = model.encoder.encode(filled.astype("float32"), attention_bias=bias, return_layers=True)
    expected = 0.0
    for w, (_, probs) in zip((3 - np.arange(3)) / 3, layers):
        p = ops.convert_to_numpy(probs)
        entropy = -(p * np.log(np.maximum(p, 1e-12))).sum(-1) / np.log(65)  # (N, H, Q)
        expected = expected + w * (entropy * mask[:, None]).sum((1, 2)) / (mask.sum(1) * p.shape[1])
    np.testing.assert_allclose(ops.convert_to_numpy(out["entropy_loss"]), expected, rtol=1e-4, atol=1e-6)

    reference = tiny(**FULL, attention_recalibration=True)
    loss = float(ops.convert_to_numpy(model.compute_loss(x, y_pred=out, training=False)))
    base = float(ops.convert_to_numpy(reference.compute_loss(x, y_pred=out, training=False)))
    assert loss == pytest.approx(base - 0.5 * expected.mean(), rel=1e-5)


def test_recalibration_blocks_visible_to_masked_attention():
    x = inputs()
    mask = np.pad(x["mask"].reshape(8, 64), ((0, 0), (1, 0))).astype(bool)  # CLS first, visible
    visible_states = {}
    for recalibrate in (True, False):
        for token_scale in (1.0, 50.0):
            model = tiny(**FULL, attention_recalibration=recalibrate, entropy_loss_weight=1.0)
            model.mask_token.assign(ops.convert_to_numpy(model.mask_token) * token_scale)
            real = np.repeat(ops.convert_to_numpy(model.encoder.embed(x["images"])), 4, axis=0)
            token = ops.convert_to_numpy(model.mask_token) + ops.convert_to_numpy(model.encoder.patch_embedding.positions)
            filled = np.where(mask[:, 1:, None], token, real).astype("float32")
            bias = (~mask[:, :, None] & mask[:, None, :]) * np.float32(-1e4) if recalibrate else None
            _, _, layers = model.encoder.encode(filled, attention_bias=None if bias is None else bias[:, None], return_layers=True)
            if recalibrate:
                for _, probs in layers:
                    p = ops.convert_to_numpy(probs)
                    forbidden = (~mask[:, None, :, None] & mask[:, None, None, :]) & np.ones(p.shape, bool)
                    assert np.all(p[forbidden] == 0.0)
            visible_states[recalibrate, token_scale] = np.stack(
                [ops.convert_to_numpy(s)[~mask] for s, _ in layers]
            )
    # Visible tokens never read masked ones: changing what fills the masked slots leaves them unchanged.
    np.testing.assert_array_equal(visible_states[True, 1.0], visible_states[True, 50.0])
    assert not np.allclose(visible_states[False, 1.0], visible_states[False, 50.0], atol=1e-3)


def test_model_recalibration_hides_the_mask_token_from_visible_tokens():
    """Through `call()`: with recalibration the CLS output (a visible token) ignores what fills the
    masked slots; without it, it does not."""
    x = inputs()
    cls = {}
    for recalibrate in (True, False):
        for scale in (1.0, 50.0):
            model = tiny(**FULL, attention_recalibration=recalibrate)
            model.mask_token.assign(ops.convert_to_numpy(model.mask_token) * scale)
            cls[recalibrate, scale] = ops.convert_to_numpy(model(x, training=False)["cls"])
    np.testing.assert_array_equal(cls[True, 1.0], cls[True, 50.0])
    assert not np.allclose(cls[False, 1.0], cls[False, 50.0], atol=1e-3)


@pytest.mark.parametrize("mode", [{"mask_fill": "token", "singularity_loss_weight": 1.0},
                                  {**FULL, "attention_recalibration": True, "singularity_loss_weight": 1.0,
                                   "entropy_loss_weight": 0.1}])
def test_fit_logs_each_term_under_jit_and_mixed_precision(mode):
    for dtype in ("float32", "mixed_bfloat16"):
        model = tiny(dtype=dtype, **mode)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        history = model.fit(inputs(4)["images"], batch_size=2, epochs=2, verbose=0).history
        terms = ["singularity_loss"] + (["entropy_loss"] if "entropy_loss_weight" in mode else [])
        for name in terms + ["loss"]:
            assert name in history and np.isfinite(history[name]).all(), (dtype, name)
        expected = np.array(history["regression_loss"]) + history["cls_loss"] + np.array(history["singularity_loss"])
        if "entropy_loss" in history:
            expected = expected + 0.1 * np.array(history["entropy_loss"])
        np.testing.assert_allclose(history["loss"], expected, rtol=1e-4)


def test_keras_file_roundtrip_keeps_mto(tmp_path):
    model = tiny(**FULL, attention_recalibration=True, singularity_loss_weight=0.5, entropy_loss_weight=0.1,
                 entropy_sign=-1.0, depth_weighting="deep")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.fit(inputs(2)["images"], batch_size=2, epochs=1, verbose=0)
    model.save(tmp_path / "mto.keras")
    loaded = keras.saving.load_model(tmp_path / "mto.keras")
    for key in ("student_mode", "mask_fill", "attention_recalibration", "singularity_loss_weight",
                "entropy_loss_weight", "entropy_sign", "depth_weighting"):
        assert getattr(loaded, key) == getattr(model, key), key
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded.mask_token), ops.convert_to_numpy(model.mask_token))
    x = inputs()
    for key in ("prediction", "singularity_loss", "entropy_loss"):
        np.testing.assert_allclose(ops.convert_to_numpy(model(x)[key]), ops.convert_to_numpy(loaded(x)[key]), rtol=1e-5, atol=1e-6)


def test_depth_weights():
    from keras_d2v2.pretraining.mto import depth_weights

    np.testing.assert_allclose(depth_weights(4, "shallow"), [1.0, 0.75, 0.5, 0.25])
    np.testing.assert_allclose(depth_weights(4, "deep"), [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(depth_weights(4, "uniform"), [1.0] * 4)
    np.testing.assert_allclose(depth_weights(4, "none"), [0.0] * 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"student_mode": "both"}, "student_mode"),
        ({"mask_fill": "zeros"}, "mask_fill"),
        ({"depth_weighting": "middle"}, "depth_weighting"),
        ({"entropy_sign": 0.5}, "entropy_sign"),
        ({"attention_recalibration": True}, "full_sequence"),
        ({"entropy_loss_weight": 0.1}, "full_sequence"),
        ({"singularity_loss_weight": 1.0}, 'mask_fill="token"'),
        ({"mask_fill": "token", "singularity_loss_weight": -1.0}, "singularity_loss_weight"),
    ],
)
def test_bad_mto_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_full_sequence_is_for_images_and_mask_noise_for_the_reference_student():
    with pytest.raises(ValueError, match="images only"):
        Data2Vec2.text(preset="tiny_test", seed=0, **FULL)
    model = tiny(mask_fill="token")
    x = inputs()
    x["mask_noise"] = np.zeros((2, 4, 64 - model.num_visible, 32), "float32")
    with pytest.raises(ValueError, match="mask_noise"):
        model(x)
