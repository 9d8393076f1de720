"""ShuffledBatches: an epoch order that depends only on (seed, epoch), wired into fit()."""

import zlib

import keras
import numpy as np
import pytest

from keras_d2v2 import Data2Vec2
from keras_d2v2.data import DOC_SECTIONS, ShuffledBatches, held_out_documents, section_classification
from keras_d2v2.data.audio import asterisk_segments


def rows_of(data):
    return np.concatenate([data[i][0][:, 0] for i in range(len(data))])


def test_each_epoch_is_a_permutation_set_by_seed_and_epoch():
    x = np.arange(10, dtype="float32")[:, None]
    data = ShuffledBatches(x, batch_size=4, seed=3)
    assert len(data) == 3 and [len(data[i][0]) for i in range(3)] == [4, 4, 2]
    first = rows_of(data)
    np.testing.assert_array_equal(np.sort(first), x[:, 0])
    data.set_epoch(1)
    second = rows_of(data)
    np.testing.assert_array_equal(np.sort(second), x[:, 0])
    assert not np.array_equal(first, second)
    again = ShuffledBatches(x, batch_size=4, seed=3)
    again.set_epoch(1)
    np.testing.assert_array_equal(rows_of(again), second)
    other_seed = ShuffledBatches(x, batch_size=4, seed=4)
    other_seed.set_epoch(1)
    assert not np.array_equal(rows_of(other_seed), second)


def test_dict_inputs_keep_rows_together():
    images = np.arange(6, dtype="float32")[:, None, None, None] * np.ones((6, 2, 2, 1), "float32")
    mask = np.arange(6)[:, None, None] * np.ones((6, 2, 4), "int32")
    (batch,) = ShuffledBatches({"images": images, "mask": mask}, batch_size=3, seed=0)[1]
    np.testing.assert_array_equal(batch["images"][:, 0, 0, 0], batch["mask"][:, 0, 0])


@pytest.mark.parametrize(
    "x, kwargs, message",
    [
        ({"images": np.zeros((4, 1)), "mask": np.zeros((3, 1))}, {}, "same first dimension"),
        (np.zeros((0, 1)), {}, "no samples"),
        (np.zeros((4, 1)), {"batch_size": 0}, "`batch_size` must be a positive integer"),
    ],
)
def test_bad_arguments(x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShuffledBatches(x, **kwargs)


class RecordingBatches(ShuffledBatches):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def __getitem__(self, index):
        self.calls.append((self.epoch, index))
        return super().__getitem__(index)


def model_and_data():
    model = Data2Vec2.image(preset="tiny_test", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    return model, RecordingBatches(images, batch_size=2, seed=0)


def test_fit_draws_every_epoch_in_its_own_order():
    model, data = model_and_data()
    model.fit(data, epochs=3, initial_epoch=1, verbose=0)
    # TensorFlow reads a few batches up front to infer the signature; training reads the rest.
    assert data.calls[-4:] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert int(keras.ops.convert_to_numpy(model.num_updates)) == 4


def test_steps_per_epoch_is_refused():
    model, data = model_and_data()
    with pytest.raises(ValueError, match="`steps_per_epoch` cannot be used with a `ShuffledBatches`"):
        model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)


def test_held_out_documents_takes_every_fifth_of_each_section():
    sections = ["a"] * 7 + ["b"] * 5 + ["a"] * 3
    held = held_out_documents(sections)
    assert list(np.flatnonzero(held)) == [4, 11, 14]  # a's 5th and 10th, b's 5th


def test_section_classification_splits_by_document_and_balances_the_test_set():
    rng = np.random.default_rng(0)
    sections = [DOC_SECTIONS[i % 6] for i in range(60)] + ["faq"] * 5  # "faq" is not a class
    held_out = held_out_documents(sections)
    block_document = rng.integers(0, len(sections), 3000)
    blocks = np.stack([block_document, np.arange(3000)], axis=1)  # each block remembers its document
    (x_train, y_train), (x_test, y_test) = section_classification(
        blocks, block_document, sections, held_out, max_train_per_class=100, seed=0
    )
    for x, y, from_held_out in ((x_train, y_train, False), (x_test, y_test, True)):
        documents = x[:, 0]
        assert (held_out[documents] == from_held_out).all()
        np.testing.assert_array_equal(y, [DOC_SECTIONS.index(sections[d]) for d in documents])
        assert len(np.unique(x[:, 1])) == len(x)  # no block twice
    assert (np.bincount(y_train, minlength=6) == 100).all()
    test_counts = np.bincount(y_test, minlength=6)
    assert (test_counts == test_counts[0]).all() and test_counts[0] > 0
    # The smallest held-out section sets the per-class count: every one of its blocks is used.
    smallest = min(
        ((held_out[block_document]) & (np.array([s == DOC_SECTIONS[c] for s in sections])[block_document])).sum()
        for c in range(6)
    )
    assert test_counts[0] == smallest


def test_asterisk_segments_hold_out_a_prompt_in_every_voice():
    clips = [np.ones(n, "float32") for n in (16000, 24000, 8000, 16000)]
    data = {"audio": clips, "voice": [0, 1, 4, 4], "language": ["en", "es", "it", "it"],
            "prompt": ["digits/1", "digits/1", "digits/2", "vm-goodbye"]}
    segments = asterisk_segments(data, num_samples=16000, held_out_percent=50)
    # 16000 -> 1 segment, 24000 -> 2 (the second padded), 8000 -> 1 padded, 16000 -> 1.
    assert segments["audio"].shape == (5, 16000)
    np.testing.assert_array_equal(segments["voice"], [0, 1, 1, 4, 4])
    np.testing.assert_array_equal(segments["language"], [0, 1, 1, 2, 2])  # index into ["en", "es", "it"]
    np.testing.assert_array_equal(segments["padding_mask"].any(1), [False, False, True, True, False])
    held = segments["held_out"]
    assert held[0] == held[1] == held[2]  # digits/1 in both voices: one decision
    expected = [zlib.crc32(p.encode()) % 100 < 50 for p in ("digits/1", "digits/1", "digits/1", "digits/2", "vm-goodbye")]
    np.testing.assert_array_equal(held, expected)
