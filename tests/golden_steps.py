"""The parts of a golden parity test that every modality shares: the model the fixture's config
describes with the reference's weights, checking gradients, one fit() step, the weights after it,
and the two-step driver."""

import numpy as np
from keras import ops

from keras_d2v2.convert import fairseq_weight_names, load_fairseq_weights

from conftest import assert_close, loss_and_grads
from golden_config import build_model, optimizer

# Adam divides each gradient element by its own running RMS, so float32 round-off in the gradients
# (1e-7 relative) does not shrink with the gradient: the attention key bias, whose gradient is zero
# up to round-off, moves by ~1e-8 in both implementations, and an element whose gradients nearly
# cancel differs by up to 1.3e-6 (measured: TF/JAX/torch). Weights after a step therefore get an
# absolute floor of 2e-6, 0.2% of one update at the image fixture's learning rate of 1e-3.
WEIGHT_ATOL = 2e-6
# At the first step Adam moves an element by about lr * g / (|g| + eps), eps = 1e-8. Where the
# gradient has cancelled down to float32 round-off (|g| ~ eps; in the image fixture 2e-8 against an
# RMS of 1e-3), that move is set by the round-off of each implementation: 6 % of it differed
# between PyTorch on an AVX2 CPU and the reference. Such elements are held to within their
# reference update (plus the floor) instead; every other element keeps the floor.
CANCELLED_GRADIENT = 1e-7


def weights(golden, prefix):
    return {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}


def load_initial_weights(model, golden):
    load_fairseq_weights(model, weights(golden, "init/student/"), weights(golden, "init/teacher/"))


def reference_model(config, golden):
    """The fixture's model (`<modality>_config.json`) with its initial weights, compiled with its optimizer."""
    model = build_model(config)
    load_initial_weights(model, golden)
    model.compile(optimizer=optimizer(config))
    return model


def num_trainable(golden):
    """How many weights the reference trains: those it records a gradient of."""
    return sum(key.startswith("step0/grad/") for key in golden)


def check_loss_and_gradients(model, golden, step, x):
    """The loss / sample_size and every gradient (÷ sample_size, as fairseq scales them)."""
    sample_size = float(golden[f"step{step}/sample_size"])
    loss, grads = loss_and_grads(model, x)
    assert_close(loss, golden[f"step{step}/loss_per_sample_size"], name="loss")
    student_names, _ = fairseq_weight_names(model)
    by_path = {v.path: grad for v, grad in zip(model.trainable_variables, grads)}
    reference_grads = weights(golden, f"step{step}/grad/")
    assert len(reference_grads) == len(by_path)
    for name, ref in reference_grads.items():
        variable, transform = student_names[name]
        assert_close(by_path[variable.path], transform(ref) / sample_size, name=f"grad {name}")


def reorder_to_reference(hidden, ids_keep, reference_ids_keep, extra_tokens):
    """Our encoder output (visible tokens ascending) in the reference's ids_keep order."""
    ids_keep = ops.convert_to_numpy(ids_keep)
    np.testing.assert_array_equal(np.sort(ids_keep, 1), np.sort(reference_ids_keep, 1))
    hidden = ops.convert_to_numpy(hidden)
    order = np.stack([np.searchsorted(row, ref) for row, ref in zip(ids_keep, reference_ids_keep)])
    visible = np.take_along_axis(hidden[:, extra_tokens:], order[..., None], 1)
    return np.concatenate([hidden[:, :extra_tokens], visible], 1)


def train_one_step(model, golden, step, x):
    history = model.fit(x, batch_size=len(golden[f"step{step}/input/source"]), epochs=1, shuffle=False, verbose=0)
    assert_close(history.history["loss"][0], golden[f"step{step}/loss_per_sample_size"], name="fit loss")
    # fairseq logs the decay multiplied by 1000.
    assert_close(history.history["ema_decay"][0], golden[f"step{step}/log/ema_decay"] / 1000, name="ema_decay")
    # The reference's log/target_var and log/pred_var are standard deviations (its `compute_var`).
    assert_close(history.history["target_std"][0], golden[f"step{step}/log/target_var"], name="target_std")
    assert_close(history.history["pred_std"][0], golden[f"step{step}/log/pred_var"], name="pred_std")


def weight_tolerance(golden, step, name, transform, atol):
    """`atol`, or per element where the step's reference gradient cancelled to round-off: the
    reference's own update of that element plus `atol` (see CANCELLED_GRADIENT)."""
    if f"step{step}/grad/{name}" not in golden:
        return atol
    gradient = transform(golden[f"step{step}/grad/{name}"]) / float(golden[f"step{step}/sample_size"])
    before = golden[f"step{step - 1}/after/student/{name}" if step else f"init/student/{name}"]
    update = np.abs(transform(golden[f"step{step}/after/student/{name}"]) - transform(before))
    return np.where(np.abs(gradient) < CANCELLED_GRADIENT, update + atol, atol)


def check_after_step(model, golden, step, atol=WEIGHT_ATOL):
    student_names, teacher_names = fairseq_weight_names(model)
    for name, ref in weights(golden, f"step{step}/after/student/").items():
        variable, transform = student_names[name]
        tolerance = weight_tolerance(golden, step, name, transform, atol)
        assert_close(variable, transform(ref), atol=tolerance, name=f"student {name}")
    model.sync_teacher()
    for name, ref in weights(golden, f"step{step}/after/teacher/").items():
        variable, transform = teacher_names[name]
        # The teacher takes (1 - decay) of the student's step: the student's tolerance bounds it
        # (where the reference names the two alike; its text teacher's blocks are named apart).
        tolerance = atol
        if name in student_names:
            tolerance = weight_tolerance(golden, step, name, student_names[name][1], atol)
        assert_close(variable, transform(ref), atol=tolerance, name=f"teacher {name}")


def run_two_steps(model, golden, step_inputs, check_forward, weight_atol=WEIGHT_ATOL):
    """Both recorded steps: forward, loss and gradients, one fit() step, then student and teacher."""
    for step in (0, 1):
        if step:
            # Start each step from the reference's weights so that every step is checked on its own
            # (the optimizer keeps the moments of our step 0, which match to float32 round-off).
            load_fairseq_weights(model, weights(golden, "step0/after/student/"), weights(golden, "step0/after/teacher/"))
        x = step_inputs(model, golden, step)
        check_forward(model, golden, step, x)
        check_loss_and_gradients(model, golden, step, x)
        train_one_step(model, golden, step, x)
        check_after_step(model, golden, step, weight_atol)
        assert int(ops.convert_to_numpy(model.num_updates)) == step + 1
