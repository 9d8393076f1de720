"""What `Data2Vec2.fit()` adds to Keras' loop: its default callbacks, the up-front checks of
in-memory inputs, the epoch wiring of a `ShuffledBatches` dataset and the checks of a
`BackupAndRestore` backup before it is resumed."""

import numpy as np

from keras_d2v2.array_inputs import refuse_sequence_inputs
from keras_d2v2.backup_checks import add_backup_checks
from keras_d2v2.callbacks import EMATeacher, TrainingGuard
from keras_d2v2.data.shuffled_batches import SetDataEpoch, ShuffledBatches


def with_default_callbacks(callbacks):
    """`callbacks` with a `TrainingGuard` first (the caller's, or one with the model's settings) and
    an `EMATeacher` unless one is given. The guard runs first so that a checkpointing callback
    never saves the state of a step whose loss, or whose weights, were not finite."""
    callbacks = list(callbacks or [])
    guards = [c for c in callbacks if isinstance(c, TrainingGuard)] or [TrainingGuard()]
    callbacks = guards + [c for c in callbacks if not isinstance(c, TrainingGuard)]
    if not any(isinstance(c, EMATeacher) for c in callbacks):
        callbacks.append(EMATeacher())
    return callbacks


def check_in_memory_inputs(encoder, x):
    """Checks NumPy inputs (or those of a `ShuffledBatches`) with `encoder.check_inputs`. Compiled
    steps cannot raise on values (e.g. token ids outside the vocabulary, which JAX would silently
    clamp), so in-memory data is checked once, up front. A list or tuple of arrays (Keras' form for a
    model of several inputs) is refused."""
    refuse_sequence_inputs(x, encoder.input_name)
    arrays = x.x if isinstance(x, ShuffledBatches) else x
    padding = None
    if isinstance(arrays, dict):
        if isinstance(arrays.get("padding_mask"), np.ndarray):
            padding = arrays["padding_mask"]
        arrays = arrays.get(encoder.input_name)
    if isinstance(arrays, np.ndarray):
        if len(arrays) == 0:
            raise ValueError(f"`x` has no samples (shape {arrays.shape}): `fit()` needs at least one.")
        encoder.check_inputs(arrays, padding_mask=padding)


def shuffled_batches_wiring(x, callbacks, fit_kwargs):
    """With `x` a `ShuffledBatches`, each epoch's order is the dataset's own, set as the epoch
    begins, so a run resumed by `BackupAndRestore` replays the same batches: Keras' shuffling is
    turned off and a `SetDataEpoch` callback added. Also puts a `BackupCheck` before each
    `BackupAndRestore`, so a backup of another model or batch size is refused, not resumed."""
    add_backup_checks(x, callbacks, fit_kwargs)
    if not isinstance(x, ShuffledBatches):
        return
    if fit_kwargs.get("steps_per_epoch"):
        # Keras then builds the next epoch's iterator before the epoch begins, and tf.data
        # prefetches from it, so batches could be drawn in the previous epoch's order.
        raise ValueError(
            "`steps_per_epoch` cannot be used with a `ShuffledBatches` dataset: an epoch is "
            f"the whole dataset ({len(x)} batches). Make the dataset smaller instead."
        )
    fit_kwargs["shuffle"] = False
    callbacks.append(SetDataEpoch(x))
