"""The bad-input catalogue (docs/errors.md): each check raises early, naming the argument and what was expected.
Checks exercised through a full model live in test_model.py and test_layers.py; this file covers the rest."""

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
    ImageEncoder,
    InverseBlockMasking,
)
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
