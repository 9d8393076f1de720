import os
import pathlib
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = pathlib.Path(os.environ.get("KERAS_D2V2_GOLDEN", REPO.parent / "shared" / "golden"))


def virtual_devices_env(count=8):
    """Environment for a JAX subprocess that sees `count` virtual CPU devices.

    On a 2-core machine that also runs other test processes, one virtual device's thread can reach an
    all-reduce more than XLA's default 40 s after its peers; XLA then aborts the process. The raised
    timeouts keep a slow but correct run from being killed.
    """
    flags = (f"--xla_force_host_platform_device_count={count} "
             "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300 "
             "--xla_cpu_collective_call_terminate_timeout_seconds=900")
    return dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS=flags, TF_CPP_MIN_LOG_LEVEL="3")


def run_python(args, *, env, timeout=600, cwd=None):
    """`subprocess.run([python, *args])` that fails with every thread's Python stack when it times out,
    so that a hang in CI says where it hung (faulthandler prints them on SIGABRT)."""
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=dict(env, PYTHONFAULTHANDLER="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(map(str, args))[:200]} timed out after {timeout} s.\nstdout: {stdout[-2000:]}\nstderr: {stderr[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _golden(name):
    path = GOLDEN / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"golden fixture {path} not found (set KERAS_D2V2_GOLDEN to the fixture folder)")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def golden_image():
    return _golden("image")


@pytest.fixture(scope="session")
def golden_text():
    return _golden("text")


@pytest.fixture(scope="session")
def golden_audio():
    return _golden("audio")


def loss_and_grads(model, x):
    """Loss and gradients of `model.compute_loss` w.r.t. `model.trainable_variables`, per backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = model.compute_loss(x, None, model(x, training=True), training=False)
        grads = tape.gradient(loss, model.trainable_variables)
    elif backend == "torch":
        for v in model.trainable_variables:
            v.value.grad = None
        loss = model.compute_loss(x, None, model(x, training=True), training=False)
        loss.backward()
        grads = [v.value.grad for v in model.trainable_variables]
    elif backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        metrics = [v.value for v in model.metrics_variables]

        def loss_fn(trainable):
            y_pred, new_non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
            loss, _ = model.stateless_compute_loss(
                trainable, new_non_trainable, metrics, x=x, y_pred=y_pred, training=False
            )
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(trainable)
    else:
        raise NotImplementedError(backend)
    return float(keras.ops.convert_to_numpy(loss)), [keras.ops.convert_to_numpy(g) for g in grads]


def assert_close(actual, expected, rtol=1e-4, atol=None, name=""):
    """rtol 1e-4; by default with an absolute floor of 1e-5 of the reference's largest magnitude,
    so that entries that are zero up to round-off compare sensibly."""
    actual, expected = (
        np.asarray(keras.ops.convert_to_numpy(v.detach() if hasattr(v, "detach") else v), dtype=np.float64)
        for v in (actual, expected)
    )
    if atol is None:
        atol = 1e-5 * max(float(np.abs(expected).max()), 1e-12)
    if np.ndim(atol):  # per-element floors: report the elements outside their own
        outside = np.abs(actual - expected) > atol + rtol * np.abs(expected)
        if outside.any():
            floor = float(np.broadcast_to(atol, outside.shape)[outside].min())
            np.testing.assert_allclose(actual[outside], expected[outside], rtol=rtol, atol=floor, err_msg=name)
        return
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=name)
