"""Callbacks for data2vec 2.0 pre-training."""

import math
import numbers

import keras
import numpy as np

from keras_d2v2.pretraining.ema import check_ema_schedule


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class RepresentationCollapse(RuntimeError):
    """The targets or the predictions lost their variance (the reference's collapse guard)."""


class InvalidInputBatch(ValueError):
    """A streamed batch held values the encoder refuses (`Encoder.check_inputs`), found in-graph."""


class EMATeacher(keras.callbacks.Callback):
    """Sets the EMA teacher's decay schedule when training begins and brings the teacher up to date
    when it ends.

    The update itself runs inside the compiled training step (so it is exact with
    `steps_per_execution > 1`, under jit and on every backend); this callback does no per-batch
    work. The decay rises linearly from `decay` to `end_decay` over `anneal_end_step` optimizer
    updates, then stays at `end_decay`; `end_decay=1.0` freezes the teacher after the anneal.
    Arguments left as None keep the model's current schedule (`model.ema`, the one place it is
    held; the model's `ema_decay`, `ema_end_decay`, `ema_anneal_end_step` set it first). The decay
    in use is logged as `ema_decay`. `Data2Vec2.fit()` adds one with the model's own schedule when
    none is passed.

    Example:
    >>> model.fit(images, callbacks=[EMATeacher(decay=0.999, end_decay=0.99999, anneal_end_step=75_000)])
    """

    def __init__(self, *, decay=None, end_decay=None, anneal_end_step=None):
        super().__init__()
        check_ema_schedule(decay, end_decay, anneal_end_step)
        self.decay = decay
        self.end_decay = end_decay
        self.anneal_end_step = anneal_end_step

    def on_train_begin(self, logs=None):
        self.model.ema.set_schedule(decay=self.decay, end_decay=self.end_decay, anneal_end_step=self.anneal_end_step)

    def on_train_end(self, logs=None):
        self.model.ema.sync()


