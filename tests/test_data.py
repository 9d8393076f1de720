"""ShuffledBatches: an epoch order that depends only on (seed, epoch), wired into fit()."""

import keras
import numpy as np
import pytest

from keras_d2v2 import Data2Vec2
from keras_d2v2.data import ShuffledBatches


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
