"""Every recipe's --smoke mode runs end to end (on PyTorch; the TPU recipe on JAX with 8 virtual devices)."""

import os

import keras
import pytest

from keras_d2v2.data import DOC_SECTIONS, FASHION_MNIST_DIR, PYTHON_DOCS_DIR
from keras_d2v2.data.audio import ASTERISK_SOUNDS_DIR, ASTERISK_VOICES

from conftest import REPO, run_python, virtual_devices_env

# The recipes' numerics are tested per backend elsewhere; their smokes cost ~1 min each, so CI runs them
# on PyTorch (the fastest backend on a CPU). KERAS_D2V2_RECIPES_ON_EVERY_BACKEND=1 runs them on any.
smoke_backend = pytest.mark.skipif(
    keras.backend.backend() != "torch" and not os.environ.get("KERAS_D2V2_RECIPES_ON_EVERY_BACKEND"),
    reason="recipe smokes run on PyTorch (set KERAS_D2V2_RECIPES_ON_EVERY_BACKEND=1 for this backend)",
)


def run_smoke(recipe, tmp_path, args=None):
    """Runs `recipes/<recipe>.py --smoke` on the active backend, saving into `tmp_path`."""
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    if args is None:
        args = ["--save", str(tmp_path / "m.keras"), "--backup", str(tmp_path / "backup")]
    result = run_python([str(REPO / "recipes" / f"{recipe}.py"), "--smoke", *args], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@smoke_backend
@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_pretrain_and_finetune_image_smoke(tmp_path):
    result = run_smoke("pretrain_image", tmp_path)
    assert "random init" in result.stdout and "data2vec 2.0 pre-trained" in result.stdout
    assert (tmp_path / "m.keras").exists()
    assert not (tmp_path / "backup").exists()  # resume state is removed once training has finished
    # The fine-tuning recipe takes what the pre-training recipe saved; with two learning rates it
    # picks each encoder's on held-out training images, by the mean over seeds.
    result = run_smoke(
        "finetune_image", tmp_path,
        ["--pretrained", str(tmp_path / "m.keras"), "--learning-rate", "1e-3", "3e-3", "--seed", "0", "1"],
    )
    assert "Fine-tuned top-1" in result.stdout
    assert "At each encoder's best validation learning rate, mean of 2 seeds" in result.stdout
    # Each seed is its own run: the random-init rows of seed 0 and seed 1 must not be copies.
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("random init ")]
    by_seed = {seed: [row[-4:-2] for row in rows if row[-5] == seed] for seed in ("0", "1")}
    assert len(by_seed["0"]) == len(by_seed["1"]) == 2 and by_seed["0"] != by_seed["1"], rows
    assert "random init" in result.stdout and "data2vec 2.0 pre-trained" in result.stdout


@smoke_backend
@pytest.mark.skipif(
    not (PYTHON_DOCS_DIR / "library").is_dir(),
    reason="Python docs sources not installed (apt-get install python3.11-doc)",
)
def test_pretrain_and_finetune_text_smoke(tmp_path):
    pytest.importorskip("tokenizers", reason="the `text` extra is not installed (pip install 'keras-d2v2[text]')")
    result = run_smoke("pretrain_text", tmp_path)
    assert "random init" in result.stdout and "data2vec 2.0 pre-trained" in result.stdout
    assert "linear probe" in result.stdout
    assert (tmp_path / "m.keras").exists() and not (tmp_path / "backup").exists()
    # The tokenizer saved beside the model gives ids the saved model takes.
    from keras_d2v2 import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer.load(tmp_path / "m_tokenizer")
    model = keras.saving.load_model(tmp_path / "m.keras")
    tokenizer.check_model(model)
    assert tuple(model.encoder(tokenizer.encode(["def f(x): return x"])).shape)[-1] == model.encoder.embed_dim
    # The fine-tuning recipe takes the model and the tokenizer beside it; with two learning rates it
    # holds out validation documents and picks each encoder's rate on their blocks.
    result = run_smoke(
        "finetune_text", tmp_path, ["--pretrained", str(tmp_path / "m.keras"), "--learning-rate", "1e-4", "1e-3"]
    )
    assert "Fine-tuned top-1: section of a block" in result.stdout
    assert "Test top-1 at each encoder's best validation learning rate: data2vec 2.0 pre-trained" in result.stdout
    validation_blocks = int(result.stdout.split(" validation blocks")[0].rsplit(" ", 1)[-1])
    assert validation_blocks >= len(DOC_SECTIONS), result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith(("random init ", "data2vec 2.0 pre-trained "))]
    assert len(rows) == 4, rows


@smoke_backend
@pytest.mark.skipif(
    not all((ASTERISK_SOUNDS_DIR / voice).is_dir() for voice in ASTERISK_VOICES),
    reason="Asterisk prompts not installed (apt-get install asterisk-core-sounds-{en,es,fr,it,ru}-wav "
    "asterisk-prompt-it-menardi-wav)",
)
def test_pretrain_and_finetune_audio_smoke(tmp_path):
    pytest.importorskip("scipy", reason="the `audio` extra is not installed (pip install 'keras-d2v2[audio]')")
    result = run_smoke("pretrain_audio", tmp_path)
    assert f"backend {keras.backend.backend()}" in result.stdout
    assert "random init" in result.stdout and "data2vec 2.0 pre-trained" in result.stdout
    assert (tmp_path / "m.keras").exists() and not (tmp_path / "backup").exists()
    result = run_smoke("finetune_audio", tmp_path, ["--pretrained", str(tmp_path / "m.keras"), "--label", "voice"])
    assert "Fine-tuned top-1, voice of segments of held-out prompts" in result.stdout
    assert "frozen" in result.stdout and "trained" in result.stdout


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution runs on JAX")
@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_pretrain_image_tpu_smoke_on_a_model_parallel_mesh(tmp_path):
    # 8 virtual CPU devices stand in for a TPU host: a 4 x 2 (data x model) mesh in bfloat16.
    env = virtual_devices_env(8)
    result = run_python([str(REPO / "recipes" / "pretrain_image_tpu.py"), "--smoke", "--model-parallel", "2",
                         "--save", str(tmp_path / "m.keras")], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 devices" in result.stdout and "ModelParallel, data axis 4, dtype mixed_bfloat16" in result.stdout
    assert "k-NN (k=20, cosine)" in result.stdout and (tmp_path / "m.keras").exists()


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution runs on JAX")
def test_pretrain_image_tpu_on_an_image_folder(tmp_path):
    # The --image-folder path: 40 RGB images of mixed sizes, the reference's augmentation in tf.data,
    # 2 whole batches of 16 on one device with the 32 px `tiny_test` preset.
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for i in range(40):
        shape = (int(rng.integers(24, 60)), int(rng.integers(24, 60)), 3)
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        tf.io.write_file(str(tmp_path / "images" / f"{i}.png"), tf.io.encode_png(image))
    env = dict(os.environ, KERAS_BACKEND="jax")
    result = run_python([str(REPO / "recipes" / "pretrain_image_tpu.py"), "--smoke", "--preset", "tiny_test",
                         "--image-folder", str(tmp_path / "images"), "--save", str(tmp_path / "m.keras")], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 epochs of 2 steps of 16 images" in result.stdout
    loss = float(result.stdout.split("final loss ")[1].split()[0])
    assert np.isfinite(loss) and (tmp_path / "m.keras").exists()
