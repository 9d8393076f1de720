"""Parity with the reference implementation on `../shared/golden/image.npz` (two real training steps)."""

import keras
import numpy as np
import pytest
from keras import ops

from conftest import assert_close
from golden_steps import load_initial_weights, reorder_to_reference, run_two_steps
from keras_d2v2 import Data2Vec2
from keras_d2v2.layers import mask_info, sincos_positions_2d
from keras_d2v2.models.data2vec2 import gather_tokens

CLONES = 4


def step_inputs(golden, step):
    images = np.transpose(golden[f"step{step}/input/source"], (0, 2, 3, 1))
    batch = images.shape[0]
    mask = golden[f"step{step}/input/precomputed_mask"].reshape(batch, CLONES, -1)
    noise = golden[f"step{step}/mask_noise"].reshape(batch, CLONES, -1, 32)
    return {"images": images, "mask": mask, "mask_noise": noise}


@pytest.fixture()
def model(golden_image):
    model = Data2Vec2.image(preset="tiny_test", seed=0)
    load_initial_weights(model, golden_image)
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=1e-3, beta_1=0.9, beta_2=0.95, epsilon=1e-8, weight_decay=0.05, global_clipnorm=4.0
        )
    )
    return model


def test_sincos_positions_match_reference(golden_image):
    expected = golden_image["init/student/modality_encoders.IMAGE.fixed_positional_encoder.positions"][0]
    np.testing.assert_allclose(sincos_positions_2d(32, 8), expected, rtol=1e-6, atol=1e-6)


def check_forward(model, golden, step, x):
    g = lambda key: golden[f"step{step}/{key}"]  # noqa: E731
    sample_size = float(g("sample_size"))

    targets = model.teacher_targets(x["images"])
    assert_close(targets, g("targets"), name="targets")

    # Student encoder, compared in the reference's ids_keep order (the visible set is the same).
    tokens = model.encoder.embed(x["images"])
    mask = ops.reshape(ops.convert_to_tensor(x["mask"]), (-1, 64))
    ids_keep, _ = mask_info(mask, model.num_visible)
    hidden, _ = model.encoder.encode(gather_tokens(ops.repeat(tokens, CLONES, axis=0), ids_keep), training=True)
    assert_close(reorder_to_reference(hidden, ids_keep, g("ids_keep"), 1), g("encoder_out"), name="encoder_out")

    y_pred = model(x, training=True)
    assert_close(y_pred["prediction"], g("decoder_output"), name="decoder_output")
    assert_close(y_pred["cls"], g("cls_pred"), name="cls_pred")
    regression, cls, *_ = model.loss_terms(targets, y_pred)
    assert_close(float(regression) * sample_size, g("loss_sum/IMAGE_regression"), name="regression loss")
    assert_close(float(cls) * sample_size, g("loss_sum/cls"), name="cls loss")
    assert len(model.trainable_variables) == 49


def test_two_reference_steps(model, golden_image):
    run_two_steps(model, golden_image, step_inputs, check_forward)
