"""Every recipe's --smoke mode runs end to end on the active backend."""

import os
import subprocess
import sys

import keras
import pytest

from conftest import REPO
from keras_d2v2.data import FASHION_MNIST_DIR


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_pretrain_image_smoke(tmp_path):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "pretrain_image.py"), "--smoke", "--save", str(tmp_path / "m.keras"),
         "--backup", str(tmp_path / "backup")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "random init" in result.stdout and "data2vec 2.0 pre-trained" in result.stdout
    assert (tmp_path / "m.keras").exists()
    assert not (tmp_path / "backup").exists()  # resume state is removed once training has finished
