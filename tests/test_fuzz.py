"""Fuzzed shapes and dtypes for the public layers: each call works or raises a ValueError that names
the problem; never a backend error."""

import functools
import numbers

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keras_d2v2 import (
    BlockMasking1D,
    ContextualizedTargets,
    ConvDecoder1D,
    Data2Vec2,
    InverseBlockMasking,
    RandomMasking,
    ShuffledBatches,
    TransformerBlock,
)
from keras_d2v2.convert import read_fairseq_checkpoint

# Derandomized: CI runs the same examples every time; explicit @example()s pin cases found before.
FUZZ = settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = st.sampled_from(["float32", "float16", "int32", "uint8", "float64"])


def shapes(min_dims, max_dims):
    return st.lists(st.integers(1, 9), min_size=min_dims, max_size=max_dims).map(tuple)


@FUZZ
@given(batch=st.integers(1, 3), tokens=st.integers(1, 70), mask_prob=st.floats(0.05, 0.95), clones=st.integers(1, 3))
def test_masking_works_or_names_the_problem(batch, tokens, mask_prob, clones):
    layer = InverseBlockMasking(mask_prob=mask_prob, clone_batch=clones, seed=0)
    try:
        mask = np.asarray(layer(np.zeros((batch, tokens, 1), "float32")))
    except ValueError as error:
        assert "square patch grid" in str(error) or "visible token" in str(error) or "masks no token" in str(error)
        return
    assert mask.shape == (batch * clones, tokens)
    assert (mask.sum(1) == tokens - int(tokens * (1 - mask_prob))).all()


@FUZZ
@given(shape=shapes(1, 4), dtype=DTYPES)
@example(shape=(1, 1, 2), dtype="int32")
def test_transformer_block_works_or_names_the_problem(shape, dtype):
    block = TransformerBlock(num_heads=2)
    try:
        out, ffn = block(np.ones(shape, dtype))
    except ValueError as error:
        assert any(word in str(error) for word in ("num_heads", "rank", "dtype", "shape")), str(error)
        return
    assert tuple(out.shape) == shape and tuple(ffn.shape) == shape


@FUZZ
@given(shape=shapes(1, 5), dtype=DTYPES)
def test_model_input_works_or_names_the_problem(shape, dtype):
    try:
        tiny_model()(np.ones(shape, dtype))
    except ValueError as error:
        assert "`images` must" in str(error), str(error)
        return
    assert shape[1:] == (32, 32, 3) and "float" in dtype


@FUZZ
@given(count=st.integers(0, 4), top_k=st.integers(1, 4), shape=shapes(3, 3))
def test_targets_work_or_name_the_problem(count, top_k, shape):
    try:
        out = ContextualizedTargets(top_k=top_k)([np.ones(shape, "float32")] * count)
    except ValueError as error:
        assert f"`top_k`={top_k} is larger than the number of blocks ({count})" in str(error)
        return
    assert tuple(out.shape) == shape


@FUZZ
@given(batch=st.integers(1, 3), tokens=st.integers(1, 40), mask_prob=st.floats(0.05, 0.95), clones=st.integers(1, 3))
def test_random_masking_works_or_names_the_problem(batch, tokens, mask_prob, clones):
    layer = RandomMasking(mask_prob=mask_prob, clone_batch=clones, seed=0)
    try:
        mask = np.asarray(layer(np.zeros((batch, tokens, 1), "float32")))
    except ValueError as error:
        assert "visible token" in str(error) or "masks no token" in str(error), str(error)
        return
    assert mask.shape == (batch * clones, tokens)
    assert (mask.sum(1) == tokens - int(tokens * (1 - mask_prob))).all()


@FUZZ
@given(
    tokens=st.integers(1, 60),
    mask_prob=st.floats(0.05, 0.95),
    length=st.integers(1, 7),
    adjust=st.floats(0.0, 0.2),
    inverse=st.booleans(),
)
def test_block_masking_1d_works_or_names_the_problem(tokens, mask_prob, length, adjust, inverse):
    layer = BlockMasking1D(mask_prob=mask_prob, block_length=length, mask_prob_adjust=adjust, inverse=inverse,
                           clone_batch=2, seed=0)
    try:
        mask = np.asarray(layer(np.zeros((2, tokens, 1), "float32")))
    except ValueError as error:
        assert "visible token" in str(error) or "masks no frame" in str(error), str(error)
        return
    masked = tokens - int(tokens * (1 - mask_prob)) if inverse else int(tokens * mask_prob)
    assert mask.shape == (4, tokens) and set(np.unique(mask)) <= {0.0, 1.0}
    assert (mask.sum(1) == masked).all()


