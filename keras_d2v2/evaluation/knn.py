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
        source, padding = inputs, None
        if isinstance(inputs, dict):
            source, padding = inputs[self.encoder.input_name], inputs.get("padding_mask")
        hidden = self.encoder(source, training=False, padding_mask=padding)
        return ops.cast(self.encoder.mean_pool(hidden, source, padding), "float32")


def encoder_features(encoder, inputs, batch_size=512):
    """Mean of the encoder's final tokens over each input's real tokens (CLS and padding left out:
    `Encoder.mean_pool`), L2-normalized, as numpy (N, D). `inputs` is what the encoder takes: an
    array, or for audio of different lengths a dict `{"audio": (N, samples), "padding_mask": (N,
    samples)}` (True = padding)."""
    arrays = inputs if isinstance(inputs, dict) else {"x": inputs}
    count = len(next(iter(arrays.values())))
    batch_size = min(batch_size, count)
    # Whole batches only: one input shape to compile, and under a `keras.distribution` every batch
    # splits over the data-parallel devices. The repeated rows are dropped from the result.
    padding = -count % batch_size
    if padding:
        arrays = {k: np.concatenate([v, np.repeat(np.asarray(v[-1:]), padding, axis=0)]) for k, v in arrays.items()}
    batches = arrays if isinstance(inputs, dict) else arrays["x"]
    features = _PooledFeatures(encoder).predict(batches, batch_size=batch_size, verbose=0)[:count]
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
