"""Reading reference checkpoints: real `.pt` files, the `_ema` teacher, mismatches, unsafe pickles."""

import argparse
import os
import pickle

import numpy as np
import pytest

from keras_d2v2 import Data2Vec2
from keras_d2v2.convert import load_fairseq_weights, read_fairseq_checkpoint

from conftest import assert_close
from golden_steps import weights

torch = pytest.importorskip("torch")


def fairseq_checkpoint(golden, path):
    """A file laid out like fairseq's: student + `_ema` under "model", plus pickled config objects."""
    model = {k: torch.from_numpy(v) for k, v in weights(golden, "init/student/").items()}
    model["_ema"] = {k: torch.from_numpy(v) for k, v in weights(golden, "init/teacher/").items()}
    torch.save({"model": model, "args": argparse.Namespace(arch="data2vec_multi"), "optimizer_history": []}, path)


def test_reads_fairseq_checkpoint_with_teacher(golden_image, tmp_path):
    path = tmp_path / "checkpoint.pt"
    fairseq_checkpoint(golden_image, path)
    state = read_fairseq_checkpoint(path)
    model = load_fairseq_weights(Data2Vec2.image(preset="tiny_test"), state)
    images = np.transpose(golden_image["step0/input/source"], (0, 2, 3, 1))
    assert_close(model.teacher_targets(images), golden_image["step0/targets"])


def test_mismatched_state_dict_names_the_problem(golden_image):
    state = weights(golden_image, "init/student/")
    with pytest.raises(ValueError, match="has shape .* build the model with the checkpoint's sizes"):
        load_fairseq_weights(Data2Vec2.image(preset="tiny_test", decoder_dim=64, decoder_groups=4), state)
    del state["blocks.0.norm1.weight"]
    with pytest.raises(ValueError, match=r"missing \['blocks.0.norm1.weight'\]"):
        load_fairseq_weights(Data2Vec2.image(preset="tiny_test"), state)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _Exploit()}, path)
    state = read_fairseq_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
    np.testing.assert_array_equal(state["w"].numpy(), [0.0, 0.0])
    # A plain pickle (not a torch zip) is refused outright rather than executed.
    with open(tmp_path / "plain.pt", "wb") as f:
        pickle.dump(_Exploit(), f)
    with pytest.raises(Exception):
        read_fairseq_checkpoint(tmp_path / "plain.pt")
    assert not (tmp_path / "PWNED").exists()



@pytest.mark.parametrize("damage", ["shape", "nan", "integer"])
def test_a_refused_state_dict_changes_nothing(golden_image, damage):
    model = Data2Vec2.image(preset="tiny_test", seed=0)
    before = [np.array(w) for w in model.get_weights()]
    student, teacher = weights(golden_image, "init/student/"), weights(golden_image, "init/teacher/")
    # The last teacher weight is checked after every student weight has been converted.
    name = list(teacher)[-1]
    teacher[name] = {
        "shape": np.zeros((3,), "float32"),
        "nan": np.full_like(teacher[name], np.nan),
        "integer": teacher[name].astype("int64"),
    }[damage]
    message = {"shape": "has shape", "nan": "holds NaN or inf", "integer": "has dtype int64; expected floating-point"}
    with pytest.raises(ValueError, match=f"teacher weight {name!r} {message[damage]}"):
        load_fairseq_weights(model, student, teacher)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
