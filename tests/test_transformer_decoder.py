"""The transformer decoder and MAE's pixel targets: each against independent NumPy code, in the layer
and inside `Data2Vec2`'s step; the builder's `decoder="transformer"`, `targets="pixels"`, `masking="random"`."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_d2v2
from keras_d2v2 import Data2Vec2, PixelTargets, TransformerDecoder
from keras_d2v2.layers import sincos_positions_2d

from conftest import assert_close
from numpy_reference import numpy_block, numpy_layer_norm


def decoder_weights(decoder):
    return {v.path.split("/", 1)[1]: ops.convert_to_numpy(v).astype(np.float64) for v in decoder.weights}


def numpy_decoder(decoder, x, bias=None):
    """`(prediction, [(block output, attention probabilities), ...])` of a `TransformerDecoder`."""
    w = decoder_weights(decoder)
    side = int(np.sqrt(x.shape[1]))
    h = x @ w["input_projection/kernel"] + w["input_projection/bias"] + sincos_positions_2d(decoder.decoder_dim, side)
    layers = []
    for block in decoder.blocks:
        h, _, probs = numpy_block(block, h, pre_ln=True, bias=bias, return_probs=True)
        layers.append((h, probs))
    h = numpy_layer_norm(h, decoder.norm_eps, w["norm/gamma"], w["norm/beta"])
    return h @ w["projection/kernel"] + w["projection/bias"], layers


def randomize_norms(layer):
    """Makes the LayerNorms' affine parameters matter (they start at 1 and 0)."""
    rng = np.random.default_rng(5)
    for v in layer.weights:
        if v.path.endswith(("gamma", "beta")):
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))


def test_transformer_decoder_matches_numpy_and_roundtrips(tmp_path):
    decoder = TransformerDecoder(decoder_dim=16, num_layers=2, num_heads=4, output_dim=12, seed=1)
    x = np.random.default_rng(0).normal(size=(3, 9, 8)).astype("float32")
    decoder.build(x.shape)
    randomize_norms(decoder)
    bias = np.where(np.random.default_rng(1).random((3, 1, 9, 9)) < 0.3, -1e4, 0.0).astype("float32")
    prediction, layers = decoder(x, attention_bias=bias, return_layers=True)
    expected, expected_layers = numpy_decoder(decoder, x.astype(np.float64), bias)
    assert prediction.shape == (3, 9, 12)
    assert_close(prediction, expected, name="prediction")
    for (states, probs), (expected_states, expected_probs) in zip(layers, expected_layers):
        assert_close(states, expected_states, name="block output")
        assert_close(probs, expected_probs, atol=1e-6, name="attention")
    assert_close(decoder(x), numpy_decoder(decoder, x.astype(np.float64))[0], name="no bias")

    model = keras.Sequential([keras.Input((9, 8)), decoder])
    path = str(tmp_path / "decoder.keras")
    model.save(path)
    assert_close(keras.saving.load_model(path)(x), model(x), rtol=1e-6)


