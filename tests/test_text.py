"""Text data2vec 2.0 on the active backend: random masking, padding, training, saving, bad input."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_d2v2 import Data2Vec2, RandomMasking, ShuffledBatches, TextEncoder
from keras_d2v2.data import PYTHON_DOCS_DIR, load_python_docs
from keras_d2v2.evaluation import encoder_features

from conftest import assert_close


def tiny(**overrides):
    keras.utils.set_random_seed(0)
    return Data2Vec2.text(preset="tiny_test", seed=0, **overrides)


def tokens(n=4, length=16, seed=0):
    """Counting sequences from random starts: each token predicts its neighbours, so there is
    something to learn."""
    start = np.random.default_rng(seed).integers(4, 99, size=(n, 1))
    return (4 + (start + np.arange(length)) % 95).astype("int32")


def test_random_masking_exact_count_independent_clones_uniform_positions():
    masking = RandomMasking(mask_prob=0.48, clone_batch=4, seed=0)
    mask = ops.convert_to_numpy(masking(np.zeros((500, 16, 1))))
    assert mask.shape == (2000, 16)
    np.testing.assert_array_equal(mask.sum(1), 16 - int(16 * 0.52))
    clones = mask.reshape(500, 4, 16)
    assert (clones[:, 0] != clones[:, 1]).any(axis=1).mean() > 0.99
    # Each position is masked with probability 8/16; 2000 rows give a std of about 0.011.
    np.testing.assert_allclose(mask.mean(0), 0.5, atol=0.05)


def test_padding_changes_nothing_for_the_real_tokens():
    model = tiny()
    short = tokens(2, 10)
    padded = np.concatenate([short, np.full((2, 6), model.encoder.pad_id, "int32")], axis=1)
    assert_close(model.encoder(padded)[:, :10], model.encoder(short), rtol=1e-5, name="encoder")
    assert_close(model.teacher_targets(padded)[:, :10], model.teacher_targets(short), rtol=1e-4, name="targets")


def test_encoder_features_pool_only_the_real_tokens():
    # The k-NN / probe features: padding must not shift the mean.
    model = tiny()
    short = tokens(2, 10)
    padded = np.concatenate([short, np.full((2, 6), model.encoder.pad_id, "int32")], axis=1)
    np.testing.assert_allclose(
        encoder_features(model.encoder, padded), encoder_features(model.encoder, short), rtol=1e-4, atol=1e-6
    )


def test_padded_positions_never_count_in_the_loss():
    model = tiny()
    x = tokens(2, 16)
    x[1, 9:] = model.encoder.pad_id
    y_pred = model(x, training=True)
    _, _, weights, *_ = model.loss_terms(model.teacher_targets(x), y_pred, model.encoder.padding_mask(x))
    weights, mask = (ops.convert_to_numpy(ops.stop_gradient(v)) for v in (weights, y_pred["mask"]))
    padded_rows = np.repeat(x == model.encoder.pad_id, 2, axis=0)
    np.testing.assert_array_equal(weights, mask * ~padded_rows)
    assert mask[padded_rows].sum() > 0  # some padding was masked, and it was left out


def test_fit_decreases_loss_and_keras_file_roundtrip(tmp_path):
    model = tiny()
    model.compile(optimizer=keras.optimizers.AdamW(2e-3, weight_decay=0.01))
    loss = model.fit(tokens(16), batch_size=8, epochs=20, verbose=0).history["loss"]
    # The first epochs are noisy while the fast fixture EMA moves the targets; then it learns.
    assert np.mean(loss[-3:]) < 0.85 * np.mean(loss[:3]), loss
    model.save(tmp_path / "text.keras")
    loaded = keras.saving.load_model(tmp_path / "text.keras")
    assert isinstance(loaded.encoder, TextEncoder) and loaded.teacher.blocks_only
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    x = tokens(2)
    assert_close(loaded.teacher_targets(x), model.teacher_targets(x), rtol=1e-6)
    assert_close(loaded.encoder(x), model.encoder(x), rtol=1e-6)


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda: np.ones((2, 4, 1), "int32"), r"`tokens` must have rank 2 \(batch, sequence\), got shape \(2, 4, 1\)"),
        (lambda: np.ones((2, 4), "float32"), "`tokens` must be integer token ids, got dtype float32"),
        (lambda: np.ones((2, 40), "int32"), r"`tokens` has 40 positions but the position table holds 32"),
        (lambda: np.full((2, 4), 100, "int32"), r"`tokens` holds ids in \[100, 100\], outside the vocabulary \[0, 100\)"),
        (lambda: np.full((2, 4), -1, "int32"), r"outside the vocabulary"),
    ],
)
def test_bad_tokens_raise_before_compute(make_input, message):
    with pytest.raises(ValueError, match=message):
        tiny()(make_input())


def test_fit_checks_token_ids_before_training():
    # Inside a compiled JAX step an out-of-range id would be clamped silently.
    model = tiny()
    model.compile(optimizer="adam")
    x = tokens(4)
    x[3, 5] = 250
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 100\)"):
        model.fit(x, batch_size=2, epochs=1, verbose=0)
    assert int(ops.convert_to_numpy(model.num_updates)) == 0


def test_bad_text_configurations():
    with pytest.raises(ValueError, match=r"`pad_id` must be a token id in \[0, 10\), got 10"):
        TextEncoder(vocab_size=10, pad_id=10)
    with pytest.raises(ValueError, match="Unknown text preset 'huge'; available: \\['base', 'large', 'tiny', 'tiny_test'\\]"):
        Data2Vec2.text(preset="huge")
    with pytest.raises(ValueError, match=r"`mask_prob`=0.99 leaves no visible token out of 16"):
        tiny(mask_prob=0.99)(tokens())


@pytest.mark.skipif(
    not (PYTHON_DOCS_DIR / "library").is_dir(),
    reason="Python docs sources not installed (apt-get install python3.11-doc)",
)
def test_fit_on_real_text_decreases_loss():
    pytest.importorskip("tokenizers", reason="the `text` extra is not installed (pip install 'keras-d2v2[text]')")
    from keras_d2v2 import ByteLevelBPETokenizer

    texts = load_python_docs()[0][:40]
    tokenizer = ByteLevelBPETokenizer.train(texts, vocab_size=512, min_frequency=2, max_length=32)
    blocks, _ = tokenizer.encode_chunks(texts, block_length=32)
    model = tiny(vocab_size=tokenizer.vocabulary_size)
    tokenizer.check_model(model)
    model.compile(optimizer=keras.optimizers.AdamW(2e-3, beta_2=0.98, epsilon=1e-6, weight_decay=0.01))
    data = ShuffledBatches(blocks[:64], batch_size=16, seed=0)
    loss = model.fit(data, epochs=10, verbose=0).history["loss"]
    assert np.mean(loss[-2:]) < 0.8 * loss[0], loss