class TrainingGuard(keras.callbacks.Callback):
    """Stops training with an error when the loss is not finite or the representation collapses.

    The loss is checked after every batch and every weight (model and optimizer) at the end of
    every epoch. Input values the encoder refuses (`Data2Vec2(input_checks=True)`: token ids
    outside the vocabulary, too-short audio rows), counted inside the step, stop training with an
    `InvalidInputBatch` (a `ValueError`) naming the batch. With `restore_on_divergence` (the
    default) the guard keeps a host copy of every model and optimizer variable at the start of
    `fit()` and at the end of every good epoch (host memory: one copy of the model's and
    optimizer's state), and `Data2Vec2.fit()` puts it back before raising `TrainingDiverged` or
    `InvalidInputBatch`, so the model in memory stays usable: its error says which state it holds. `Data2Vec2.fit()` runs this callback before all others, so a checkpointing
    callback after it (e.g. `BackupAndRestore`) never saves a diverged state: the last checkpoint
    on disk is the last good one.

    The collapse check is the reference's: after `check_after` updates, training stops when
    `target_std` (the per-dimension std of the masked targets, averaged) falls below
    `min_target_std`, or `pred_std` below `min_pred_std`. Arguments left as None use the model's
    settings (`Data2Vec2(min_target_std=..., min_pred_std=..., collapse_check_after=...)`), the
    one place they are held.
    `Data2Vec2.fit()` adds one when none is passed.

    Reading the loss waits for its step to finish. The guard is therefore `async_safe`: on the
    backends where Keras allows it (JAX, PyTorch), and when no other callback needs the batch end
    on the main thread, Keras runs the check on its callback thread while the next step is
    dispatched. An error raised there reaches `fit()` at a later batch end, and always before any
    callback's `on_epoch_end`, so a diverged epoch is still never checkpointed. Any other callback
    with a batch-end hook that is not async-safe (`BackupAndRestore`, `ModelCheckpoint`, most user
    callbacks) keeps the whole loop synchronous: the check then runs on the main thread, before
    that callback, at every batch.
    """

    # The batch-end check must then never read `self.model`: on JAX that property writes the step's
    # state back into the model's variables, from the callback thread, while the main thread has
    # already donated those buffers to the next step.
    async_safe = True

    def __init__(self, *, min_target_std=None, min_pred_std=None, check_after=None, restore_on_divergence=True):
        super().__init__()
        self.min_target_std = min_target_std
        self.min_pred_std = min_pred_std
        self.check_after = check_after
        self.restore_on_divergence = restore_on_divergence
        self._last_good = None

    def _keep_last_good(self, model, when):
        """Host copies of every model and optimizer variable: what `restore_last_good` puts back."""
        values = []
        if self.restore_on_divergence:
            variables = model.variables + (list(model.optimizer.variables) if model.optimizer else [])
            values = [(v, np.array(keras.ops.convert_to_numpy(v))) for v in variables]
        self._last_good = (when, values)

    def restore_last_good(self):
        """Puts back the weights and optimizer state of the last good point (the start of `fit()` or
        the end of the last epoch whose weights were all finite); returns a sentence saying which,
        for the error message. `Data2Vec2.fit()` calls it when training diverges or a batch is refused."""
        if not self.restore_on_divergence or self._last_good is None:
            return "The model's weights were left as they are (`restore_on_divergence=False`)."
        when, values = self._last_good
        for variable, value in values:
            variable.assign(value)
        return f"The model's weights and optimizer state were restored to those at {when}; `fit()` can be called again."

    def on_train_begin(self, logs=None):
        model = self.model
        self._step = int(keras.ops.convert_to_numpy(model.num_updates))
        self._epoch_start = self._step
        self._epoch = 0
        self._trained_model = model
        encoder = model.encoder
        self._fault_messages = {
            name: encoder.input_fault_message for name in getattr(model, "input_fault_trackers", {})
        }
        self._last_good = None
        self._check_after = model.collapse_check_after if self.check_after is None else self.check_after
        self._min_stds = (
            ("target_std", model.min_target_std if self.min_target_std is None else self.min_target_std),
            ("pred_std", model.min_pred_std if self.min_pred_std is None else self.min_pred_std),
        )

    def on_epoch_begin(self, epoch, logs=None):
        if self._last_good is None:
            # The start of training is taken here, not in `on_train_begin`: callbacks after the
            # guard (`BackupAndRestore`) may load another state there.
            self._step = int(keras.ops.convert_to_numpy(self.model.num_updates))
            self._keep_last_good(self.model, f"the start of this `fit()` (update {self._step})")
        self._epoch_start = self._step
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        # A finite loss does not prove the last update finite, and the epoch's checkpoint callbacks
        # run after this one: stopping here keeps the previous checkpoint as the last good one.
        optimizer_variables = self.model.optimizer.variables if self.model.optimizer else []
        for variable in self.model.variables + optimizer_variables:
            if "float" not in str(variable.dtype):
                continue
            if not bool(keras.ops.convert_to_numpy(keras.ops.all(keras.ops.isfinite(variable)))):
                self.model.stop_training = True
                raise TrainingDiverged(
                    f"`{variable.path}` holds NaN or inf at the end of epoch {epoch + 1} (update "
                    f"{self._step}); the epoch's state was not checkpointed. Lower the learning rate, "
                    "clip gradients (`global_clipnorm`), or check the inputs for NaN/inf."
                )
        self._keep_last_good(self.model, f"the end of epoch {epoch + 1} (update {self._step})")

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self._step = self._epoch_start + batch + 1
        # Faulty inputs first: they are what makes the loss NaN in the same batch.
        for name, message in self._fault_messages.items():
            count = float(logs.get(name, 0.0))
            if count > 0:
                self._trained_model.stop_training = True
                raise InvalidInputBatch(
                    f"{message(name, int(round(count)))}, by batch {batch + 1} of epoch {self._epoch + 1} (update "
                    f"{self._step}; counted in-graph, logged as `{name}`)."
                )
        loss = float(logs.get("loss", 0.0))
        if not math.isfinite(loss):
            self._trained_model.stop_training = True
            raise TrainingDiverged(
                f"The loss became {loss} at update {self._step} (mean over the epoch so far). Lower the "
                "learning rate, clip gradients (`global_clipnorm`), or check the inputs for NaN/inf."
            )
        if self._step <= self._check_after:
            return
        for metric, threshold in self._min_stds:
            value = float(logs.get(metric, math.inf))
            if threshold and value < threshold:
                self._trained_model.stop_training = True
                what = "teacher targets" if metric == "target_std" else "student predictions"
                raise RepresentationCollapse(
                    f"The {what} collapsed at update {self._step}: {metric}={value:.4g} < {threshold}. "
                    "Lower the learning rate or raise the EMA decay; the reference reports audio runs "
                    "recovering with a lower learning rate (fairseq issue #4177)."
                )


