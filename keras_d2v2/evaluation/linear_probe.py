"""Linear-probe evaluation of frozen encoder features."""

import keras


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels, *, seed=0, epochs=100):
    """Top-1 test accuracy of a softmax regression trained on frozen features.

    The features are standardized with the training set's per-dimension mean and std; one Dense
    layer (no hidden layer) is trained with AdamW (learning rate 1e-2, weight decay 1e-4), batch
    1024, `epochs` epochs, on the sparse categorical cross-entropy. Classes are `0 ...
    max(label)`. Calls `keras.utils.set_random_seed(seed)` first (so it also resets Python's,
    NumPy's and the backend's global random state).

    Args:
        train_features, test_features: float arrays `(N, D)` (e.g. from `encoder_features`).
        train_labels, test_labels: int arrays `(N,)`.
        seed: int, seed of the probe's initialization and batch order.
        epochs: int, training epochs of the probe.

    Returns:
        float, the accuracy on the test features.
    """
    keras.utils.set_random_seed(seed)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    probe = keras.Sequential([keras.Input((train_features.shape[1],)), keras.layers.Dense(num_classes)])
    probe.compile(
        optimizer=keras.optimizers.AdamW(1e-2, weight_decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    probe.fit((train_features - mean) / std, train_labels, batch_size=1024, epochs=epochs, verbose=0)
    return probe.evaluate((test_features - mean) / std, test_labels, verbose=0, return_dict=True)["accuracy"]
