"""k-nearest-neighbour evaluation of frozen encoder features."""

import keras
import numpy as np
from keras import ops


class _PooledFeatures(keras.Model):
    """The encoder followed by the feature pooling, so that `predict()` runs it as one compiled call
    per batch. Calling the encoder op by op instead dispatches every layer separately, which under a
    model-parallel `keras.distribution` means one cross-device exchange per op."""

    def __init__(self, encoder):
        super().__init__(name=f"{encoder.name}_pooled_features")
        self.encoder = encoder

    def call(self, inputs):
        hidden = self.encoder(inputs, training=False)[:, self.encoder.num_extra_tokens :]
        padding = self.encoder.padding_mask(inputs)
        if padding is None:
            pooled = ops.mean(hidden, axis=1)
        else:
            weights = ops.cast(ops.logical_not(padding), hidden.dtype)[..., None]
            pooled = ops.sum(hidden * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)
        return ops.cast(pooled, "float32")


def encoder_features(encoder, inputs, batch_size=512):
    """Mean of the encoder's final tokens (CLS excluded; padding excluded for encoders whose
    `padding_mask(inputs)` marks some, e.g. text), L2-normalized, as numpy (N, D)."""
    count = len(inputs)
    batch_size = min(batch_size, count)
    # Whole batches only: one input shape to compile, and under a `keras.distribution` every batch
    # splits over the data-parallel devices. The repeated rows are dropped from the result.
    padding = -count % batch_size
    if padding:
        inputs = np.concatenate([inputs, np.repeat(np.asarray(inputs[-1:]), padding, axis=0)])
    features = _PooledFeatures(encoder).predict(inputs, batch_size=batch_size, verbose=0)[:count]
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
