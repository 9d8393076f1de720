"""k-nearest-neighbour evaluation of frozen encoder features."""

import numpy as np
from keras import ops


def encoder_features(encoder, images, batch_size=512):
    """Mean of the encoder's final patch tokens (CLS excluded), L2-normalized, as numpy (N, D)."""
    features = []
    for start in range(0, len(images), batch_size):
        hidden = encoder(images[start : start + batch_size], training=False)
        features.append(ops.convert_to_numpy(ops.mean(hidden[:, encoder.num_extra_tokens :], axis=1)))
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
