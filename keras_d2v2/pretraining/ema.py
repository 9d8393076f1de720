"""The EMA teacher's bookkeeping: which weight follows which, the decay schedule, and the update."""

import keras
from keras import ops


def check_ema_schedule(decay=None, end_decay=None, anneal_end_step=None, *, prefix=""):
    """Raises a ValueError naming the first schedule value out of range (None values are skipped);
    the arguments are named `prefix` + their name (`Data2Vec2` calls them `ema_decay`, ...)."""
    for name, value in (("decay", decay), ("end_decay", end_decay)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"`{prefix}{name}` must be in [0, 1] (an EMA decay), got {value}.")
    if anneal_end_step is not None and anneal_end_step < 0:
        raise ValueError(f"`{prefix}anneal_end_step` must be >= 0, got {anneal_end_step}.")


def teacher_pairs(student, teacher):
    """`(student_weight, teacher_weight)` for every weight of `teacher`, matched by path."""
    student_by_path = {v.path.split("/", 1)[1]: v for v in student.weights}
    pairs = []
    for weight in teacher.weights:
        source = student_by_path.get(weight.path.split("/", 1)[1])
        if source is None:
            raise RuntimeError(f"Teacher weight {weight.path} has no student weight of the same path.")
        pairs.append((source, weight))
    return pairs


class TeacherEMA:
    """Owns the EMA teacher's state in a `Data2Vec2`: the (student, teacher) weight pairs
    (`teacher_pairs`), the schedule and step variables, and the update, reset and sync of the teacher.

    The variables are the one source of truth for the schedule; they are the model's weights, so
    they are saved, restored and distributed with it:
    - `num_updates`: optimizer updates so far (the reference's `num_updates`);
    - `teacher_updates`: updates the teacher has caught up with;
    - `decay`, `end_decay`, `anneal_end_step`: the decay rises linearly from `decay` to
      `end_decay` over `anneal_end_step` updates, then stays (`end_decay=1` freezes the teacher).

    The update is the reference's: once per optimizer step, just before the teacher is next used,
    `teacher = d * teacher + (1 - d) * student` for trainable student weights and a copy for the
    others, with `d` the annealed decay at the current step.

    Example:
    >>> model.ema.set_schedule(decay=0.999, end_decay=0.9999, anneal_end_step=3000)
    >>> float(model.ema.current_decay())
    """

    def __init__(self, model, *, pairs, decay, end_decay, anneal_end_step):
        check_ema_schedule(decay, end_decay, anneal_end_step, prefix="ema_")
        self.pairs = pairs
        self.reset()

        def state(name, value, dtype):
            return model.add_weight(
                shape=(), initializer=keras.initializers.Constant(value), dtype=dtype, trainable=False, name=name
            )

        # The order of these variables is their order in saved files: keep it.
        self.num_updates = state("num_updates", 0, "int32")
        self.teacher_updates = state("teacher_updates", 0, "int32")
        self.decay = state("ema_decay", decay, "float32")
        self.end_decay = state("ema_end_decay", end_decay, "float32")
        self.anneal_end_step = state("ema_anneal_end_step", anneal_end_step, "float32")

    def schedule(self):
        """`{"ema_decay", "ema_end_decay", "ema_anneal_end_step"}` as held now, as Python numbers."""
        decay, end_decay, anneal = (
            float(ops.convert_to_numpy(v)) for v in (self.decay, self.end_decay, self.anneal_end_step)
        )
        return {"ema_decay": decay, "ema_end_decay": end_decay, "ema_anneal_end_step": int(anneal)}

    def set_schedule(self, *, decay=None, end_decay=None, anneal_end_step=None):
        """Changes the schedule; None keeps a value as it is."""
        check_ema_schedule(decay, end_decay, anneal_end_step)
        for variable, value in ((self.decay, decay), (self.end_decay, end_decay), (self.anneal_end_step, anneal_end_step)):
            if value is not None:
                variable.assign(float(value))

    def current_decay(self):
        """The decay the next teacher update uses (the reference's `get_annealed_rate`)."""
        step = ops.cast(self.num_updates, "float32")
        start, end, total = (ops.convert_to_tensor(v) for v in (self.decay, self.end_decay, self.anneal_end_step))
        annealed = end - (end - start) * (1.0 - step / ops.maximum(total, 1.0))
        return ops.where(step >= total, end, annealed)

    def update(self):
        """Applies the pending update, if the student has moved since the teacher last saw it;
        returns the decay used."""
        pending = ops.greater(self.num_updates, self.teacher_updates)
        decay = self.current_decay()
        for student, teacher in self.pairs:
            current = ops.convert_to_tensor(teacher)
            source = ops.stop_gradient(ops.convert_to_tensor(student))
            if student.trainable:
                source = decay * current + (1.0 - decay) * source
            teacher.assign(ops.where(pending, source, current))
        # A fresh value, not the variable: on JAX two variables must never share a donated buffer.
        self.teacher_updates.assign(ops.maximum(self.teacher_updates, self.num_updates))
        return decay

    def count_update(self):
        """Counts one optimizer update; the teacher follows at its next use (or `sync`)."""
        self.num_updates.assign_add(1)

    def reset(self):
        """Makes the teacher an exact copy of the student, as at the start of pre-training."""
        for student, teacher in self.pairs:
            # A host copy: on JAX two variables must never share a donated buffer.
            teacher.assign(ops.convert_to_numpy(student))

    def sync(self):
        """Brings the teacher up to date with the last optimizer step (`fit()` does it when it
        ends). Inside the compiled step each update is applied just before the next forward, which
        is when the reference's teacher is first used."""
        self.update()
