"""Optimizers and schedules for pre-training and fine-tuning: the reference's warm-up + cosine schedule,
AdamW with a learning-rate multiplier per weight (layer-wise decay)."""

import keras
from keras import ops


def warmup_cosine(peak_learning_rate, *, total_steps, warmup_epochs, steps_per_epoch):
    """Linear warm-up from 0 to `peak_learning_rate` over `warmup_epochs` (capped at half the run),
    then cosine decay to 0 at `total_steps`: the reference's schedule (`min_lr=0`).

    Example:
    >>> schedule = warmup_cosine(2e-3, total_steps=940, warmup_epochs=1, steps_per_epoch=235)
    >>> keras.optimizers.AdamW(schedule, weight_decay=0.05)
    """
    if total_steps < 1:
        raise ValueError(f"`total_steps` must be >= 1, got {total_steps}.")
    warmup = min(int(warmup_epochs * steps_per_epoch), total_steps // 2)
    return keras.optimizers.schedules.CosineDecay(
        0.0, max(total_steps - warmup, 1), alpha=0.0, warmup_target=peak_learning_rate, warmup_steps=warmup
    )


def exclude_1d_weights_from_weight_decay(optimizer, variables):
    """Keeps the 1-D weights among `variables` (biases, LayerNorm, the ALiBi scale) out of the
    optimizer's weight decay, as the reference's optimizer parameter groups do (CLS token and
    kernels stay decayed). Looks through a `LossScaleOptimizer`; a no-op without weight decay."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if getattr(inner, "weight_decay", None):
        inner.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) <= 1])


@keras.saving.register_keras_serializable(package="keras_d2v2")
class LayerDecayAdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose step size is scaled per weight, as in BEiT/MAE/data2vec fine-tuning.

    Each weight whose `variable.path` is a key of `lr_multipliers` gets the learning rate times
    that multiplier, for both the Adam update and the decoupled weight decay (the reference's
    `lr_scale` optimizer override scales its whole parameter group); every other weight keeps
    the full rate. `ImageClassifier.layer_decay_multipliers(decay)` builds the dictionary the
    reference way. A key that matches no weight being optimized raises an error when the
    optimizer is built, so a misspelt path cannot silently fine-tune at full rate.

    Every argument but `lr_multipliers` is `keras.optimizers.AdamW`'s.

    Args:
        lr_multipliers: dict `{variable.path: float}`, each > 0.

    Example:
    >>> classifier = ImageClassifier.from_pretrained(model, num_classes=10, drop_path_rate=0.1)
    >>> classifier.compile(
    ...     optimizer=LayerDecayAdamW(1e-3, weight_decay=0.05, beta_2=0.95,
    ...                               lr_multipliers=classifier.layer_decay_multipliers(0.65)),
    ...     loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    """

    def __init__(self, learning_rate=0.001, *, lr_multipliers=None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        lr_multipliers = dict(lr_multipliers or {})
        for path, multiplier in lr_multipliers.items():
            if not multiplier > 0:
                raise ValueError(f"`lr_multipliers[{path!r}]` must be > 0, got {multiplier}.")
        self.lr_multipliers = lr_multipliers

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        paths = {v.path for v in var_list}
        unknown = sorted(set(self.lr_multipliers) - paths)
        if unknown:
            raise ValueError(
                f"`lr_multipliers` names weights that are not being optimized: {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''}; keys must be `variable.path` of trainable weights."
            )
        self._multipliers = [float(self.lr_multipliers.get(v.path, 1.0)) for v in var_list]

    def _apply_weight_decay(self, variables):
        # Decay is applied per weight in `update_step`, where the weight's multiplier is known.
        return

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._multipliers[self._get_variable_index(variable)]
        learning_rate = ops.multiply(ops.cast(learning_rate, variable.dtype), multiplier)
        if self.weight_decay is not None and self._use_weight_decay(variable):
            decay = ops.cast(self.weight_decay, variable.dtype)
            self.assign_sub(variable, ops.multiply(variable, ops.multiply(decay, learning_rate)))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "lr_multipliers": dict(self.lr_multipliers)}
