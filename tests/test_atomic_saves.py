"""A save that fails (here: on a really full disk) leaves the previous file loadable, and leaves no
temporary file behind: `Data2Vec2.save`, `save_weights`, `save_to_preset` and the classifiers'."""

import os
import subprocess
import uuid

import keras
import numpy as np
import pytest
from keras import ops

from keras_d2v2 import Data2Vec2, ImageClassifier
from keras_d2v2.atomic_write import replaced_atomically

from conftest import REPO, run_python


@pytest.fixture()
def small_disk(tmp_path):
    """A 4 MiB tmpfs, mounted for the test (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(disk, leave=16 * 1024):
    """Fills `disk` up to `leave` bytes."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


# Saves over files on a full disk, in a process of its own: HDF5 crashes the process (SIGSEGV)
# when it cannot flush a weights file, so the failure is either an OSError or a dead writer.
FAILING_SAVE = """
import sys
import keras, numpy as np
from keras_d2v2 import Data2Vec2
model = Data2Vec2.image("tiny_test", seed=0)
model.compile(optimizer=keras.optimizers.AdamW(1e-3))
model.fit(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32"), batch_size=2, verbose=0)
disk, what = sys.argv[1], sys.argv[2]
{"keras": lambda: model.save(disk + "/model.keras"),
 "weights": lambda: model.save_weights(disk + "/model.weights.h5"),
 "preset": lambda: model.save_to_preset(disk + "/preset")}[what]()
"""


def first_weight(model):
    return ops.convert_to_numpy(model.encoder.blocks[0].qkv.kernel)


@pytest.mark.parametrize("what", ["keras", "weights", "preset"])
def test_a_failed_save_on_a_full_disk_keeps_the_previous_files(small_disk, what):
    model = Data2Vec2.image("tiny_test", seed=0)
    good = first_weight(model)
    {"keras": lambda: model.save(small_disk / "model.keras"),
     "weights": lambda: model.save_weights(small_disk / "model.weights.h5"),
     "preset": lambda: model.save_to_preset(small_disk / "preset")}[what]()
    fill(small_disk)

    proc = run_python(["-c", FAILING_SAVE, str(small_disk), what], env=dict(os.environ), cwd=REPO)
    assert proc.returncode != 0, "the save should have run out of space"
    assert proc.returncode < 0 or "No space left on device" in proc.stderr, proc.stderr[-2000:]

    if what == "keras":
        restored = keras.saving.load_model(small_disk / "model.keras")
    elif what == "weights":
        restored = Data2Vec2.image("tiny_test", seed=1)
        restored.load_weights(small_disk / "model.weights.h5")
    else:
        restored = Data2Vec2.from_preset(small_disk / "preset")
    np.testing.assert_array_equal(first_weight(restored), good)
    if proc.returncode > 0:  # an exception, not a crash: nothing temporary is left behind
        names = os.listdir(small_disk) + (os.listdir(small_disk / "preset") if what == "preset" else [])
        assert [name for name in names if name.startswith(".")] == []


def test_a_classifier_save_that_fails_keeps_the_previous_file(tmp_path, monkeypatch):
    classifier = ImageClassifier(encoder=Data2Vec2.image("tiny_test", seed=0).export_encoder(), num_classes=3)
    classifier.save(tmp_path / "classifier.keras")
    before = (tmp_path / "classifier.keras").read_bytes()

    def failing_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", failing_save)
    with pytest.raises(OSError):
        classifier.save(tmp_path / "classifier.keras")
    assert (tmp_path / "classifier.keras").read_bytes() == before
    assert os.listdir(tmp_path) == ["classifier.keras"]


def test_replaced_atomically_keeps_the_ending_and_cleans_up(tmp_path):
    target = tmp_path / "a.weights.h5"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replaced_atomically(target) as tmp:
            assert tmp.endswith(".weights.h5") and os.path.dirname(tmp) == str(tmp_path)
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.weights.h5"]
    with replaced_atomically(target) as tmp:
        with open(tmp, "w") as f:
            f.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["a.weights.h5"]
