"""Parity with the reference implementation on `../shared/golden/text.npz` (two real training steps),
with the model built from the fixture's `text_config.json`."""

import numpy as np
import pytest
from keras import ops

from keras_d2v2.layers import gather_tokens, mask_info

from conftest import assert_close
from golden_config import load_config
from golden_steps import num_trainable, reference_model, reorder_to_reference, run_two_steps


@pytest.fixture(scope="module")
def config():
    return load_config("text")


def step_inputs(model, golden, step):
    tokens = golden[f"step{step}/input/source"]
    per_sample = (len(tokens), model.masking.clone_batch, -1)
    # The reference masks inside the model, seeded by (seed, update, ids); its mask is replayed here.
    mask = golden[f"step{step}/mask"].reshape(per_sample)
    noise = golden[f"step{step}/mask_noise"].reshape(per_sample + (model.embed_dim,))
    return {"tokens": tokens, "mask": mask, "mask_noise": noise}


@pytest.fixture()
def model(config, golden_text):
    return reference_model(config, golden_text)


def check_forward(model, golden, step, x):
    g = lambda key: golden[f"step{step}/{key}"]  # noqa: E731
    assert not g("input/padding_mask").any()
    length = x["tokens"].shape[1]

    local_features = model.encoder.embed(x["tokens"])
    assert_close(local_features, g("local_features"), name="local_features")
    targets = model.teacher_targets(x["tokens"])
    assert_close(targets, g("targets"), name="targets")

    mask = ops.reshape(ops.convert_to_tensor(x["mask"]), (-1, length))
    ids_keep, _ = mask_info(mask, model.masking.num_visible(length))
    clones = ops.repeat(local_features, model.masking.clone_batch, axis=0)
    hidden, _ = model.encoder.encode(gather_tokens(clones, ids_keep))
    assert_close(reorder_to_reference(hidden, ids_keep, g("ids_keep"), 0), g("encoder_out"), name="encoder_out")

    y_pred = model(x, training=True)
    assert "cls" not in y_pred
    assert_close(y_pred["prediction"], g("decoder_output"), name="decoder_output")
    regression, cls, weights, *_ = model.loss_terms(targets, y_pred)
    assert float(cls) == 0.0 and float(ops.sum(weights)) == float(g("sample_size"))
    assert_close(float(regression) * float(g("sample_size")), g("loss_sum/TEXT_regression"), name="regression loss")
    assert len(model.trainable_variables) == num_trainable(golden)


def test_two_reference_steps(model, golden_text):
    run_two_steps(model, golden_text, step_inputs, check_forward)


def test_teacher_is_the_blocks_only(model, config):
    assert model.teacher.blocks_only
    blocks = {f"block{i}" for i in range(config["model_cfg"]["depth"])}
    assert {v.path.split("/")[1] for v in model.teacher.weights} == blocks
    with pytest.raises(ValueError, match="blocks_only=True"):
        model.teacher.embed(np.ones((1, 4), "int32"))
