"""KNNMonitor: the k-NN accuracy of the student encoder, logged during fit() on the right epochs."""

import csv
import math

import keras
import numpy as np
import pytest

from keras_d2v2 import Data2Vec2
from keras_d2v2.callbacks import KNNMonitor

RNG = np.random.default_rng(0)
BANK = (RNG.normal(size=(24, 32, 32, 3)).astype("float32"), RNG.integers(0, 3, size=24))
TEST = (RNG.normal(size=(10, 32, 32, 3)).astype("float32"), RNG.integers(0, 3, size=10))


def brute_force_knn(encoder, bank, test, k, temperature=0.07):
    """Mean-pooled patch tokens, L2-normalized in NumPy; a full sort of the similarities; a weighted vote."""

    def features(x):
        hidden = keras.ops.convert_to_numpy(encoder(x, training=False)).astype("float64")
        pooled = hidden[:, encoder.num_extra_tokens :].mean(axis=1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    sims = features(test[0]) @ features(bank[0]).T
    correct = 0
    for row, label in zip(sims, test[1]):
        nearest = np.argsort(-row)[:k]
        votes = np.zeros(int(bank[1].max()) + 1)
        for i in nearest:
            votes[bank[1][i]] += np.exp(row[i] / temperature)
        correct += int(np.argmax(votes) == label)
    return correct / len(test[1])


class EncoderSnapshots(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_train_begin(self, logs=None):
        self.weights[0] = self.model.encoder.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch + 1] = self.model.encoder.get_weights()


def test_logged_accuracy_is_the_encoders_knn_accuracy_on_the_right_epochs(tmp_path):
    model = Data2Vec2.image("tiny_test", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    images = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype("float32")
    every_epoch = KNNMonitor(bank=BANK, test=TEST, k=5, batch_size=7, evaluate_at_start=True)
    every_other = KNNMonitor(bank=BANK, test=TEST, k=3, every_n_epochs=2, name="val_knn_accuracy")
    filled = KNNMonitor(bank=BANK, test=TEST, k=3, every_n_epochs=2, name="knn_filled", fill_value=float("nan"))
    snapshots = EncoderSnapshots()
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        images,
        batch_size=2,
        epochs=3,
        verbose=0,
        callbacks=[every_epoch, every_other, filled, snapshots, keras.callbacks.CSVLogger(str(csv_path))],
    )
    assert int(keras.ops.convert_to_numpy(model.num_updates)) == 6

    computed = {}

    def expected(epochs_done, k):
        if (epochs_done, k) not in computed:
            model.encoder.set_weights(snapshots.weights[epochs_done])
            computed[epochs_done, k] = brute_force_knn(model.encoder, BANK, TEST, k)
        return computed[epochs_done, k]

    assert sorted(every_epoch.results) == [0, 1, 2, 3]
    assert history.history["knn_accuracy"] == [every_epoch.results[e] for e in (1, 2, 3)]
    for epochs_done, accuracy in every_epoch.results.items():
        assert accuracy == expected(epochs_done, k=5), epochs_done
    # Every other epoch: only after epoch 2, in the logs and in `results`.
    assert every_other.results == {2: expected(2, k=3)}
    assert history.history["val_knn_accuracy"] == [every_other.results[2]]
    filled_log = history.history["knn_filled"]
    assert math.isnan(filled_log[0]) and filled_log[1] == every_other.results[2] and math.isnan(filled_log[2])
    # The weights moved, and the monitor saw each epoch's own weights.
    assert not np.array_equal(snapshots.weights[0][0], snapshots.weights[3][0])
    rows = list(csv.DictReader(open(csv_path)))
    assert [float(r["knn_accuracy"]) for r in rows] == pytest.approx(history.history["knn_accuracy"])
    assert [r["knn_filled"] for r in rows] == ["nan", str(every_other.results[2]), "nan"]


def test_evaluate_at_start_follows_initial_epoch():
    model = Data2Vec2.image("tiny_test", seed=0)
    monitor = KNNMonitor(bank=BANK, test=TEST, k=4, every_n_epochs=5, evaluate_at_start=True)
    monitor.set_model(model)
    monitor.on_train_begin()
    monitor.on_epoch_begin(2)
    monitor.on_epoch_end(2, {})
    monitor.on_epoch_begin(3)
    assert monitor.results == {2: brute_force_knn(model.encoder, BANK, TEST, 4)}
    logs = {}
    monitor.on_epoch_end(4, logs)
    assert logs == {"knn_accuracy": monitor.results[2]} and sorted(monitor.results) == [2, 5]


def test_needs_a_data2vec_model():
    monitor = KNNMonitor(bank=BANK, test=TEST, k=3)
    monitor.set_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    with pytest.raises(TypeError, match="needs a model with an `encoder`"):
        monitor.on_train_begin()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bank": BANK[0]}, r"`bank` must be a pair `\(x, y\)`"),
        ({"test": (TEST[0], TEST[1], None)}, r"`test` must be a pair"),
        ({"bank": (BANK[0], BANK[1][:-1])}, "`bank` has 24 samples but 23 labels"),
        ({"test": (TEST[0][:, :16], TEST[1])}, "must have the same shape"),
        ({"bank": (BANK[0][0, 0, 0], BANK[1][:1])}, "with a batch dimension"),
        ({"bank": (BANK[0], BANK[1].astype("float32"))}, "1-D integer array"),
        ({"bank": (BANK[0], BANK[1][:, None])}, "1-D integer array"),
        ({"test": (TEST[0][:0], TEST[1][:0])}, "`test` has no samples"),
        ({"bank": (BANK[0], BANK[1] - 1)}, "labels must be >= 0"),
        ({"k": 25}, r"at most the bank size \(24 samples\)"),
        ({"k": 0}, "`k` must be an integer >= 1"),
        ({"every_n_epochs": 0}, "`every_n_epochs` must be an integer >= 1"),
        ({"every_n_epochs": 1.5}, "`every_n_epochs` must be an integer >= 1"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1"),
        ({"name": ""}, "`name` must be a non-empty string"),
        ({"temperature": 0.0}, "`temperature` must be > 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    arguments = dict(bank=BANK, test=TEST, k=3)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        KNNMonitor(**arguments)