def test_transformer_decoder_rejects_bad_grids_and_sizes():
    with pytest.raises(ValueError, match="square token grid"):
        TransformerDecoder(decoder_dim=16, num_heads=4).build((None, 10, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        TransformerDecoder(decoder_dim=18, num_heads=3)
    with pytest.raises(ValueError, match="`output_dim`"):
        TransformerDecoder(decoder_dim=16, num_heads=4, output_dim=0)


def fixed_mask(n, clones, mask_prob=0.8):
    masking = keras_d2v2.InverseBlockMasking(mask_prob=mask_prob, clone_batch=clones, seed=3)
    return ops.convert_to_numpy(masking(np.zeros((n, 64, 1), "float32"))).reshape(n, clones, 64)


def decoder_input(model, images, mask):
    """What the visible-only student hands its decoder, built by hand: the encoded visible tokens
    of each clone in their slots, the learnable token in the masked ones."""
    clones = mask.shape[1]
    mask = mask.reshape(-1, mask.shape[-1])
    real = ops.convert_to_numpy(model.encoder.embed(images)).repeat(clones, 0)
    visible = np.stack([real[i][mask[i] == 0] for i in range(len(mask))])
    hidden = ops.convert_to_numpy(model.encoder.encode(visible)[0])[:, 1:]
    x = np.repeat(ops.convert_to_numpy(model.mask_token)[None, None], mask.shape[1], 1).repeat(len(mask), 0)
    for i in range(len(mask)):
        x[i][mask[i] == 0] = hidden[i]
    return x.astype(np.float64), mask


def test_the_students_masked_token_path_through_the_transformer_decoder():
    model = Data2Vec2.image("tiny_test", decoder="transformer", mask_fill="token", attention_recalibration=True, seed=0)
    randomize_norms(model.decoder)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    mask = fixed_mask(2, 4)
    out = model({"images": images, "mask": mask}, training=False)
    x, flat_mask = decoder_input(model, images, mask)
    bias = ((1 - flat_mask)[:, :, None] * flat_mask[:, None, :] * -1e4)[:, None]
    expected, _ = numpy_decoder(model.decoder, x, bias)
    assert_close(out["prediction"], expected, name="prediction")
    # Recalibration: the visible slots' predictions do not depend on the masked token.
    model.mask_token.assign(ops.convert_to_numpy(model.mask_token) + 1.0)
    moved = ops.convert_to_numpy(model({"images": images, "mask": mask}, training=False)["prediction"])
    visible = flat_mask == 0
    assert_close(moved[visible], ops.convert_to_numpy(out["prediction"])[visible], rtol=1e-5)
    assert not np.allclose(moved[~visible], ops.convert_to_numpy(out["prediction"])[~visible], atol=1e-3)


def numpy_pixel_targets(images, patch):
    n, h, w, c = images.shape
    patches = images.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(n, -1, patch * patch * c).astype(np.float64)
    mean = patches.mean(-1, keepdims=True)
    var = patches.var(-1, ddof=1, keepdims=True)  # MAE: torch's unbiased `var`
    return (patches - mean) / np.sqrt(var + 1e-6)


def test_pixel_targets_match_numpy():
    images = np.random.default_rng(2).normal(size=(2, 8, 12, 3)).astype("float32")
    assert_close(PixelTargets(patch_size=4)(images), numpy_pixel_targets(images, 4), rtol=1e-5)
    raw = PixelTargets(patch_size=4, normalize=False)(images)
    assert_close(raw[0, 1], images[0, :4, 4:8].reshape(-1), rtol=1e-6)  # patch (row 0, col 1)
    with pytest.raises(ValueError, match="at least 2 values"):
        PixelTargets(patch_size=1)(images[..., :1])


def mae(**overrides):
    return Data2Vec2.image(
        "tiny_test", decoder="transformer", targets="pixels", masking="random", mask_prob=0.75, clone_batch=2,
        seed=0, **overrides,
    )


def test_mae_loss_is_the_mean_squared_pixel_error_over_masked_patches_with_no_teacher():
    model = mae()
    assert model.teacher is None and isinstance(model.targets, PixelTargets)
    assert model.decoder.output_dim == 48 and model.cls_loss_weight == 0.0
    assert not any("/teacher/" in v.path for v in model.weights)  # only the EMA step counter remains
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    masking = keras_d2v2.RandomMasking(mask_prob=0.75, clone_batch=2, seed=4)
    mask = ops.convert_to_numpy(masking(np.zeros((2, 64, 1)))).reshape(2, 2, 64)
    x = {"images": images, "mask": mask}
    out = model(x, training=False)
    prediction = ops.convert_to_numpy(out["prediction"]).astype(np.float64)
    targets = numpy_pixel_targets(images, 4).repeat(2, 0)
    weights = mask.reshape(4, 64)
    expected = (((prediction - targets) ** 2).mean(-1) * weights).sum() / weights.sum()
    loss = model.compute_loss(x, y_pred=out, training=False)
    assert_close(loss, expected, rtol=1e-5, name="loss")


def test_mae_fits_counts_updates_and_roundtrips(tmp_path):
    model = mae()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    history = model.fit(images, batch_size=4, epochs=1, verbose=0)
    assert "ema_decay" not in history.history and np.isfinite(history.history["loss"]).all()
    assert int(ops.convert_to_numpy(model.num_updates)) == 2
    path = str(tmp_path / "mae.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.teacher is None and isinstance(loaded.decoder, TransformerDecoder)
    x = {"images": images[:2], "mask": fixed_mask(2, 2, mask_prob=0.75)}
    assert_close(loaded(x)["prediction"], model(x)["prediction"], rtol=1e-6)
    with pytest.raises(ValueError, match="no teacher"):
        model.teacher_targets(images[:2])


def test_the_builder_swaps_parts_and_checks_them():
    model = Data2Vec2.image("tiny", decoder="transformer", decoder_layers=2, seed=0)
    assert isinstance(model.decoder, TransformerDecoder)
    assert (model.decoder.decoder_dim, model.decoder.num_layers, model.decoder.num_heads) == (64, 2, 4)
    assert isinstance(Data2Vec2.image("tiny", masking="random", seed=0).masking, keras_d2v2.RandomMasking)
    # Pixel targets with the conv decoder: the decoder predicts patch_size**2 * channels values.
    conv_mae = Data2Vec2.image("tiny", targets="pixels", patch_size=7, seed=0)
    assert conv_mae.decoder.output_dim == 49 and conv_mae.targets.patch_size == 7
    with pytest.raises(ValueError, match="`decoder` must be one of"):
        Data2Vec2.image("tiny", decoder="lstm")
    with pytest.raises(ValueError, match="are for images"):
        Data2Vec2.text("tiny_test", targets="pixels")
    with pytest.raises(ValueError, match="`cls_loss_weight` must be 0"):
        Data2Vec2.image("tiny", targets="pixels", cls_loss_weight=0.01)
    with pytest.raises(ValueError, match="`output_dim` must be 16"):
        Data2Vec2.image("tiny", targets="pixels", decoder_output_dim=64)
