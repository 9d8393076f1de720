"""Audio data2vec 2.0 on the active backend: conv features, 1-D block masking, ALiBi, padding,
layerdrop, training, saving, bad input."""

import wave

import keras
import numpy as np
import pytest
from keras import ops

from keras_d2v2 import ALiBiBias, AudioEncoder, BlockMasking1D, Data2Vec2, ShuffledBatches
from keras_d2v2.data.audio import (
    ASTERISK_SOUNDS_DIR,
    ASTERISK_VOICES,
    load_asterisk_prompts,
    read_wav,
    segment_clips,
)
from keras_d2v2.layers import ConvFeatureExtractor, alibi_slopes

from conftest import assert_close

TINY_LAYERS = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2


def tiny(**overrides):
    keras.utils.set_random_seed(0)
    return Data2Vec2.audio(preset="tiny_test", seed=0, **overrides)


def chirps(n=4, samples=16000, seed=0):
    """Tones gliding from a random pitch, with a little noise: structure for the model to learn."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000.0
    start = rng.uniform(100, 800, size=(n, 1))
    audio = np.sin(2 * np.pi * (start * t + 200 * t**2)) + 0.05 * rng.standard_normal((n, samples))
    return audio.astype("float32")


def runs(row):
    """Lengths of the runs of 1s in a 0/1 row."""
    edges = np.diff(np.concatenate([[0], row, [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def test_block_masking_1d_exact_count_spans_and_independent_clones():
    masking = BlockMasking1D(mask_prob=0.5, block_length=5, mask_prob_adjust=0.05, clone_batch=4, seed=1)
    mask = ops.convert_to_numpy(masking(np.zeros((8, 200, 1))))
    assert mask.shape == (32, 200)
    # Exactly int(T * mask_prob) masked frames in every row, as the reference forces.
    np.testing.assert_array_equal(mask.sum(1), np.full(32, 100))
    assert masking.num_visible(200) == 100 and masking.num_visible(49) == 25
    # The masked frames come in spans: far longer runs than a uniform draw of the same count
    # (whose mean run is ~2 frames at 50%).
    assert np.mean(np.concatenate([runs(r) for r in mask])) > 4.0
    assert len({r.tobytes() for r in mask}) == 32
    inverse = BlockMasking1D(mask_prob=0.7, block_length=5, mask_prob_adjust=0.0, inverse=True, clone_batch=2, seed=1)
    inverted = ops.convert_to_numpy(inverse(np.zeros((4, 100, 1))))
    # Inverse: the spans are the visible frames, int(T * (1 - mask_prob)) of them.
    np.testing.assert_array_equal((1 - inverted).sum(1), np.full(8, 30))
    assert np.mean(np.concatenate([runs(1 - r) for r in inverted])) > 3.0


def test_alibi_slopes_and_clamped_learned_scale():
    np.testing.assert_allclose(alibi_slopes(8), 2.0 ** -np.arange(1, 9))
    # Not a power of two: the 8 slopes, then every other slope of the 16-head set.
    np.testing.assert_allclose(alibi_slopes(12), np.concatenate([2.0 ** -np.arange(1, 9), 2.0 ** -np.arange(0.5, 4, 1)]))
    np.testing.assert_allclose(alibi_slopes(6), [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    alibi = ALiBiBias(num_heads=8)
    alibi.build()
    alibi.scale.assign(np.array([-1.0, 2.0, 1, 1, 1, 1, 1, 1], "float32"))
    positions = np.array([[0, 3, 7]])
    bias = ops.convert_to_numpy(alibi(positions))
    distance = np.abs(positions[0][:, None] - positions[0][None, :])
    np.testing.assert_allclose(bias[0, 0], np.zeros((3, 3)))  # negative scale clamped to 0
    np.testing.assert_allclose(bias[0, 1], -2 * 0.25 * distance)
    np.testing.assert_allclose(bias[0, 7], -(2.0**-8) * distance)


def test_conv_feature_extractor_lengths_and_receptive_field():
    extractor = ConvFeatureExtractor(feature_layers=TINY_LAYERS)
    assert extractor.receptive_field == 400  # 25 ms at 16 kHz, as wav2vec 2.0
    for samples in (400, 401, 719, 720, 16000, 16123):
        frames = extractor(np.zeros((1, samples), "float32")).shape[1]
        assert frames == extractor.output_length(samples) == (samples - 400) // 320 + 1
    audio = np.random.default_rng(0).standard_normal((1, 1200)).astype("float32")
    base = ops.convert_to_numpy(extractor(audio))
    # Frame f sees samples 320 f ... 320 f + 399.
    for sample, changed_frames in ((300, {0}), (399, {0, 1}), (720, {2})):
        bumped = audio.copy()
        bumped[0, sample] += 1.0
        diff = np.abs(ops.convert_to_numpy(extractor(bumped)) - base).max(-1)[0]
        assert set(np.flatnonzero(diff > 1e-6)) == changed_frames, (sample, diff)


def test_padded_clip_gives_the_unpadded_result():
    model = tiny()
    clip = chirps(1, 12000)  # 37 frames
    padded = np.concatenate([clip, np.full((1, 4000), 7.0, "float32")], axis=1)  # 49 frames
    padding = np.arange(16000)[None, :] >= 12000
    assert model.encoder.output_length(12000) == 37
    assert_close(model.encoder.embed(padded, padding_mask=padding)[:, :37], model.encoder.embed(clip), rtol=1e-5)
    assert_close(model.teacher_targets(padded, padding_mask=padding)[:, :37], model.teacher_targets(clip), rtol=1e-4)
    # One mask per clone on the real frames (19 visible, 18 masked); the padded row keeps 6 of its
    # 12 padded frames visible to reach 25 visible, and the noise of the real masked frames is shared.
    rng = np.random.default_rng(0)
    short_mask = np.stack([rng.permutation(np.repeat([0.0, 1.0], [19, 18])) for _ in range(4)])
    long_mask = np.concatenate([short_mask, np.tile(np.repeat([0.0, 1.0], 6), (4, 1))], axis=1)
    noise = rng.normal(0, 0.01, (4, 18, 48)).astype("float32")
    long_noise = np.concatenate([noise, rng.normal(0, 5.0, (4, 6, 48)).astype("float32")], axis=1)
    short = {"audio": clip, "mask": short_mask[None], "mask_noise": noise[None]}
    long = {"audio": padded, "padding_mask": padding, "mask": long_mask[None], "mask_noise": long_noise[None]}
    y_short, y_long = model(short, training=True), model(long, training=True)
    assert_close(y_long["prediction"][:, :37], y_short["prediction"], rtol=1e-4)
    loss_short = model.compute_loss(short, None, y_short, training=False)
    loss_long = model.compute_loss(long, None, y_long, training=False)
    assert_close(loss_long, loss_short, rtol=1e-5)


def test_layerdrop_skips_student_blocks_only_in_training():
    model = tiny(layerdrop=0.999)
    x = model.encoder.embed(chirps(2))
    normed = model.encoder.context_norm(x)
    assert_close(model.encoder.encode(x, training=True)[0], normed, rtol=1e-6)
    assert np.abs(ops.convert_to_numpy(model.encoder.encode(x, training=False)[0] - normed)).max() > 0.1
    # The teacher never drops a block: its targets do not depend on the student's layerdrop.
    reference = tiny()
    assert_close(model.teacher_targets(chirps(2)), reference.teacher_targets(chirps(2)), rtol=1e-5)


def test_fit_decreases_loss_and_keras_file_roundtrip(tmp_path):
    model = tiny()
    model.compile(optimizer=keras.optimizers.AdamW(2e-3, weight_decay=0.01))
    loss = model.fit(chirps(16), batch_size=8, epochs=12, verbose=0).history["loss"]
    assert np.mean(loss[-3:]) < 0.85 * np.mean(loss[:3]), loss
    model.save(tmp_path / "audio.keras")
    loaded = keras.saving.load_model(tmp_path / "audio.keras")
    assert isinstance(loaded.encoder, AudioEncoder) and loaded.teacher.contextualize_only
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    x = chirps(2)
    assert_close(loaded.teacher_targets(x), model.teacher_targets(x), rtol=1e-6)
    assert_close(loaded.encoder(x), model.encoder(x), rtol=1e-6)


def test_plain_adam_weight_decay_covers_1d_weights():
    """With zero gradients AdamW only decays: the audio model's LayerNorm scales shrink by
    lr * wd, as under the reference's plain Adam; the image model's stay (composite optimizer)."""
    for model, decayed in ((tiny(), True), (Data2Vec2.image(preset="tiny_test", seed=0), False)):
        model.compile(optimizer=keras.optimizers.AdamW(0.1, weight_decay=0.5))
        variables = model.trainable_variables
        model.optimizer.apply_gradients([(ops.zeros(v.shape), v) for v in variables])
        gamma = next(v for v in variables if v.path.endswith("norm1/gamma"))
        expected = 1.0 - 0.1 * 0.5 if decayed else 1.0
        np.testing.assert_allclose(ops.convert_to_numpy(gamma), expected, rtol=1e-6, err_msg=model.encoder.name)


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda: np.zeros((2, 16000, 1), "float32"), "rank 2 .*drop the channel axis"),
        (lambda: np.zeros((2, 16000), "int16"), "floating-point waveform"),
        (lambda: np.zeros((2, 399), "float32"), "399 samples, fewer than .* receptive field of 400"),
    ],
)
def test_bad_audio_raises_before_compute(make_input, message):
    with pytest.raises(ValueError, match=message):
        tiny().encoder.embed(make_input())


def test_bad_padding_and_sample_rate():
    model = tiny()
    audio = chirps(2)
    with pytest.raises(ValueError, match="`padding_mask` must have the shape"):
        model.encoder.embed(audio, padding_mask=np.zeros((2, 100), bool))
    all_padding = np.zeros((2, 16000), bool)
    all_padding[1] = True
    with pytest.raises(ValueError, match="Row 1 of `audio` has 0 real samples"):
        model.fit({"audio": audio, "padding_mask": all_padding}, batch_size=2, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="sampled at 8000 Hz but the encoder expects 16000 Hz"):
        model.encoder.check_sample_rate(8000)
    image = Data2Vec2.image(preset="tiny_test")
    with pytest.raises(ValueError, match="'mask', 'mask_noise'; got"):
        image({"images": np.zeros((1, 32, 32, 3), "float32"), "padding_mask": np.zeros((1, 4))})


def test_segment_clips_pads_the_remainder_and_drops_short_ones():
    clips = [np.arange(1, 2501, dtype="float32"), np.ones(900, "float32"), np.ones(300, "float32")]
    audio, padding, index = segment_clips(clips, num_samples=1000)
    # 2500 -> 1000 + 1000 + 500 padded; 900 -> one padded segment; 300 < 500 is dropped.
    np.testing.assert_array_equal(index, [0, 0, 0, 1])
    np.testing.assert_array_equal((~padding).sum(1), [1000, 1000, 500, 900])
    np.testing.assert_array_equal(audio[2, :500], np.arange(2001, 2501))
    assert not audio[padding].any()
    with pytest.raises(ValueError, match="No clip has 500 samples"):
        segment_clips([np.ones(10)], num_samples=1000)
    with pytest.raises(ValueError, match="1-D mono waveform"):
        segment_clips([np.ones((10, 2))], num_samples=4)


def test_read_wav_scales_16_bit_pcm(tmp_path):
    pcm = np.array([0, 16384, -32768, 32767], "<i2")
    with wave.open(str(tmp_path / "a.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(8000)
        f.writeframes(pcm.tobytes())
    waveform, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000
    np.testing.assert_allclose(waveform, pcm / 32768.0)


def test_mixed_precision_with_padding_trains_with_float32_targets():
    model = tiny(dtype="mixed_bfloat16")
    padding = np.arange(16000)[None, :] >= np.array([[16000], [9000]])
    x = {"audio": chirps(2), "padding_mask": padding}
    assert keras.backend.standardize_dtype(model(x)["prediction"].dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(model.teacher_targets(x["audio"], padding_mask=padding).dtype) == "float32"
    model.compile(optimizer="adam")
    assert np.isfinite(model.fit(x, batch_size=2, epochs=1, verbose=0).history["loss"][0])


@pytest.mark.skipif(
    not all((ASTERISK_SOUNDS_DIR / voice).is_dir() for voice in ASTERISK_VOICES),
    reason="Asterisk prompts not installed (apt-get install asterisk-core-sounds-{en,es,fr,it,ru}-wav "
    "asterisk-prompt-it-menardi-wav)",
)
def test_fit_on_real_speech_decreases_loss():
    pytest.importorskip("scipy", reason="the `audio` extra is not installed (pip install 'keras-d2v2[audio]')")
    data = load_asterisk_prompts(voices=["en_US_f_Allison"])
    clips = [data["audio"][i] for i in np.random.default_rng(0).permutation(len(data["audio"]))[:40]]
    audio, padding, _ = segment_clips(clips, num_samples=16000)
    model = tiny()
    model.compile(optimizer=keras.optimizers.AdamW(2e-3, beta_2=0.98, epsilon=1e-6, weight_decay=0.01))
    data = ShuffledBatches({"audio": audio[:64], "padding_mask": padding[:64]}, batch_size=16, seed=0)
    loss = model.fit(data, epochs=6, verbose=0).history["loss"]
    assert np.mean(loss[-2:]) < 0.8 * loss[0], loss
