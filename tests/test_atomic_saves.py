"""A save that fails (here: on a really full disk, or in a writer killed mid-write) leaves the previous
file loadable, and a failure that is an exception leaves no temporary file behind: `Data2Vec2.save`,
`save_weights`, `save_to_preset`, the classifiers', the BPE tokenizer's files and the benchmarks'
appended result logs."""

import os
import subprocess
import uuid

import keras
import numpy as np
import pytest
from keras import ops

from keras_d2v2 import Data2Vec2, ImageClassifier
from keras_d2v2.atomic_write import append_atomically, replaced_atomically

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



def test_replaced_files_keep_the_mode_of_the_file_they_replace_or_get_the_umask_default(tmp_path):
    new = tmp_path / "new.json"
    with replaced_atomically(new) as tmp:
        open(tmp, "w").close()
    mask = os.umask(0o022)
    os.umask(mask)
    assert os.stat(new).st_mode & 0o777 == 0o666 & ~mask  # as `open` makes it, not mkstemp's 0600
    os.chmod(new, 0o640)
    with replaced_atomically(new) as tmp:
        open(tmp, "w").close()
    assert os.stat(new).st_mode & 0o777 == 0o640


def test_an_append_that_fails_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    log = tmp_path / "results.jsonl"
    append_atomically(log, '{"run": 1}\n')
    append_atomically(log, '{"run": 2}\n')
    assert log.read_text() == '{"run": 1}\n{"run": 2}\n'

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        append_atomically(log, '{"run": 3}\n')
    assert log.read_text() == '{"run": 1}\n{"run": 2}\n' and os.listdir(tmp_path) == ["results.jsonl"]


# ------------------------------------------------------------------------ tokenizer files

TOKENIZER_CORPUS = """
import numpy as np
words = "the model reads text and learns to predict masked tokens from their context with a teacher".split()
def corpus(seed, vocabulary=words):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(vocabulary, size=rng.integers(3, 15))) for _ in range(300)]
"""

# Saves a tokenizer of another corpus over `sys.argv[1]` and is SIGKILLed halfway through the
# `sys.argv[2]`-th file it writes: that file holds half its text when the process dies.
KILLED_TOKENIZER_SAVE = TOKENIZER_CORPUS + """
import builtins, os, signal, sys
from keras_d2v2.tokenizers import bpe
tokenizer = bpe.ByteLevelBPETokenizer.train(corpus(1), vocab_size=300)
writes = [0]

class DiesMidWrite:
    def __init__(self, file):
        self.file = file
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.file.close()
    def write(self, text):
        writes[0] += 1
        if writes[0] < int(sys.argv[2]):
            return self.file.write(text)
        self.file.write(text[: len(text) // 2])
        self.file.flush()
        os.kill(os.getpid(), signal.SIGKILL)

bpe.open = lambda path, mode="r", **kwargs: DiesMidWrite(builtins.open(path, mode, **kwargs)) if "w" in mode else builtins.open(path, mode, **kwargs)
tokenizer.save(sys.argv[1])
"""


def _tokenizer(seed, vocab_size=320, words=None):
    from keras_d2v2 import ByteLevelBPETokenizer

    scope = {}
    exec(TOKENIZER_CORPUS, scope)
    texts = scope["corpus"](seed, *([words] if words else []))
    return ByteLevelBPETokenizer.train(texts, vocab_size=vocab_size, max_length=64)


def _assert_same_tokenizer(directory, tokenizer):
    from keras_d2v2 import ByteLevelBPETokenizer

    loaded = ByteLevelBPETokenizer.load(directory)
    assert loaded.vocabulary == tokenizer.vocabulary and loaded.merges == tokenizer.merges
    assert loaded.max_length == tokenizer.max_length


@pytest.mark.parametrize("dies_in_write", [1, 2, 3], ids=["config", "vocab", "merges"])
def test_a_tokenizer_save_killed_mid_write_keeps_the_previous_files(tmp_path, dies_in_write):
    pytest.importorskip("tokenizers")
    good = _tokenizer(0)
    good.save(tmp_path / "tokenizer")
    proc = run_python(["-c", KILLED_TOKENIZER_SAVE, str(tmp_path / "tokenizer"), str(dies_in_write)],
                      env=dict(os.environ), cwd=REPO)
    assert proc.returncode == -9, proc.stderr[-2000:]
    _assert_same_tokenizer(tmp_path / "tokenizer", good)
    # The half-written file is a temporary one beside the targets, which a killed process cannot remove.
    partial = [name for name in os.listdir(tmp_path / "tokenizer") if name.startswith(".")]
    assert len(partial) == dies_in_write, partial


def test_a_tokenizer_save_on_a_full_disk_keeps_the_previous_files(small_disk):
    pytest.importorskip("tokenizers")
    good = _tokenizer(0)
    good.save(small_disk / "tokenizer")
    # Many more merges than the first: the new files do not fit even where the old ones were.
    letters = np.random.default_rng(0).integers(ord("a"), ord("z") + 1, size=(2000, 8))
    bigger = _tokenizer(1, vocab_size=3000, words=["".join(map(chr, word)) for word in letters])
    assert bigger.vocabulary_size > 2000
    fill(small_disk, leave=4096)
    with pytest.raises(OSError, match="No space left on device"):
        bigger.save(small_disk / "tokenizer")
    _assert_same_tokenizer(small_disk / "tokenizer", good)
    assert sorted(os.listdir(small_disk / "tokenizer")) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
