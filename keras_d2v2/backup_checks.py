"""Refusing to resume a `keras.callbacks.BackupAndRestore` backup that another run configuration wrote.

Keras restores whatever weights it finds in a backup folder: a backup of another model configuration
fails deep in its loader ("A total of N objects could not be loaded"), after part of the model may
have been overwritten, and one written at another batch size resumes silently, on another step
count and learning-rate schedule than the run it continues. `Data2Vec2.fit()` puts a `BackupCheck`
before each `BackupAndRestore`: it records the run's weight shapes and batch size in the backup
folder (`RUN_FILE`) and, when a backup is there to resume, compares them before anything is loaded.
"""

import json
import os

import keras
import numpy as np

from keras_d2v2.atomic_write import replaced_atomically

# Beside Keras' `latest.weights.h5` and `training_metadata.json` in the backup folder.
RUN_FILE = "keras_d2v2_run.json"
_KERAS_WEIGHTS_FILE = "latest.weights.h5"


def fit_batch_size(x, fit_kwargs):
    """The batch size `fit(x, **fit_kwargs)` trains with, or None where the data batches itself
    (`tf.data`, a `PyDataset` other than `ShuffledBatches`, a generator or a torch `DataLoader`)."""
    from keras_d2v2.data.shuffled_batches import ShuffledBatches

    if isinstance(x, ShuffledBatches):
        return int(x.batch_size)
    arrays = list(x.values()) if isinstance(x, dict) else list(x) if isinstance(x, (list, tuple)) else [x]
    if arrays and all(isinstance(a, np.ndarray) for a in arrays):
        return int(fit_kwargs.get("batch_size") or 32)  # Keras' default for arrays
    return None


def add_backup_checks(x, callbacks, fit_kwargs):
    """Puts a `BackupCheck` right before each `BackupAndRestore` in `callbacks` (in place)."""
    batch_size = fit_batch_size(x, fit_kwargs)
    for index in reversed(range(len(callbacks))):
        if isinstance(callbacks[index], keras.callbacks.BackupAndRestore):
            callbacks.insert(index, BackupCheck(callbacks[index].backup_dir, batch_size=batch_size))


def _weight_shapes(model):
    return [[variable.path, list(variable.shape)] for variable in model.weights]


class BackupCheck(keras.callbacks.Callback):
    """Before `BackupAndRestore` (which must come after it) restores a backup in `backup_dir`,
    raises a ValueError if the backup was written by a model with other weights (another preset or
    architecture) or at another `batch_size`; otherwise records this run's in `backup_dir`.
    Backups written without the record (other code, earlier versions) are not checked.

    Args:
        backup_dir: the `BackupAndRestore`'s folder.
        batch_size: this run's batch size, or None when unknown (not checked then).
    """

    def __init__(self, backup_dir, *, batch_size=None):
        super().__init__()
        self.backup_dir = os.fspath(backup_dir)
        self.batch_size = batch_size

    def on_train_begin(self, logs=None):
        run = {"batch_size": self.batch_size, "weights": _weight_shapes(self.model)}
        record = os.path.join(self.backup_dir, RUN_FILE)
        if os.path.isfile(os.path.join(self.backup_dir, _KERAS_WEIGHTS_FILE)) and os.path.isfile(record):
            with open(record, encoding="utf-8") as file:
                self._check(json.load(file), run)
        os.makedirs(self.backup_dir, exist_ok=True)
        with replaced_atomically(record) as tmp:
            with open(tmp, "w", encoding="utf-8") as file:
                json.dump(run, file)

    def _check(self, saved, run):
        how = (
            f"Resume with the model and settings that wrote it, or delete {self.backup_dir} (or pass "
            "`BackupAndRestore` another `backup_dir`) to start training from scratch."
        )
        theirs, ours = saved.get("weights", []), run["weights"]
        if len(theirs) != len(ours) or any(list(a[1]) != list(b[1]) for a, b in zip(theirs, ours)):
            if len(theirs) != len(ours):
                detail = f"its model has {len(theirs)} weights, this one {len(ours)}"
            else:
                (name, shape), (_, here) = next((a, b) for a, b in zip(theirs, ours) if list(a[1]) != list(b[1]))
                detail = f"its weight {name!r} has shape {tuple(shape)}, this model's {tuple(here)}"
            raise ValueError(
                f"The backup in {self.backup_dir} was written by a different model configuration (another "
                f"preset or architecture: {detail}); it cannot be resumed by this model. {how}"
            )
        before, now = saved.get("batch_size"), run["batch_size"]
        if before is not None and now is not None and before != now:
            raise ValueError(
                f"The backup in {self.backup_dir} was written by a run with batch_size={before}, and this run "
                f"has batch_size={now}: resumed, it would continue on other batches, step count and "
                f"learning-rate schedule than the run it continues. Pass batch_size={before}. {how}"
            )
