"""Linear-probe evaluation of frozen encoder features."""

import keras
import numpy as np

# A feature whose std over the training set is at most this is constant there (see `_standardize`).
_CONSTANT_STD = 1e-6


def _standardize(train_features, test_features):
    """Both sets as `(x - mean) / std`, with the per-feature mean and std of the training set alone.

    A feature constant over the training set (std <= `_CONSTANT_STD`) becomes 0 in both sets. It tells
    the training samples nothing apart, so the probe learns no weight for it (its input is 0 throughout
    training: its gradient is zero and its weight stays at its random initialization). Dividing it by
    `std + epsilon` instead would multiply a test sample's departure from the training value by up to
    `1 / epsilon` and let that untrained weight decide the prediction: raw image pixels that are
    background in every training image but ink in some test images.
    """
    train_features = np.asarray(train_features, dtype="float64")
    mean, std = train_features.mean(0), train_features.std(0)
    varies = std > _CONSTANT_STD
    scale = np.where(varies, 1.0 / np.where(varies, std, 1.0), 0.0)
    test_features = np.asarray(test_features, dtype="float64")
    return ((train_features - mean) * scale).astype("float32"), ((test_features - mean) * scale).astype("float32")


def linear_probe_accuracy(
    train_features, train_labels, test_features, test_labels, *, seed=0, epochs=100, normalize=True
):
    """Top-1 test accuracy of a softmax regression trained on frozen features.

    With `normalize=True` (the default) the features are first standardized per dimension with the mean
    and std of the *training* features only, and the test features get the same transform. This is
    MAE's linear-probe protocol (a BatchNorm without affine parameters before the linear head): it lets
    the fixed optimizer settings below fit features of any scale or offset, unit-norm rows of many
    dimensions (every coordinate tiny) included. A feature constant over the training set (std at most
    1e-6) carries nothing the probe can learn and is set to 0 in both sets, rather than divided by a
    near-zero std. With `normalize=False` the features go to the head as they are.

    The head, one Dense layer (no hidden layer) initialized from a normal of std 0.01, is trained as
    in MAE's protocol with SGD and momentum, not Adam (learning rate 0.1, momentum 0.9, no weight decay),
    batch 1024, `epochs` epochs, on the sparse categorical cross-entropy. Adam moves every weight by
    about the same step whatever its gradient, so with many dimensions that carry no class information
    the head fits noise in all of them and generalizes poorly (15% instead of 99% on separable
    784-dimensional data in tests/test_evaluation.py). Classes are `0 ... max(label)`. Calls
    `keras.utils.set_random_seed(seed)` first (so it also resets Python's, NumPy's and the backend's
    global random state).

    Args:
        train_features, test_features: float arrays `(N, D)` (e.g. from `encoder_features`).
        train_labels, test_labels: int arrays `(N,)`.
        seed: int, seed of the probe's initialization and batch order.
        epochs: int, training epochs of the probe.
        normalize: bool, standardize the features with the training set's statistics first.

    Returns:
        float, the accuracy on the test features.
    """
    keras.utils.set_random_seed(seed)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    if normalize:
        train_features, test_features = _standardize(train_features, test_features)
    head = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01))
    probe = keras.Sequential([keras.Input((train_features.shape[1],)), head])
    probe.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    probe.fit(train_features, train_labels, batch_size=1024, epochs=epochs, verbose=0)
    return probe.evaluate(test_features, test_labels, verbose=0, return_dict=True)["accuracy"]