class KNNMonitor(keras.callbacks.Callback):
    """Logs the k-NN accuracy of the student encoder's features on held-out labelled data during `fit()`.

    Every `every_n_epochs` epochs (after epochs `every_n_epochs`, `2 * every_n_epochs`, ...), the
    model's student encoder (`model.encoder`) embeds `bank` and `test` with
    `keras_d2v2.evaluation.encoder_features` (mean of the final tokens, CLS and padding left out,
    L2-normalized), and the test images are classified by a similarity-weighted vote of their
    `k` nearest bank images (`keras_d2v2.evaluation.knn_accuracy`: cosine similarity, weights
    exp(s / `temperature`), DINO's protocol). The accuracy goes into the epoch's logs under
    `name`, so the progress bar, `History` and callbacks placed after this one (e.g.
    `keras.callbacks.CSVLogger`, `EarlyStopping(monitor=name, mode="max")`) see it. On the other
    epochs the key is absent, or `fill_value` when one is given (`CSVLogger` takes its columns
    from the first epoch, so with `every_n_epochs > 1` pass `fill_value=float("nan")` to get one).
    `evaluate_at_start=True` also measures the encoder before the first epoch that runs (at random
    init for a new model), printed and kept in `results[initial_epoch]` (no epoch logs exist
    then). `results` maps the number of finished epochs to the accuracy measured then.

    Costs one forward pass of the encoder over `bank` and `test` per evaluation, outside the
    compiled training step; labels are integers `0 ... num_classes - 1`.

    Args:
        bank: `(x, y)`, the labelled reference set (e.g. a subset of the training images).
        test: `(x, y)`, the held-out set to classify; `x` with the same per-sample shape as `bank`'s.
        k: neighbours per vote, `1 <= k <= len(bank)`.
        every_n_epochs: evaluation period, in epochs.
        batch_size: samples per encoder call.
        name: the log key, e.g. `"val_knn_accuracy"`.
        evaluate_at_start: whether to measure also before the first epoch.
        temperature: of the vote weights.
        fill_value: logged on epochs without evaluation, or None to log nothing then.

    Example:
    >>> monitor = KNNMonitor(bank=(x_train[:5000], y_train[:5000]), test=(x_test, y_test), k=20,
    ...                      every_n_epochs=5, name="val_knn_accuracy", evaluate_at_start=True)
    >>> history = model.fit(images, epochs=50, callbacks=[monitor, keras.callbacks.CSVLogger("log.csv")])
    >>> history.history["val_knn_accuracy"]      # one value per 5 epochs
    """

    def __init__(
        self,
        *,
        bank,
        test,
        k=20,
        every_n_epochs=1,
        batch_size=512,
        name="knn_accuracy",
        evaluate_at_start=False,
        temperature=0.07,
        fill_value=None,
    ):
        super().__init__()
        self.bank = self._labelled_set(bank, "bank")
        self.test = self._labelled_set(test, "test")
        if tuple(self.bank[0].shape[1:]) != tuple(self.test[0].shape[1:]):
            raise ValueError(
                f"`bank` and `test` samples must have the same shape, got {tuple(self.bank[0].shape[1:])} "
                f"and {tuple(self.test[0].shape[1:])}."
            )
        for arg, value in (("k", k), ("every_n_epochs", every_n_epochs), ("batch_size", batch_size)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{arg}` must be an integer >= 1, got {value!r}.")
        if k > len(self.bank[0]):
            raise ValueError(f"`k` must be at most the bank size ({len(self.bank[0])} samples), got {k}.")
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string, got {name!r}.")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
        self.k = int(k)
        self.every_n_epochs = int(every_n_epochs)
        self.batch_size = int(batch_size)
        self.name = name
        self.evaluate_at_start = bool(evaluate_at_start)
        self.temperature = float(temperature)
        self.fill_value = fill_value
        self.results = {}

    @staticmethod
    def _labelled_set(data, arg):
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ValueError(
                f"`{arg}` must be a pair `(x, y)` of samples and integer labels, got {type(data).__name__}."
            )
        x, y = data
        if not hasattr(x, "shape") or len(x.shape) < 2:
            raise ValueError(
                f"`{arg}` samples must be an array (N, ...) with a batch dimension, got "
                f"{getattr(x, 'shape', type(x).__name__)}."
            )
        y = np.asarray(y)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"`{arg}` labels must be a 1-D integer array, got shape {y.shape} and dtype {y.dtype}.")
        if len(x) != len(y):
            raise ValueError(f"`{arg}` has {len(x)} samples but {len(y)} labels.")
        if len(y) == 0:
            raise ValueError(f"`{arg}` has no samples.")
        if y.min() < 0:
            raise ValueError(f"`{arg}` labels must be >= 0 (class indices), got {y.min()}.")
        return x, y

    def evaluate(self):
        """The k-NN accuracy of the model's current student encoder (a float in [0, 1])."""
        from keras_d2v2.evaluation import encoder_features, knn_accuracy

        encoder = self.model.encoder
        bank = encoder_features(encoder, self.bank[0], batch_size=self.batch_size)
        test = encoder_features(encoder, self.test[0], batch_size=self.batch_size)
        return knn_accuracy(bank, self.bank[1], test, self.test[1], k=self.k, temperature=self.temperature)

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "encoder"):
            raise TypeError(
                f"KNNMonitor needs a model with an `encoder` (a `Data2Vec2`), got {type(self.model).__name__}."
            )
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        # The first epoch to run is known only here (`initial_epoch`, or where BackupAndRestore resumes).
        if self.evaluate_at_start and not self._started:
            accuracy = self.evaluate()
            self.results[epoch] = accuracy
            if (self.params or {}).get("verbose", 1):
                print(f"{self.name} before epoch {epoch + 1}: {accuracy:.4f}")
        self._started = True

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        if (epoch + 1) % self.every_n_epochs == 0:
            accuracy = self.evaluate()
            self.results[epoch + 1] = accuracy
            logs[self.name] = accuracy
        elif self.fill_value is not None:
            logs[self.name] = self.fill_value
