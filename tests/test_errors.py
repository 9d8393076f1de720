"""The bad-input catalogue (docs/errors.md): each check raises early, naming the argument and what was expected.
Checks exercised through a full model live in test_model.py and test_layers.py; this file covers the rest."""

import keras
import numpy as np
import pytest

from keras_d2v2 import (
    AudioEncoder,
    BlockMasking1D,
    ContextualizedTargets,
    ConvDecoder2D,
    ConvFeatureExtractor,
    ConvPositionalEncoding,
    Data2Vec2,
    EMATeacher,
    ImageClassifier,
    ImageEncoder,
    InverseBlockMasking,
    ShuffledBatches,
)
from keras_d2v2.convert import load_fairseq_weights, read_fairseq_checkpoint
from keras_d2v2.data import load_fashion_mnist, load_python_docs
from keras_d2v2.data.audio import load_asterisk_prompts
from keras_d2v2.evaluation import knn_accuracy
from keras_d2v2.layers import sincos_positions_2d

CASES = [
    (lambda: Data2Vec2.image(preset="tiny_test", decoder_width=3), r"Unknown argument\(s\) \['decoder_width'\]"),
    (lambda: Data2Vec2.image(preset="tiny_test", ema_decay=1.5), r"`ema_decay` must be in \[0, 1\] \(an EMA decay\), got 1.5"),
    (lambda: ConvDecoder2D(conv_impl="fft"), "`conv_impl` must be one of 'auto', 'native', 'grouped_matmul', 'per_group', got 'fft'"),
    (lambda: ConvDecoder2D(decoder_dim=30, groups=16), r"`groups` \(16\) must divide `decoder_dim` \(30\)"),
    (lambda: ConvDecoder2D(decoder_dim=32, groups=16)(np.zeros((1, 49, 24), "float32")), r"`groups` \(16\) must divide the token dimension \(24\)"),
    (lambda: ConvDecoder2D(decoder_dim=32, groups=4)(np.zeros((1, 50, 32), "float32")), "needs a square token grid, got 50 tokens"),
    (lambda: sincos_positions_2d(30, 4), "`embed_dim` must be divisible by 4 .* got 30"),
    (lambda: ImageEncoder(depth=0), "`depth` must be >= 1, got 0"),
    (lambda: InverseBlockMasking(mask_prob_adjust=-0.1), "`mask_prob_adjust` must be >= 0, got -0.1"),
    (lambda: ContextualizedTargets(top_k=0), "`top_k` must be an integer >= 1, got 0"),
    (lambda: EMATeacher(end_decay=2.0), r"`end_decay` must be in \[0, 1\] \(an EMA decay\), got 2.0"),
    (lambda: EMATeacher(anneal_end_step=-1), "`anneal_end_step` must be >= 0, got -1"),
    (lambda: Data2Vec2.audio(preset="tiny_test", window=3), r"Unknown argument\(s\) \['window'\] for an audio model"),
    (lambda: BlockMasking1D(mask_prob=1.0), r"`mask_prob` must be in \(0, 1\), got 1.0"),
    (lambda: BlockMasking1D(block_length=0), "`block_length` must be an integer >= 1, got 0"),
    (lambda: BlockMasking1D(mask_prob=0.001).num_visible(49), "masks no frame out of 49"),
    (lambda: ConvFeatureExtractor(feature_layers=[(32, 10)]), "`feature_layers` must be a non-empty list of \\(channels"),
    (lambda: ConvPositionalEncoding(depth=0), "`depth` must be an integer >= 1, got 0"),
    (lambda: ConvPositionalEncoding(groups=5)(np.zeros((1, 8, 48), "float32")), r"`groups` \(5\) must divide the frame dimension \(48\)"),
    (lambda: AudioEncoder(layerdrop=1.0), r"`layerdrop` must be in \[0, 1\), got 1.0"),
    (lambda: knn_accuracy(np.eye(3), np.arange(3), np.eye(3), np.arange(3), k=5), r"`k` must be in \[1, 3\], got 5"),
]


