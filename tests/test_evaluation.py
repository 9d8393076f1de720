"""Evaluation: k-NN against a brute-force reference, the linear probe on data whose answer is known, and the
fine-tuning recipes' choice of learning rate."""

import numpy as np
import pytest

from keras_d2v2.evaluation import knn_accuracy, linear_probe_accuracy, pick_learning_rates


def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def knn_reference(train_features, train_labels, test_features, test_labels, k, temperature):
    """One test sample at a time: full sort of the cosine similarities, exp(s / T)-weighted vote of the k nearest."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    correct = 0
    for feature, label in zip(test_features, test_labels):
        sims = train_features @ feature
        nearest = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for i in nearest:
            votes[train_labels[i]] += np.exp(sims[i] / temperature)
        correct += int(np.argmax(votes) == label)
    return correct / len(test_features)


@pytest.mark.parametrize("k, temperature, chunk", [(1, 0.07, 1024), (20, 0.07, 7), (5, 1.0, 64), (300, 0.5, 33)])
def test_knn_accuracy_matches_brute_force(k, temperature, chunk):
    rng = np.random.default_rng(k)
    # Noisy class centres, so neighbours vote across classes and the accuracy is neither 0 nor 1.
    centres = rng.normal(size=(5, 16))
    train_labels, test_labels = rng.integers(0, 5, 300), rng.integers(0, 5, 101)
    train = unit_rows(centres[train_labels] + 1.5 * rng.normal(size=(300, 16))).astype("float32")
    test = unit_rows(centres[test_labels] + 1.5 * rng.normal(size=(101, 16))).astype("float32")
    expected = knn_reference(train, train_labels, test, test_labels, k, temperature)
    assert 0.2 < expected < 1.0
    actual = knn_accuracy(train, train_labels, test, test_labels, k=k, temperature=temperature, chunk=chunk)
    assert actual == expected


def test_knn_accuracy_weights_votes_by_similarity():
    # Of the 3 nearest, two of class 1 are farther than the one of class 0: a plain majority says 1,
    # the exp(s / T) weighting at T = 0.07 says 0.
    train = unit_rows(np.array([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [-1.0, 0.0]]))
    train_labels = np.array([0, 1, 1, 2])
    test = np.array([[1.0, 0.0]])
    assert knn_accuracy(train, train_labels, test, np.array([0]), k=3) == 1.0
    assert knn_accuracy(train, train_labels, test, np.array([1]), k=3, temperature=100.0) == 1.0


def gaussian_blobs(rng, n, num_classes=4, dim=8, spread=0.1, offset=0.0, scale=1.0):
    centres = np.eye(num_classes, dim) * 3.0
    labels = rng.integers(0, num_classes, n)
    features = offset + scale * (centres[labels] + spread * rng.normal(size=(n, dim)))
    return features.astype("float32"), labels


def test_linear_probe_separable_data_is_solved():
    rng = np.random.default_rng(0)
    train, test = gaussian_blobs(rng, 512), gaussian_blobs(rng, 256)
    assert linear_probe_accuracy(*train, *test) == 1.0


def test_linear_probe_standardizes_features():
    # A large common offset and a tiny spread: without standardization the probe stays near chance
    # here (27% of 4 classes); with it the problem is the separable one above.
    rng = np.random.default_rng(1)
    train = gaussian_blobs(rng, 512, offset=1000.0, scale=1e-3)
    test = gaussian_blobs(rng, 256, offset=1000.0, scale=1e-3)
    assert linear_probe_accuracy(*train, *test) == 1.0


def test_linear_probe_solves_separable_data_in_many_dimensions():
    # 10 classes in 784 dimensions, 774 of them noise, rows of unit norm as `encoder_features` gives them. AdamW
    # (the probe's optimizer until 2026-12-06, on the same standardized features) fit the noise: 15.2% here.
    rng = np.random.default_rng(6)
    train_x, train_y = gaussian_blobs(rng, 1024, num_classes=10, dim=784, spread=0.2)
    test_x, test_y = gaussian_blobs(rng, 512, num_classes=10, dim=784, spread=0.2)
    assert linear_probe_accuracy(unit_rows(train_x), train_y, unit_rows(test_x), test_y) > 0.95


def test_linear_probe_zeroes_features_constant_over_the_training_set():
    # Like raw image pixels: 10 classes in 400 dimensions, the last 100 are 0 in every training sample
    # (background) but not in the test samples. Divided by std + 1e-6 (until 2026-12-06), they were multiplied by
    # 1e6 into weights the probe never trained and decided the test predictions (10.9% here, chance); as 0 they
    # leave a separable problem.
    rng = np.random.default_rng(4)
    train_x, train_y = gaussian_blobs(rng, 1024, num_classes=10, dim=400)
    test = gaussian_blobs(rng, 512, num_classes=10, dim=400)
    train_x[:, 300:] = 0.0
    assert linear_probe_accuracy(train_x, train_y, *test) == 1.0


def test_linear_probe_standardizes_with_the_training_statistics_only():
    # The test set holds class 1 only. Standardized with the training set's mean and std it sits where class 1
    # did in training; standardized with its own (computed here, then normalize=False) it is noise around 0 on
    # every dimension and the probe is right about half the time.
    rng = np.random.default_rng(5)
    train_x, train_y = gaussian_blobs(rng, 512, num_classes=2, offset=10.0)
    test_x, test_y = gaussian_blobs(rng, 512, num_classes=2, offset=10.0)
    test_x, test_y = test_x[test_y == 1], test_y[test_y == 1]
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y) == 1.0

    def standardized(x):
        return (x - x.mean(0)) / x.std(0)

    own = linear_probe_accuracy(standardized(train_x), train_y, standardized(test_x), test_y, normalize=False)
    assert own < 0.75


def test_linear_probe_on_shuffled_labels_is_near_chance():
    rng = np.random.default_rng(2)
    (train_x, train_y), (test_x, test_y) = gaussian_blobs(rng, 1024, num_classes=8), gaussian_blobs(rng, 1024, num_classes=8)
    train_y, test_y = rng.permutation(train_y), rng.permutation(test_y)
    accuracy = linear_probe_accuracy(train_x, train_y, test_x, test_y, epochs=30)
    assert abs(accuracy - 1 / 8) < 0.05  # 1,024 test samples: the std of chance accuracy is ~0.01


def test_linear_probe_is_deterministic_given_the_seed():
    rng = np.random.default_rng(3)
    train, test = gaussian_blobs(rng, 256, spread=2.0), gaussian_blobs(rng, 256, spread=2.0)
    first = linear_probe_accuracy(*train, *test, seed=5, epochs=3)
    assert linear_probe_accuracy(*train, *test, seed=5, epochs=3) == first


def test_pick_learning_rates_chooses_on_the_mean_validation_accuracy_over_seeds():
    # (encoder, rate, [validation, test]) per seed. For "a", the best single validation run is at
    # 1e-3 (0.95) but the best mean is at 3e-3 (0.85 against 0.80), and the best test is at 1e-2:
    # picking on one run, or on test, gives another answer.
    runs = [
        ("a", 1e-3, [0.95, 0.70]), ("a", 1e-3, [0.65, 0.72]),
        ("b", 1e-3, [0.60, 0.50]), ("b", 1e-3, [0.62, 0.52]),
        ("a", 3e-3, [0.84, 0.74]), ("a", 3e-3, [0.86, 0.76]),
        ("b", 3e-3, [0.50, 0.90]), ("b", 3e-3, [0.52, 0.92]),
        ("a", 1e-2, [0.70, 0.99]), ("a", 1e-2, [0.72, 0.97]),
    ]
    picked = pick_learning_rates(runs)
    assert list(picked) == ["a", "b"]
    assert picked["a"][0] == 3e-3 and picked["b"][0] == 1e-3
    np.testing.assert_allclose(picked["a"][1], [0.85, 0.75])
    np.testing.assert_allclose(picked["b"][1], [0.61, 0.51])


def test_pick_learning_rates_keeps_the_first_rate_on_a_tie_and_any_number_of_test_sets():
    runs = [("a", 3e-3, [0.8, 0.1, 0.2]), ("a", 1e-3, [0.8, 0.3, 0.4]), ("a", 1e-2, [0.7, 0.9, 0.9])]
    rate, accuracies = pick_learning_rates(runs)["a"]
    assert rate == 3e-3
    np.testing.assert_allclose(accuracies, [0.8, 0.1, 0.2])
