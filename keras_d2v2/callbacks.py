"""Callbacks for data2vec 2.0 pre-training."""

import math

import keras


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class RepresentationCollapse(RuntimeError):
    """The targets or the predictions lost their variance (the reference's collapse guard)."""


class EMATeacher(keras.callbacks.Callback):
    """Configures the EMA teacher's decay schedule and brings the teacher up to date at the end.

    The update itself runs inside the compiled training step (so it is exact with
    `steps_per_execution > 1`, under jit and on every backend); this callback does no per-batch
    work. The decay rises linearly from `decay` to `end_decay` over `anneal_steps` optimizer
    updates, then stays at `end_decay`; `end_decay=1.0` freezes the teacher after the anneal.
    Arguments left as None keep the model's current schedule. The decay in use is logged as
    `ema_decay`. `Data2Vec2.fit()` adds one with the model's own schedule when none is passed.

    Example:
    >>> model.fit(images, callbacks=[EMATeacher(decay=0.999, end_decay=0.99999, anneal_steps=75_000)])
    """

    def __init__(self, *, decay=None, end_decay=None, anneal_steps=None):
        super().__init__()
        for name, value in (("decay", decay), ("end_decay", end_decay)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {value}.")
        if anneal_steps is not None and anneal_steps < 0:
            raise ValueError(f"`anneal_steps` must be >= 0, got {anneal_steps}.")
        self.decay = decay
        self.end_decay = end_decay
        self.anneal_steps = anneal_steps

    def on_train_begin(self, logs=None):
        for variable, value in (
            (self.model.ema_decay, self.decay),
            (self.model.ema_end_decay, self.end_decay),
            (self.model.ema_anneal_end_step, self.anneal_steps),
        ):
            if value is not None:
                variable.assign(float(value))

    def on_train_end(self, logs=None):
        self.model.sync_teacher()


class TrainingGuard(keras.callbacks.Callback):
    """Stops training with an error when the loss is not finite or the representation collapses.

    The loss is checked after every batch and every weight (model and optimizer) at the end of
    every epoch. `Data2Vec2.fit()` runs this callback before all others, so a checkpointing
    callback after it (e.g. `BackupAndRestore`) never saves a diverged state: the last checkpoint
    on disk is the last good one.

    The collapse check is the reference's: after `check_after` updates, training stops when
    `target_var` (the per-dimension std of the masked targets, averaged) falls below
    `min_target_var`, or `pred_var` below `min_pred_var`. Arguments left as None use the model's
    settings (`Data2Vec2(min_target_var=..., min_pred_var=..., collapse_check_after=...)`).
    `Data2Vec2.fit()` adds one when none is passed.
    """

    def __init__(self, *, min_target_var=None, min_pred_var=None, check_after=None):
        super().__init__()
        self.min_target_var = min_target_var
        self.min_pred_var = min_pred_var
        self.check_after = check_after

    def _setting(self, own, name):
        return own if own is not None else getattr(self.model, name)

    def on_train_begin(self, logs=None):
        self._step = int(keras.ops.convert_to_numpy(self.model.num_updates))
        self._epoch_start = self._step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._step

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

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self._step = self._epoch_start + batch + 1
        loss = float(logs.get("loss", 0.0))
        if not math.isfinite(loss):
            self.model.stop_training = True
            raise TrainingDiverged(
                f"The loss became {loss} at update {self._step} (mean over the epoch so far). Lower the "
                "learning rate, clip gradients (`global_clipnorm`), or check the inputs for NaN/inf."
            )
        if self._step <= self._setting(self.check_after, "collapse_check_after"):
            return
        for metric, threshold in (
            ("target_var", self._setting(self.min_target_var, "min_target_var")),
            ("pred_var", self._setting(self.min_pred_var, "min_pred_var")),
        ):
            value = float(logs.get(metric, math.inf))
            if threshold and value < threshold:
                self.model.stop_training = True
                what = "teacher targets" if metric == "target_var" else "student predictions"
                raise RepresentationCollapse(
                    f"The {what} collapsed at update {self._step}: {metric}={value:.4g} < {threshold}. "
                    "Lower the learning rate or raise the EMA decay; the reference reports audio runs "
                    "recovering with a lower learning rate (fairseq issue #4177)."
                )
