"""Exact resume: a training process killed mid-epoch and restarted with BackupAndRestore ends
bit-for-bit where the uninterrupted run ends (student, teacher, EMA state, mask RNG, optimizer),
with data shuffled differently every epoch."""

import os
import signal
import subprocess
import sys

import keras
import numpy as np

TRAIN = """
import os, signal, sys, numpy as np, keras, keras_d2v2
keras.utils.set_random_seed(0)
model = keras_d2v2.Data2Vec2.image(preset="tiny_test", seed=0)
model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05, global_clipnorm=4.0))
x = np.random.default_rng(0).normal(size=(6, 32, 32, 3)).astype("float32")

class KillMidEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if os.environ.get("KILL") and self.epoch == 1 and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind

callbacks = [keras.callbacks.BackupAndRestore(sys.argv[1]), KillMidEpoch()]
model.fit(keras_d2v2.ShuffledBatches(x, batch_size=2, seed=0), epochs=3, verbose=0, callbacks=callbacks)
np.savez(sys.argv[2], *[keras.ops.convert_to_numpy(v) for v in model.variables + model.optimizer.variables])
"""


def train(tmp_path, name, kill=False):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    if kill:
        env["KILL"] = "1"
    return subprocess.run(
        [sys.executable, "-c", TRAIN, str(tmp_path / f"{name}_backup"), str(tmp_path / f"{name}.npz")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_killed_run_resumes_bit_exactly(tmp_path):
    reference = train(tmp_path, "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = train(tmp_path, "resumed", kill=True)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed.npz").exists()
    resumed = train(tmp_path, "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with np.load(tmp_path / "reference.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert len(a.files) == len(b.files) > 100
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