@pytest.mark.parametrize("make, message", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bad_argument_raises_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_missing_asterisk_prompts_name_the_packages(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"not found under {tmp_path} .*apt-get install asterisk-core-sounds"):
        load_asterisk_prompts(root=tmp_path)


def test_missing_dataset_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"not found in {tmp_path}. Install them with `apt-get install dataset-fashion-mnist`"):
        load_fashion_mnist(tmp_path)


def test_missing_python_docs_name_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"No \\*.rst.txt files under {tmp_path}. Install them with `apt-get install python3.11-doc`"):
        load_python_docs(tmp_path)


# ------------------------------------------------------------ issue 22, item 5: messages that were poor


def test_a_file_that_is_not_a_fairseq_checkpoint_is_named_with_what_was_expected(tmp_path):
    torch = pytest.importorskip("torch")
    expected = "expected a fairseq data2vec 2.0 checkpoint: a PyTorch file written by `torch.save` holding a dict"
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=f"random.pt is not a readable PyTorch file .*; {expected}"):
        read_fairseq_checkpoint(tmp_path / "random.pt")
    Data2Vec2.image("tiny_test", seed=0).save(tmp_path / "model.keras")
    with pytest.raises(ValueError, match="model.keras is a Keras `.keras` archive, not a fairseq .* `keras.saving.load_model`"):
        read_fairseq_checkpoint(tmp_path / "model.keras")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=f"list.pt holds a value of type list, not a dict; {expected}"):
        read_fairseq_checkpoint(tmp_path / "list.pt")
    torch.save({"model": [1, 2], "args": None}, tmp_path / "model_list.pt")
    with pytest.raises(ValueError, match=r"holds a dict with keys \['args', 'model'\], but its 'model' entry is a value "
                       "of type list, not a dict"):
        read_fairseq_checkpoint(tmp_path / "model_list.pt")
    with pytest.raises(FileNotFoundError, match="No fairseq checkpoint at .*absent.pt"):
        read_fairseq_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="`state_dict` must be a mapping of fairseq parameter names to tensors"):
        load_fairseq_weights(Data2Vec2.image("tiny_test", seed=0), [1, 2])


@pytest.mark.parametrize("empty", [np.zeros((0, 32, 32, 3), "float32"), {"images": np.zeros((0, 32, 32, 3), "float32")}],
                         ids=["array", "dict"])
def test_fit_on_no_samples_says_so(empty):
    model = Data2Vec2.image("tiny_test", seed=0)
    model.compile(optimizer="adamw")
    with pytest.raises(ValueError, match=r"`x` has no samples \(shape \(0, 32, 32, 3\)\): `fit\(\)` needs at least one"):
        model.fit(empty, verbose=0)


def test_shuffled_batches_take_numpy_integers_and_refuse_other_batch_sizes_at_once():
    x = np.zeros((5, 2), "float32")
    assert ShuffledBatches(x, batch_size=np.int64(2)).batch_size == 2 and len(ShuffledBatches(x, batch_size=np.int32(2))) == 3
    for bad in ([32], 2.0, True, "2", 0):
        with pytest.raises(ValueError, match=r"`batch_size` must be a positive integer, got"):
            ShuffledBatches(x, batch_size=bad)
    with pytest.raises(ValueError, match="`seed` must be a non-negative integer .*, got 'abc'"):
        ShuffledBatches(x, seed="abc")


class _StopAfterFirstEpoch(keras.callbacks.Callback):
    """A run interrupted once its first epoch is backed up."""

    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("interrupted")


def _interrupted_run(backup, **fit_kwargs):
    model = Data2Vec2.image("tiny_test", seed=0)
    model.compile(optimizer="adamw")
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, epochs=2, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup), _StopAfterFirstEpoch()],
                  **fit_kwargs)
    return x


