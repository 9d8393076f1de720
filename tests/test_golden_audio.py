"""Parity with the reference implementation on `../shared/golden/audio.npz` (two real training steps),
with the model built from the fixture's `audio_config.json`."""

import numpy as np
import pytest
from keras import ops

from keras_d2v2.layers import gather_tokens, mask_info

from conftest import assert_close
from golden_config import load_config
from golden_steps import num_trainable, reference_model, reorder_to_reference, run_two_steps

# One element of the last block's fc2-bias gradient is 1.1e-6 at step 0, 5 orders below the largest
# (0.14), so float32 round-off in summing it is 8e-8 (measured). With eps 1e-6 Adam's first step is
# lr * sqrt(1 - beta_2) * g / (sqrt(1 - beta_2) * |g| + eps), proportional to g there, so that
# round-off moves the element's step by lr * 0.14 * 8e-8 / 1e-6 = 8.5e-6: 1% of a full step.
WEIGHT_ATOL = 1e-5


@pytest.fixture(scope="module")
def config():
    return load_config("audio")


def step_inputs(model, golden, step):
    audio = golden[f"step{step}/input/source"]
    per_sample = (len(audio), model.masking.clone_batch, -1)
    # The reference's data loader precomputes the masks (compute_block_mask_1d); they are replayed here.
    mask = golden[f"step{step}/input/precomputed_mask"].reshape(per_sample)
    noise = golden[f"step{step}/mask_noise"].reshape(per_sample + (model.embed_dim,))
    return {"audio": audio, "mask": mask, "mask_noise": noise}


@pytest.fixture()
def model(config, golden_audio):
    return reference_model(config, golden_audio)


def check_forward(model, golden, step, x):
    g = lambda key: golden[f"step{step}/{key}"]  # noqa: E731
    frames = x["mask"].shape[-1]
    np.testing.assert_array_equal(x["mask"].reshape(-1, frames), g("mask"))

    local_features = model.encoder.embed(x["audio"])
    assert_close(local_features, g("local_features"), name="local_features")
    teacher_input = model.teacher.context_norm(local_features + model.teacher.relative_positions(local_features))
    assert_close(teacher_input, g("teacher_input"), name="teacher_input")
    targets = model.teacher_targets(x["audio"])
    assert_close(targets, g("targets"), name="targets")

    # The ALiBi bias is a function of the kept frames' original indices, in whatever order.
    assert_close(model.encoder.alibi(ops.convert_to_tensor(g("ids_keep"))), g("alibi_bias_masked"), name="alibi")

    mask = ops.convert_to_tensor(x["mask"].reshape(-1, frames))
    ids_keep, _ = mask_info(mask, model.masking.num_visible(frames))
    clones = ops.repeat(local_features, model.masking.clone_batch, axis=0)
    visible = gather_tokens(clones + model.encoder.relative_positions(clones, mask=mask), ids_keep)
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
    assert len(model.trainable_variables) == num_trainable(golden)


def test_two_reference_steps(model, golden_audio):
    run_two_steps(model, golden_audio, step_inputs, check_forward, weight_atol=WEIGHT_ATOL)


def test_teacher_has_no_feature_extractor(model, golden_audio):
    assert model.teacher.contextualize_only
    paths = {v.path.split("/")[1] for v in model.teacher.weights}
    assert "feature_extractor" not in paths and "feature_projection" not in paths
    assert {"conv_positions", "alibi", "context_norm", "block0"} <= paths
    with pytest.raises(ValueError, match="contextualize_only=True"):
        model.teacher.embed(golden_audio["step0/input/source"][:1])
