"""Fine-tuning: the encoder export, the reference's classification head, layer-wise learning-rate decay."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_d2v2
from keras_d2v2 import AudioClassifier, Data2Vec2, ImageClassifier, TextClassifier
from keras_d2v2.optimizers import LayerDecayAdamW


def pretrained(**overrides):
    keras.utils.set_random_seed(0)
    return Data2Vec2.image(preset="tiny_test", seed=0, **overrides)


def images(n=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 32, 32, 3)).astype("float32")


def chirps(n=2, samples=12000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000.0
    audio = np.sin(2 * np.pi * (rng.uniform(100, 800, (n, 1)) * t + 200 * t**2)) + 0.05 * rng.standard_normal((n, samples))
    return audio.astype("float32")


def token_ids(n=3, length=12, seed=0):
    return np.random.default_rng(seed).integers(4, 100, size=(n, length)).astype("int32")


def numpy_norm_linear(pooled, classifier, eps):
    gamma, beta = (ops.convert_to_numpy(w) for w in classifier.fc_norm.weights)
    normed = (pooled - pooled.mean(-1, keepdims=True)) / np.sqrt(pooled.var(-1, keepdims=True) + eps)
    kernel, bias = (ops.convert_to_numpy(w) for w in classifier.head.weights)
    return (normed * gamma + beta) @ kernel + bias


def numpy_adamw_step(value, grad, lr, wd, beta_1=0.9, beta_2=0.999, eps=1e-7):
    """One AdamW step from zero moments: decoupled decay, then Adam (step 1, bias-corrected)."""
    value = value - value * wd * lr
    m = (1 - beta_1) * grad
    v = (1 - beta_2) * grad**2
    alpha = lr * np.sqrt(1 - beta_2) / (1 - beta_1)
    return value - m * alpha / (np.sqrt(v) + eps)


def test_export_encoder_copies_student_weights_and_applies_overrides():
    model = pretrained()
    encoder = model.export_encoder(drop_path_rate=0.1)
    assert isinstance(encoder, keras_d2v2.ImageEncoder)
    assert encoder.drop_path_rate == 0.1 and model.encoder.drop_path_rate == 0.0
    for ours, theirs in zip(encoder.weights, model.encoder.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(ours), ops.convert_to_numpy(theirs))
    x = images(2)
    np.testing.assert_allclose(
        ops.convert_to_numpy(encoder(x)), ops.convert_to_numpy(model.encoder(x)), rtol=1e-5, atol=1e-5
    )
    # A copy: changing it leaves the pre-trained student alone.
    encoder.cls_token.assign(np.zeros(encoder.cls_token.shape, "float32"))
    assert np.abs(ops.convert_to_numpy(model.encoder.cls_token)).sum() > 0


def test_export_encoder_rejects_unknown_settings():
    with pytest.raises(ValueError, match=r"Unknown argument\(s\) \['drop_rate'\] for ImageEncoder"):
        pretrained().export_encoder(drop_rate=0.1)


def test_classifier_head_is_mean_pool_layernorm_linear():
    classifier = ImageClassifier.from_pretrained(pretrained(), num_classes=5)
    x = images(3)
    hidden = ops.convert_to_numpy(classifier.encoder(x))
    pooled = hidden[:, 1:].mean(axis=1)  # CLS dropped
    expected = numpy_norm_linear(pooled, classifier, 1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(classifier(x)), expected, rtol=1e-4, atol=1e-5)
    assert classifier(x).shape == (3, 5)


def test_classifier_rejects_other_modalities_and_bad_class_counts():
    text = Data2Vec2.text(preset="tiny_test", seed=0)
    with pytest.raises(ValueError, match="`encoder` must be an instance of `ImageEncoder`.*got TextEncoder"):
        ImageClassifier.from_pretrained(text, num_classes=3)
    with pytest.raises(ValueError, match="`num_classes` must be an int >= 2, got 1"):
        ImageClassifier(encoder=pretrained().export_encoder(), num_classes=1)
    with pytest.raises(ValueError, match="`pretrained` must be a `Data2Vec2` model or its path"):
        ImageClassifier.from_pretrained(object(), num_classes=3)


def test_audio_classifier_pools_the_real_frames_only():
    keras.utils.set_random_seed(0)
    classifier = AudioClassifier.from_pretrained(Data2Vec2.audio(preset="tiny_test", seed=0), num_classes=4)
    clips = chirps(2, 8000)
    hidden = ops.convert_to_numpy(classifier.encoder(clips))
    unpadded = ops.convert_to_numpy(classifier(clips))
    np.testing.assert_allclose(unpadded, numpy_norm_linear(hidden.mean(1), classifier, 1e-5), rtol=1e-4, atol=1e-5)
    # Row 1 keeps 6,000 real samples and is padded with junk to 8,000: only its real frames are pooled,
    # so the junk does not matter, and row 0 (no padding) is unchanged.
    padding = np.zeros(clips.shape, bool)
    padding[1, 6000:] = True
    real_frames = classifier.encoder.output_length(6000)
    results = []
    for junk in (7.0, -3.0):
        padded = np.where(padding, junk, clips).astype("float32")
        results.append(ops.convert_to_numpy(classifier({"audio": padded, "padding_mask": padding})))
    hidden = ops.convert_to_numpy(classifier.encoder(padded, padding_mask=padding))
    expected = numpy_norm_linear(hidden[1:, :real_frames].mean(1), classifier, 1e-5)
    np.testing.assert_allclose(results[0][1:], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[0][0], unpadded[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(results[0][1], unpadded[1], atol=1e-3)
    with pytest.raises(ValueError, match="a dict with 'audio' and optionally 'padding_mask', got keys \\['waveform'\\]"):
        classifier({"waveform": clips})


def test_text_classifier_head_is_roberta_first_token_tanh_linear():
    keras.utils.set_random_seed(0)
    classifier = TextClassifier.from_pretrained(Data2Vec2.text(preset="tiny_test", seed=0), num_classes=3)
    x = token_ids()
    first = ops.convert_to_numpy(classifier.encoder(x))[:, 0]
    dense_k, dense_b = (ops.convert_to_numpy(w) for w in classifier.pooler.weights)
    out_k, out_b = (ops.convert_to_numpy(w) for w in classifier.head.weights)
    expected = np.tanh(first @ dense_k + dense_b) @ out_k + out_b
    np.testing.assert_allclose(ops.convert_to_numpy(classifier(x)), expected, rtol=1e-4, atol=1e-5)
    # Padding hides from attention: padded sequences keep their logits.
    padded = np.concatenate([x, np.full((3, 5), classifier.encoder.pad_id, "int32")], axis=1)
    np.testing.assert_allclose(ops.convert_to_numpy(classifier(padded)), expected, rtol=1e-4, atol=1e-5)
    # The reference's init: both dense layers normal(0, 0.02), zero biases.
    assert abs(float(np.std(dense_k)) - 0.02) < 0.004 and not dense_b.any() and not out_b.any()


def test_classifiers_reject_other_modalities_and_teachers():
    image_encoder = pretrained().export_encoder()
    with pytest.raises(ValueError, match="`encoder` must be an instance of `AudioEncoder`.*got ImageEncoder"):
        AudioClassifier(encoder=image_encoder, num_classes=3)
    with pytest.raises(ValueError, match="`encoder` must be an instance of `TextEncoder`.*got ImageEncoder"):
        TextClassifier(encoder=image_encoder, num_classes=3)
    text = Data2Vec2.text(preset="tiny_test", seed=0)
    with pytest.raises(ValueError, match="`blocks_only=True` \\(an EMA teacher\\)"):
        TextClassifier(encoder=text.teacher, num_classes=3)
    with pytest.raises(ValueError, match=r"`dropout` must be in \[0, 1\), got 1.0"):
        TextClassifier(encoder=text.export_encoder(), num_classes=3, dropout=1.0)


def test_layer_decay_multipliers_follow_the_reference():
    classifier = ImageClassifier.from_pretrained(pretrained(), num_classes=3)
    multipliers = classifier.layer_decay_multipliers(0.5)
    blocks = classifier.encoder.prenet_blocks + classifier.encoder.blocks  # 1 prenet + 2 main
    assert len(blocks) == 3
    for i, block in enumerate(blocks):
        for variable in block.trainable_variables:
            assert multipliers[variable.path] == 0.5 ** (3 - i)
    # Only the blocks are scaled: embedding, CLS, context norm and head keep the full rate.
    scaled = {v.path for b in blocks for v in b.trainable_variables}
    assert set(multipliers) == scaled
    for variable in classifier.head.weights + classifier.fc_norm.weights + [classifier.encoder.cls_token]:
        assert variable.path not in multipliers
    with pytest.raises(ValueError, match=r"`layer_decay` must be in \(0, 1\], got 1.5"):
        classifier.layer_decay_multipliers(1.5)


def test_layer_decay_adamw_scales_update_and_decay_per_weight():
    start = {"a": np.array([[1.0, -2.0], [0.5, 3.0]], "float32"), "b": np.array([0.3, -0.7], "float32"),
             "c": np.array([[2.0, 1.0]], "float32")}
    grads = {"a": np.array([[0.1, -0.2], [0.3, 0.0]], "float32"), "b": np.array([1.0, -1.0], "float32"),
             "c": np.array([[-0.5, 0.25]], "float32")}
    variables = {k: keras.Variable(v, name=k) for k, v in start.items()}
    optimizer = LayerDecayAdamW(0.1, weight_decay=0.5, lr_multipliers={"a": 0.25, "b": 0.5})
    optimizer.exclude_from_weight_decay(var_list=[variables["b"]])
    optimizer.apply_gradients([(ops.convert_to_tensor(grads[k]), variables[k]) for k in start])
    expected = {
        "a": numpy_adamw_step(start["a"], grads["a"], lr=0.1 * 0.25, wd=0.5),
        "b": numpy_adamw_step(start["b"], grads["b"], lr=0.1 * 0.5, wd=0.0),  # excluded from decay
        "c": numpy_adamw_step(start["c"], grads["c"], lr=0.1, wd=0.5),  # no multiplier: full rate
    }
    for k in start:
        np.testing.assert_allclose(ops.convert_to_numpy(variables[k]), expected[k], rtol=1e-5, atol=1e-6)


def test_layer_decay_adamw_without_multipliers_is_adamw():
    start = np.array([[1.0, -2.0, 0.5]], "float32")
    grad = ops.convert_to_tensor(np.array([[0.3, -0.1, 0.2]], "float32"))
    results = []
    for optimizer in (LayerDecayAdamW(0.01, weight_decay=0.1), keras.optimizers.AdamW(0.01, weight_decay=0.1)):
        variable = keras.Variable(start, name="w")
        for _ in range(3):
            optimizer.apply_gradients([(grad, variable)])
        results.append(ops.convert_to_numpy(variable))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)


def test_layer_decay_adamw_rejects_unknown_paths_and_bad_multipliers():
    with pytest.raises(ValueError, match=r"`lr_multipliers\['x'\]` must be > 0, got 0"):
        LayerDecayAdamW(0.1, lr_multipliers={"x": 0})
    optimizer = LayerDecayAdamW(0.1, lr_multipliers={"encoder/blocks_9/kernel": 0.5})
    with pytest.raises(ValueError, match="names weights that are not being optimized.*blocks_9"):
        optimizer.build([keras.Variable(np.zeros(2, "float32"), name="w")])


FINE_TUNING_CASES = {
    "image": (ImageClassifier, lambda: pretrained(), lambda: images(8)),
    "audio": (AudioClassifier, lambda: Data2Vec2.audio(preset="tiny_test", seed=0), lambda: chirps(8, 6400)),
    "text": (TextClassifier, lambda: Data2Vec2.text(preset="tiny_test", seed=0), lambda: token_ids(8)),
}


@pytest.mark.parametrize("modality", sorted(FINE_TUNING_CASES))
def test_fine_tuning_fits_under_jit_and_round_trips(modality, tmp_path):
    classifier_class, make_pretrained, make_inputs = FINE_TUNING_CASES[modality]
    keras.utils.set_random_seed(0)
    classifier = classifier_class.from_pretrained(make_pretrained(), num_classes=3, drop_path_rate=0.1)
    frozen_before = {v.path: ops.convert_to_numpy(v).copy() for v in classifier.trainable_variables}
    classifier.compile(
        optimizer=LayerDecayAdamW(1e-3, weight_decay=0.05, lr_multipliers=classifier.layer_decay_multipliers(0.65)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = make_inputs(), np.arange(8) % 3
    history = classifier.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = {v.path: ops.convert_to_numpy(v) for v in classifier.trainable_variables}
    unchanged = [p for p, v in frozen_before.items() if np.array_equal(v, after[p])]
    assert unchanged == []  # every weight is fine-tuned, none frozen

    path = tmp_path / "classifier.keras"
    classifier.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, classifier_class) and restored.encoder.drop_path_rate == 0.1
    np.testing.assert_allclose(ops.convert_to_numpy(restored(x)), ops.convert_to_numpy(classifier(x)), rtol=1e-5, atol=1e-5)
    assert restored.optimizer.lr_multipliers == classifier.optimizer.lr_multipliers
    assert int(ops.convert_to_numpy(restored.optimizer.iterations)) == 4
