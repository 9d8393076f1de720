"""What the pre-training recipes share: the random-init baseline, the optimizer, `fit` and saving.

Each recipe is run as `python recipes/NAME.py`, which puts this folder on `sys.path`, so a recipe
imports these with `from common import ...` (after setting `KERAS_BACKEND`: this module imports Keras).
"""

import os
import time

import keras

from keras_d2v2.optimizers import warmup_cosine


def initial_encoder_copy(model):
    """A copy of `model.encoder` with the weights it has now: the "random init" row of a probe.

    Call it before training. With a seeded preset these are the pre-training's own initial weights,
    so the probe compares one encoder before and after pre-training.
    """
    encoder = model.encoder.__class__.from_config(model.encoder.get_config())
    encoder.build()
    encoder.set_weights(model.encoder.get_weights())
    return encoder


def image_cls_loss_weight(*, clone_batch, batch_size):
    """The reference's CLS-loss weight, rescaled to this run's batch.

    The reference sums its CLS term over the B*M clones on a device (0.01 per clone at 16 images x
    16 masks per GPU); this keeps the term's weight relative to the token loss at that level for
    `batch_size` images of `clone_batch` masks each.
    """
    return 0.01 * 256 / (batch_size * clone_batch)


def compile_for_pretraining(
    model,
    *,
    learning_rate,
    epochs,
    steps_per_epoch,
    warmup_epochs,
    beta_2,
    weight_decay,
    beta_1=0.9,
    epsilon=1e-7,
    global_clipnorm=None,
    steps_per_execution=1,
):
    """Compiles `model` with AdamW on the reference's schedule: a linear warm-up to `learning_rate`
    over `warmup_epochs`, then a cosine decay to 0 at the end of `epochs` (`warmup_cosine`).

    The defaults of `beta_1` and `epsilon` are Keras' own; `global_clipnorm=None` does not clip.
    `Data2Vec2.compile` leaves 1-D weights out of the weight decay unless the model says otherwise.
    """
    total_steps = epochs * steps_per_epoch
    schedule = warmup_cosine(
        learning_rate, total_steps=total_steps, warmup_epochs=warmup_epochs, steps_per_epoch=steps_per_epoch
    )
    optimizer = keras.optimizers.AdamW(
        schedule,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        weight_decay=weight_decay,
        global_clipnorm=global_clipnorm,
    )
    model.compile(optimizer=optimizer, steps_per_execution=steps_per_execution)


def pretrain(model, data, *, epochs, backup_dir="", verbose=2):
    """`model.fit(data)` for `epochs`; returns the `History` and the seconds it took.

    With `backup_dir`, a killed run started again with the same command continues from its last
    finished epoch, bit for bit as if it had not stopped (a `ShuffledBatches` order is a function of
    seed and epoch); `keras.callbacks.BackupAndRestore` deletes the folder once training has ended.
    """
    start = time.time()
    callbacks = [keras.callbacks.BackupAndRestore(backup_dir)] if backup_dir else []
    history = model.fit(data, epochs=epochs, callbacks=callbacks, verbose=verbose)
    return history, time.time() - start


def save_model(model, path, *, tokenizer=None):
    """Saves `model` to `path` (a `.keras` file), making its folder, and prints where; no-op if `path` is "".

    A `tokenizer` is saved beside the model, in `<path without .keras>_tokenizer/`, where the
    fine-tuning recipes look for it. Both are written under temporary names and moved into place
    (`keras_d2v2.atomic_write`), so a save that fails leaves an earlier run's files loadable.
    """
    if not path:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    model.save(path)
    if tokenizer is None:
        print(f"saved {path}")
        return
    tokenizer.save(os.path.splitext(path)[0] + "_tokenizer")
    print(f"saved {path} and its tokenizer in {os.path.splitext(path)[0]}_tokenizer/")