def test_resuming_a_backup_of_another_model_configuration_is_refused_before_loading(tmp_path):
    backup = str(tmp_path / "backup")
    x = _interrupted_run(backup, batch_size=2)
    other = Data2Vec2.image("tiny_test", seed=0, depth=3)
    other.compile(optimizer="adamw")
    before = [keras.ops.convert_to_numpy(v) for v in other.weights]
    with pytest.raises(ValueError, match=f"The backup in {backup} was written by a different model configuration "
                       r"\(another preset or architecture: its model has \d+ weights, this one \d+\); .*delete"):
        other.fit(x, batch_size=2, epochs=2, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup)])
    for a, b in zip(before, other.weights):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))
    wider = Data2Vec2.image("tiny_test", seed=0, embed_dim=64, num_heads=4)
    wider.compile(optimizer="adamw")
    with pytest.raises(ValueError, match="different model configuration .*its weight 'encoder/cls_token' has shape"):
        wider.fit(x, batch_size=2, epochs=2, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup)])


def test_resuming_with_another_batch_size_is_refused_and_with_the_same_proceeds(tmp_path):
    backup = str(tmp_path / "backup")
    x = _interrupted_run(backup, batch_size=2)
    model = Data2Vec2.image("tiny_test", seed=0)
    model.compile(optimizer="adamw")
    with pytest.raises(ValueError, match=f"The backup in {backup} was written by a run with batch_size=2, and this "
                       "run has batch_size=4.*Pass batch_size=2"):
        model.fit(x, batch_size=4, epochs=2, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup)])
    with pytest.raises(ValueError, match="batch_size=2, and this run has batch_size=32"):  # Keras' default
        model.fit(x, epochs=2, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup)])
    history = model.fit(ShuffledBatches(x, batch_size=2), epochs=2, verbose=0,
                        callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert len(history.history["loss"]) == 1  # resumed after the backed-up epoch


@pytest.mark.parametrize("wrap", [list, tuple])
def test_fit_on_a_list_of_arrays_says_to_pass_one(wrap):
    model = Data2Vec2.image("tiny_test", seed=0)
    model.compile(optimizer="adamw")
    x = np.zeros((2, 32, 32, 3), "float32")
    with pytest.raises(ValueError, match=rf"`images` must be one array \(a batch\), got a {wrap.__name__} of 2 \(ndarray\); "
                       "stack the samples into one array"):
        model.fit(wrap([x, x]), verbose=0)


@pytest.mark.parametrize("build", [Data2Vec2.image, Data2Vec2.text, Data2Vec2.audio], ids=["image", "text", "audio"])
@pytest.mark.parametrize("seed", ["abc", 1.5, True])
def test_a_seed_that_is_not_an_integer_is_named(build, seed):
    with pytest.raises(ValueError, match=f"`seed` must be an integer or None, got {seed!r}"):
        build("tiny_test", seed=seed)
    assert Data2Vec2.image("tiny_test", seed=np.int64(3)).seed is not None


def test_a_list_of_arrays_to_the_encoder_or_the_model_is_refused_with_what_to_pass_instead():
    model = Data2Vec2.image("tiny_test", seed=0)
    x = np.zeros((2, 32, 32, 3), "float32")
    expected = r"`images` must be one array \(a batch\), got a (list|tuple) of 2 .*stack the samples into one array"
    with pytest.raises(ValueError, match=expected):
        model.encoder([x, x])
    with pytest.raises(ValueError, match=expected):
        model([x, x])
    with pytest.raises(ValueError, match=expected):
        ImageClassifier(encoder=model.export_encoder(), num_classes=3)([x, x])


def test_evaluate_before_compile_says_to_compile_first():
    model = Data2Vec2.image("tiny_test", seed=0)
    x = np.zeros((2, 32, 32, 3), "float32")
    with pytest.raises(ValueError, match=r"You must call `compile\(\)` before using the model"):
        model.evaluate(x, verbose=0)
    classifier = ImageClassifier(encoder=model.export_encoder(), num_classes=3)
    with pytest.raises(ValueError, match=r"You must call `compile\(\)` before using the model"):
        classifier.evaluate(x, np.zeros(2, "int32"), verbose=0)
