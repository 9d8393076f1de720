"""Layer tests against independent numpy computations, on the active backend."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_d2v2.layers import (
    ContextualizedTargets,
    ConvDecoder1D,
    ConvDecoder2D,
    InverseBlockMasking,
    PatchEmbedding,
    TransformerBlock,
    mask_info,
)

from conftest import assert_close
from numpy_reference import numpy_block, numpy_gelu, numpy_layer_norm


def roundtrip(layer, *args):
    """`from_config(get_config())` with the same weights gives the same outputs."""
    clone = layer.__class__.from_config(layer.get_config())
    out = layer(*args)
    clone(*args)
    clone.set_weights(layer.get_weights())
    for a, b in zip(keras.tree.flatten(out), keras.tree.flatten(clone(*args))):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ masking
def test_masking_exact_count_every_row_vit_base():
    masking = InverseBlockMasking(mask_prob=0.8, block_length=3, mask_prob_adjust=0.07, clone_batch=16, seed=1)
    mask = ops.convert_to_numpy(masking(np.zeros((4, 196, 1), "float32")))
    assert mask.shape == (64, 196)
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert (mask.sum(1) == 196 - 39).all()  # int(196 * (1 - 0.8)) = 39 visible, as the reference
    assert len({row.tobytes() for row in mask}) == 64  # independent masks for every clone


def mean_visible_neighbours(mask, side):
    grid = (1 - mask).reshape(-1, side, side)
    padded = np.pad(grid, ((0, 0), (1, 1), (1, 1)))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    return (neighbours * grid).sum() / grid.sum()


def test_masking_visible_region_is_blocks():
    masking = InverseBlockMasking(mask_prob=0.8, block_length=3, mask_prob_adjust=0.07, clone_batch=8, seed=2)
    mask = ops.convert_to_numpy(masking(np.zeros((8, 196, 1), "float32")))
    rng = np.random.default_rng(0)
    random_mask = np.ones_like(mask)
    for row in random_mask:
        row[rng.choice(196, 39, replace=False)] = 0
    # A visible patch inside 3x3 blocks has ~2-3 visible 4-neighbours; at random, 4 * 0.2 = 0.8.
    assert mean_visible_neighbours(mask, 14) > 2.0
    assert mean_visible_neighbours(random_mask, 14) < 1.2


def test_masking_seeded_and_advancing():
    tokens = np.zeros((2, 64, 1), "float32")
    first = InverseBlockMasking(mask_prob=0.8, clone_batch=2, seed=7)
    second = InverseBlockMasking(mask_prob=0.8, clone_batch=2, seed=7)
    a, b = ops.convert_to_numpy(first(tokens)), ops.convert_to_numpy(second(tokens))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, ops.convert_to_numpy(first(tokens)))


def test_mask_info_restores_order():
    mask = np.array([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0]], "float32")
    ids_keep, ids_restore = (ops.convert_to_numpy(t) for t in mask_info(ops.convert_to_tensor(mask), 3))
    np.testing.assert_array_equal(ids_keep, [[1, 3, 4], [0, 3, 5]])
    tokens = np.arange(12).reshape(2, 6)
    shuffled = np.concatenate([np.take_along_axis(tokens, ids_keep, 1), tokens[mask == 1].reshape(2, 3)], 1)
    np.testing.assert_array_equal(np.take_along_axis(shuffled, ids_restore, 1), tokens)


@pytest.mark.parametrize(
    "kwargs, call_tokens, message",
    [
        (dict(mask_prob=0.99), 64, "leaves no visible token"),
        (dict(mask_prob=1.0), 64, "`mask_prob` must be in"),
        (dict(clone_batch=0), 64, "`clone_batch` must be an integer >= 1"),
        (dict(block_length=0), 64, "`block_length`"),
        (dict(), 60, "square patch grid"),
    ],
)
def test_masking_bad_arguments(kwargs, call_tokens, message):
    with pytest.raises(ValueError, match=message):
        InverseBlockMasking(**kwargs)(np.zeros((1, call_tokens, 1), "float32"))


def test_masking_config_roundtrip():
    layer = InverseBlockMasking(mask_prob=0.75, block_length=2, mask_prob_adjust=0.1, clone_batch=3, seed=4)
    clone = InverseBlockMasking.from_config(layer.get_config())
    tokens = np.zeros((2, 64, 1), "float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(tokens)), ops.convert_to_numpy(clone(tokens)))


# ------------------------------------------------------------------------------ patch embedding
def test_patch_embedding_matches_numpy():
    layer = PatchEmbedding(image_size=8, patch_size=4, channels=2, embed_dim=8)
    images = np.random.default_rng(0).normal(size=(3, 8, 8, 2)).astype("float32")
    out = ops.convert_to_numpy(layer(images))
    kernel, bias = (ops.convert_to_numpy(w) for w in layer.projection.weights)
    patches = images.reshape(3, 2, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4, 5).reshape(3, 4, 32)  # row-major grid
    expected = patches @ kernel.reshape(32, 8) + bias + ops.convert_to_numpy(layer.positions)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    roundtrip(layer, images)


def test_patch_embedding_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible by `patch_size`"):
        PatchEmbedding(image_size=30, patch_size=4)


# ---------------------------------------------------------------------------- transformer block
@pytest.mark.parametrize("pre_ln", [False, True])
def test_transformer_block_matches_numpy(pre_ln):
    block = TransformerBlock(num_heads=4, norm_eps=1e-6, layer_norm_first=pre_ln)
    x = np.random.default_rng(1).normal(size=(2, 5, 16)).astype("float32")
    out, ffn = block(x)
    block.norm1.gamma.assign(np.linspace(0.5, 1.5, 16))  # make the affine parameters matter
    out, ffn = block(x)
    expected_out, expected_ffn = numpy_block(block, x.astype(np.float64), pre_ln)
    assert_close(out, expected_out, name="out")
    assert_close(ffn, expected_ffn, name="ffn")
    roundtrip(block, x)


def test_blocks_start_from_different_weights():
    blocks = [TransformerBlock(num_heads=4) for _ in range(2)]
    for block in blocks:
        block.build((None, 5, 16))
    for layer in ("qkv", "attention_projection", "fc1", "fc2"):
        first, second = (ops.convert_to_numpy(getattr(b, layer).kernel) for b in blocks)
        assert not np.array_equal(first, second), layer
        assert abs(float(first.std()) - 0.02) < 0.005, layer


def test_transformer_block_rejects_heads_not_dividing_dim():
    with pytest.raises(ValueError, match="`num_heads` \\(5\\) must divide"):
        TransformerBlock(num_heads=5)(np.zeros((1, 3, 16), "float32"))


# ---------------------------------------------------------------------------------- decoder
def numpy_decoder(decoder, x):
    """Independent float64 decoder: direct per-group, per-offset sums over a padded (H, W) grid."""
    kernels = [ops.convert_to_numpy(w).astype(np.float64) for w in decoder.kernels]
    biases = [ops.convert_to_numpy(w).astype(np.float64) for w in decoder.biases]
    n, t, d = x.shape
    two_d = isinstance(decoder, ConvDecoder2D)
    k, g = decoder.kernel_size, decoder.groups
    height, width = (math.isqrt(t),) * 2 if two_d else (t, 1)
    kw = k if two_d else 1
    h = x.reshape(n, height, width, d)
    for i in range(decoder.num_layers):
        kernel = kernels[i] if two_d else kernels[i][:, None]
        cin, cout = h.shape[-1], kernel.shape[-1]
        wpad = (k // 2, (k - 1) // 2) if two_d else (0, 0)
        padded = np.pad(h, ((0, 0), (k // 2, (k - 1) // 2), wpad, (0, 0)))
        out = np.zeros((n, height, width, cout))
        for grp in range(g):
            ci = slice(grp * cin // g, (grp + 1) * cin // g)
            co = slice(grp * cout // g, (grp + 1) * cout // g)
            for dy in range(k):
                for dx in range(kw):
                    out[..., co] += padded[:, dy : dy + height, dx : dx + width, ci] @ kernel[dy, dx, :, co]
        out = numpy_gelu(numpy_layer_norm(out + biases[i], 1e-5))
        h = out + h if decoder.residual and cin == cout else out
    h = h.reshape(n, t, -1)
    for j, dense in enumerate(decoder.projections):
        kernel, bias = (ops.convert_to_numpy(w).astype(np.float64) for w in dense.weights)
        h = h @ kernel + bias
        if j < len(decoder.projections) - 1:
            h = numpy_gelu(h)
    return h


@pytest.mark.parametrize("conv_impl", ["native", "grouped_matmul", "per_group"])
@pytest.mark.parametrize("kernel_size, dim", [(3, 8), (4, 16)])
def test_conv_decoder_matches_numpy(kernel_size, dim, conv_impl):
    # dim 8 != decoder_dim 16: the first layer must skip the residual; even kernels pad like SamePad.
    decoder = ConvDecoder2D(decoder_dim=16, num_layers=2, kernel_size=kernel_size, groups=4, conv_impl=conv_impl)
    x = np.random.default_rng(2).normal(size=(2, 16, dim)).astype("float32")
    assert_close(decoder(x), numpy_decoder(decoder, x.astype(np.float64)))
    roundtrip(decoder, x)


@pytest.mark.parametrize("conv_impl", ["native", "grouped_matmul", "per_group"])
@pytest.mark.parametrize(
    "kwargs, dim",
    [
        (dict(kernel_size=7, groups=4, residual=True), 8),  # audio-style; first layer skips the residual
        (dict(kernel_size=4, groups=4, residual=True), 16),  # even kernel: SamePad drops the last frame
        (dict(kernel_size=9, groups=1, residual=False, projection_layers=2), 16),  # the text decoder
    ],
)
def test_conv_decoder_1d_matches_numpy(kwargs, dim, conv_impl):
    decoder = ConvDecoder1D(decoder_dim=16, num_layers=2, conv_impl=conv_impl, **kwargs)
    x = np.random.default_rng(5).normal(size=(3, 11, dim)).astype("float32")
    assert_close(decoder(x), numpy_decoder(decoder, x.astype(np.float64)))
    assert len(decoder.projections) == kwargs.get("projection_layers", 1)
    roundtrip(decoder, x)


# -------------------------------------------------------------------------------------- targets
def test_contextualized_targets_match_numpy():
    rng = np.random.default_rng(3)
    layers = [rng.normal(loc=i, scale=i + 1, size=(2, 6, 4)).astype("float32") for i in range(3)]
    targets = ContextualizedTargets(top_k=2, instance_norm_target_layer=True, layer_norm_targets=True)
    inorm = lambda y: (y - y.mean(1, keepdims=True)) / np.sqrt(y.var(1, keepdims=True) + 1e-5)  # noqa: E731
    expected = numpy_layer_norm((inorm(layers[1]) + inorm(layers[2])) / 2, 1e-5)
    out = targets([ops.convert_to_tensor(y) for y in layers])
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert_close(out, expected)
    roundtrip(targets, layers)


def test_contextualized_targets_float32_from_half_inputs():
    targets = ContextualizedTargets(top_k=1)
    out = targets([ops.cast(np.ones((1, 3, 4)), "float16")])
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_contextualized_targets_top_k_too_large():
    with pytest.raises(ValueError, match="`top_k`=3 is larger than the number of blocks \\(2\\)"):
        ContextualizedTargets(top_k=3)([np.zeros((1, 2, 4), "float32")] * 2)
