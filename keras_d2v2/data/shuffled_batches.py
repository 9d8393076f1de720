"""In-memory batches whose order depends only on a seed and the epoch, so a resumed run replays it."""

import math
import numbers

import keras
import numpy as np


class ShuffledBatches(keras.utils.PyDataset):
    """Shuffled batches of in-memory arrays, in an order that a resumed run reproduces exactly.

    `fit(x, shuffle=True)` draws each epoch's order from process-global random state, so after a
    restart with `keras.callbacks.BackupAndRestore` the interrupted epoch is replayed in another
    order. Here epoch `e` is `np.random.default_rng([seed, e]).permutation(n)`, cut into batches
    (the last one partial, as `fit()` does). `Data2Vec2.fit()` calls `set_epoch()` as each epoch
    begins (any other training loop must do the same) and turns off Keras' own batch shuffling.

    Args:
        x: a NumPy array, or a dict of arrays with the same first dimension (e.g. `{"images": ...,
            "mask": ...}`, the model's precomputed-mask input).
        batch_size: samples per batch, a positive integer (a Python or NumPy one).
        seed: the seed of every epoch's permutation.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of `keras.utils.PyDataset`.

    Example:
    >>> data = ShuffledBatches(images, batch_size=256, seed=0)
    >>> model.fit(data, epochs=10, callbacks=[keras.callbacks.BackupAndRestore("backup")])
    """

    def __init__(self, x, *, batch_size=256, seed=0, **kwargs):
        super().__init__(**kwargs)
        arrays = x if isinstance(x, dict) else {None: x}
        sizes = {key: len(value) for key, value in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"`x` arrays must have the same first dimension, got {sizes}.")
        self.num_samples = next(iter(sizes.values()))
        if self.num_samples == 0:
            raise ValueError("`x` has no samples.")
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer (each epoch's permutation's seed), got {seed!r}.")
        self.x = x
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch):
        """Selects the permutation of `epoch` (0-based, as Keras counts epochs)."""
        self.epoch = int(epoch)
        self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)

    def __len__(self):
        return math.ceil(self.num_samples / self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch index {index} is out of range for {len(self)} batches.")
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = {k: v[rows] for k, v in self.x.items()} if isinstance(self.x, dict) else self.x[rows]
        return (batch,)


class SetDataEpoch(keras.callbacks.Callback):
    """Tells a `ShuffledBatches` which epoch starts (also after `BackupAndRestore` skips epochs)."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    def on_epoch_begin(self, epoch, logs=None):
        self.data.set_epoch(epoch)
