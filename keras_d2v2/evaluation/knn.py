"""k-nearest-neighbour evaluation of frozen encoder features."""

import numpy as np
from keras import ops


def encoder_features(encoder, inputs, batch_size=512):
    """Mean of the encoder's final tokens (CLS excluded; padding excluded for encoders whose
    `padding_mask(inputs)` marks some, e.g. text), L2-normalized, as numpy (N, D)."""
    features = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        hidden = encoder(batch, training=False)[:, encoder.num_extra_tokens :]
        padding = encoder.padding_mask(batch)
        if padding is None:
            pooled = ops.mean(hidden, axis=1)
        else:
            weights = ops.cast(ops.logical_not(padding), hidden.dtype)[..., None]
            pooled = ops.sum(hidden * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)
        features.append(ops.convert_to_numpy(pooled))
    features = np.concatenate(features).astype("float32")
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def knn_accuracy(train_features, train_labels, test_features, test_labels, k=20, temperature=0.07, chunk=1024):
    """Top-1 accuracy of a similarity-weighted k-NN vote (cosine similarity, weights exp(s / T)),
    the protocol DINO and data2vec use for frozen features. Features must be L2-normalized."""
    if not 1 <= k <= len(train_features):
        raise ValueError(f"`k` must be in [1, {len(train_features)}], got {k}.")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    correct = 0
    for start in range(0, len(test_features), chunk):
        sims = test_features[start : start + chunk] @ train_features.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        weights = np.exp(np.take_along_axis(sims, top, 1) / temperature)
        votes = np.zeros((len(top), num_classes))
        np.add.at(votes, (np.arange(len(top))[:, None], train_labels[top]), weights)
        correct += int((votes.argmax(1) == test_labels[start : start + chunk]).sum())
    return correct / len(test_features)
