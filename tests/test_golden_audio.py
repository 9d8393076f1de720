"""Parity with the reference implementation on `../shared/golden/audio.npz` (two real training steps)."""

import keras
import numpy as np
import pytest
from keras import ops

from conftest import assert_close
from golden_steps import load_initial_weights, reorder_to_reference, run_two_steps
from keras_d2v2 import Data2Vec2
from keras_d2v2.layers import mask_info
from keras_d2v2.models.data2vec2 import gather_tokens

CLONES, FRAMES, DIM = 4, 49, 48
# One element of the last block's fc2-bias gradient is 1.1e-6 at step 0, 5 orders below the largest
# (0.14), so float32 round-off in summing it is 8e-8 (measured). With eps 1e-6 Adam's first step is
# lr * sqrt(1 - beta_2) * g / (sqrt(1 - beta_2) * |g| + eps), proportional to g there, so that
# round-off moves the element's step by lr * 0.14 * 8e-8 / 1e-6 = 8.5e-6: 1% of a full step.
WEIGHT_ATOL = 1e-5


def step_inputs(golden, step):
    audio = golden[f"step{step}/input/source"]
    # The reference's data loader precomputes the masks (compute_block_mask_1d); they are replayed here.
    mask = golden[f"step{step}/input/precomputed_mask"].reshape(len(audio), CLONES, FRAMES)
    noise = golden[f"step{step}/mask_noise"].reshape(len(audio), CLONES, -1, DIM)
    return {"audio": audio, "mask": mask, "mask_noise": noise}


@pytest.fixture()
def model(golden_audio):
    model = Data2Vec2.audio(preset="tiny_test", seed=0)
    load_initial_weights(model, golden_audio)
    # fairseq's plain Adam: decoupled weight decay on every parameter, no clipping.
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=7.5e-4, beta_1=0.9, beta_2=0.98, epsilon=1e-6, weight_decay=0.01
        )
    )
    return model


def check_forward(model, golden, step, x):
    g = lambda key: golden[f"step{step}/{key}"]  # noqa: E731
    np.testing.assert_array_equal(x["mask"].reshape(-1, FRAMES), g("mask"))

    local_features = model.encoder.embed(x["audio"])
    assert_close(local_features, g("local_features"), name="local_features")
    teacher_input = model.teacher.context_norm(local_features + model.teacher.positional_encoding(local_features))
    assert_close(teacher_input, g("teacher_input"), name="teacher_input")
    targets = model.teacher_targets(x["audio"])
    assert_close(targets, g("targets"), name="targets")

    # The ALiBi bias is a function of the kept frames' original indices, in whatever order.
    assert_close(model.encoder.alibi(ops.convert_to_tensor(g("ids_keep"))), g("alibi_bias_masked"), name="alibi")

    mask = ops.convert_to_tensor(x["mask"].reshape(-1, FRAMES))
    ids_keep, _ = mask_info(mask, model.masking.num_visible(FRAMES))
    clones = ops.repeat(local_features, CLONES, axis=0)
    visible = gather_tokens(clones + model.encoder.positional_encoding(clones, mask), ids_keep)
    prenet_out = model.encoder.context_norm(visible)
    assert_close(reorder_to_reference(prenet_out, ids_keep, g("ids_keep"), 0), g("prenet_out"), name="prenet_out")
    hidden, _ = model.encoder.encode(visible, positions=ids_keep)
    assert_close(reorder_to_reference(hidden, ids_keep, g("ids_keep"), 0), g("encoder_out"), name="encoder_out")

    y_pred = model(x, training=True)
    assert "cls" not in y_pred
    assert_close(y_pred["prediction"], g("decoder_output"), name="decoder_output")
    regression, cls, weights, *_ = model.loss_terms(targets, y_pred)
    assert float(cls) == 0.0 and float(ops.sum(weights)) == float(g("sample_size"))
    assert_close(float(regression) * float(g("sample_size")), g("loss_sum/AUDIO_regression"), name="regression loss")
    assert len(model.trainable_variables) == len(golden_trainable(golden))


def golden_trainable(golden):
    return [k for k in golden if k.startswith("step0/grad/")]


def test_two_reference_steps(model, golden_audio):
    run_two_steps(model, golden_audio, step_inputs, check_forward, weight_atol=WEIGHT_ATOL)


def test_teacher_has_no_feature_extractor(model):
    assert model.teacher.contextualize_only
    paths = {v.path.split("/")[1] for v in model.teacher.weights}
    assert "feature_extractor" not in paths and "feature_projection" not in paths
    assert {"conv_positions", "alibi", "context_norm", "block0"} <= paths
    with pytest.raises(ValueError, match="contextualize_only=True"):
        model.teacher.embed(np.zeros((1, 16000), "float32"))
