"""Parity with the reference implementation on `../shared/golden/image.npz` (two real training steps),
with the model built from the fixture's `image_config.json`."""

import copy
import json

import numpy as np
import pytest
from keras import ops

from keras_d2v2.layers import gather_tokens, mask_info, sincos_positions_2d

from conftest import assert_close
from golden_config import UnsupportedConfig, build_model, load_config, model_kwargs
from golden_steps import num_trainable, reference_model, reorder_to_reference, run_two_steps


@pytest.fixture(scope="module")
def config():
    return load_config("image")


def step_inputs(model, golden, step):
    images = np.transpose(golden[f"step{step}/input/source"], (0, 2, 3, 1))
    per_sample = (len(images), model.masking.clone_batch, -1)
    mask = golden[f"step{step}/input/precomputed_mask"].reshape(per_sample)
    noise = golden[f"step{step}/mask_noise"].reshape(per_sample + (model.embed_dim,))
    return {"images": images, "mask": mask, "mask_noise": noise}


@pytest.fixture()
def model(config, golden_image):
    return reference_model(config, golden_image)


def test_sincos_positions_match_reference(config, golden_image):
    image = config["model_cfg"]["modalities"]["image"]
    expected = golden_image["init/student/modality_encoders.IMAGE.fixed_positional_encoder.positions"][0]
    actual = sincos_positions_2d(image["embed_dim"], image["input_size"] // image["patch_size"])
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def check_forward(model, golden, step, x):
    g = lambda key: golden[f"step{step}/{key}"]  # noqa: E731
    sample_size = float(g("sample_size"))
    clones = model.masking.clone_batch

    targets = model.teacher_targets(x["images"])
    assert_close(targets, g("targets"), name="targets")

    # Student encoder, compared in the reference's ids_keep order (the visible set is the same).
    tokens = model.encoder.embed(x["images"])
    mask = ops.reshape(ops.convert_to_tensor(x["mask"]), (-1, model.num_tokens))
    ids_keep, _ = mask_info(mask, model.num_visible)
    hidden, _ = model.encoder.encode(gather_tokens(ops.repeat(tokens, clones, axis=0), ids_keep), training=True)
    assert_close(reorder_to_reference(hidden, ids_keep, g("ids_keep"), 1), g("encoder_out"), name="encoder_out")

    y_pred = model(x, training=True)
    assert_close(y_pred["prediction"], g("decoder_output"), name="decoder_output")
    assert_close(y_pred["cls"], g("cls_pred"), name="cls_pred")
    regression, cls, *_ = model.loss_terms(targets, y_pred)
    assert_close(float(regression) * sample_size, g("loss_sum/IMAGE_regression"), name="regression loss")
    assert_close(float(cls) * sample_size, g("loss_sum/cls"), name="cls loss")
    assert len(model.trainable_variables) == num_trainable(golden)


def test_two_reference_steps(model, golden_image):
    run_two_steps(model, golden_image, step_inputs, check_forward)


def test_model_follows_the_config_file(config, tmp_path):
    changed = copy.deepcopy(config)
    changed["model_cfg"].update(embed_dim=48, num_heads=6, depth=3)
    changed["model_cfg"]["modalities"]["image"].update(embed_dim=48, model_depth=3)
    (tmp_path / "image_config.json").write_text(json.dumps(changed))
    encoder = build_model(load_config("image", tmp_path)).encoder
    assert (encoder.embed_dim, len(encoder.blocks), encoder.blocks[0].num_heads) == (48, 3, 6)

    changed["model_cfg"]["layer_norm_first"] = True
    with pytest.raises(UnsupportedConfig, match=r"model_cfg\.layer_norm_first = True is not supported"):
        model_kwargs(changed)