@FUZZ
@given(samples=st.integers(1, 2000), rank=st.integers(1, 3), dtype=st.sampled_from(["float32", "int16", "float16"]))
def test_audio_model_input_works_or_names_the_problem(samples, rank, dtype):
    shape = (2, samples, 1)[:rank] if rank > 1 else (samples,)
    try:
        tiny_audio_model()(np.ones(shape, dtype))
    except ValueError as error:
        assert "`audio`" in str(error) or "`mask_prob`" in str(error), str(error)
        return
    assert rank == 2 and samples >= 400 and "float" in dtype


@FUZZ
@given(shape=shapes(1, 4), dtype=st.sampled_from(["int32", "int64", "float32", "uint8"]), value=st.integers(-2, 120))
def test_text_model_input_works_or_names_the_problem(shape, dtype, value):
    try:
        tiny_text_model()(np.full(shape, value).astype(dtype))
    except ValueError as error:
        assert "`tokens`" in str(error) or "`mask_prob`" in str(error), str(error)
        return
    assert len(shape) == 2 and shape[1] <= 32 and "int" in dtype and 0 <= value < 100


@FUZZ
@given(length=st.integers(1, 12), dim=st.sampled_from([4, 6, 8]), kernel=st.integers(1, 6))
def test_conv_decoder_1d_works_or_names_the_problem(length, dim, kernel):
    try:
        out = ConvDecoder1D(decoder_dim=8, num_layers=2, kernel_size=kernel, groups=4)(np.ones((2, length, dim), "float32"))
    except ValueError as error:
        assert "`groups` (4) must divide the token dimension (6)" in str(error), str(error)
        return
    assert tuple(out.shape) == (2, length, dim)


@FUZZ
@given(
    batch_size=st.one_of(st.integers(-2, 12), st.integers(1, 12).map(np.int64), st.floats(0, 12), st.booleans(),
                         st.just([4]), st.text(max_size=2), st.none()),
    seed=st.one_of(st.integers(-1, 3), st.integers(0, 3).map(np.uint8), st.floats(0, 3), st.text(max_size=2)),
)
@example(batch_size=np.int64(4), seed=0)
def test_shuffled_batches_work_or_name_the_argument(batch_size, seed):
    def integer(value, least):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least

    try:
        data = ShuffledBatches(np.arange(10, dtype="float32"), batch_size=batch_size, seed=seed)
    except ValueError as error:
        if not integer(batch_size, 1):
            assert f"`batch_size` must be a positive integer, got {batch_size!r}" in str(error)
        else:
            assert not integer(seed, 0) and "`seed` must be a non-negative integer" in str(error)
        return
    assert integer(batch_size, 1) and integer(seed, 0)
    (batch,) = data[0]
    assert len(data) == -(-10 // int(batch_size)) and len(batch) == min(10, int(batch_size))


@FUZZ
@given(content=st.binary(max_size=300))
@example(content=b"")
@example(content=b"N.")  # a pickle of None
def test_any_bytes_read_as_a_checkpoint_name_the_file(tmp_path, content):
    pytest.importorskip("torch")
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    try:
        read_fairseq_checkpoint(path)
    except ValueError as error:
        assert str(path) in str(error) and "expected a fairseq data2vec 2.0 checkpoint" in str(error), str(error)
        return
    raise AssertionError(f"{content!r} was read as a checkpoint")


@functools.cache
def tiny_model():
    return Data2Vec2.image(preset="tiny_test", seed=0)


@functools.cache
def tiny_text_model():
    return Data2Vec2.text(preset="tiny_test", seed=0)


@functools.cache
def tiny_audio_model():
    return Data2Vec2.audio(preset="tiny_test", seed=0)
