"""Files saved by keras_d2v2 before the package was restructured (tests/legacy, written at commit
70434b0 by tests/legacy/make_legacy_models.py) still load and compute what they computed then."""

import os

import keras
import numpy as np
import pytest

from keras_d2v2 import Data2Vec2

from conftest import assert_close

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "legacy")


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(os.path.join(LEGACY, "expected.npz")))


def check_model(model, expected, name):
    prefix = f"{name}/input/"
    x = {k[len(prefix) :]: v for k, v in expected.items() if k.startswith(prefix)}
    assert int(keras.ops.convert_to_numpy(model.num_updates)) == int(expected[f"{name}/num_updates"])
    assert model.optimizer is not None and int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1
    outputs = model(x, training=False)
    assert_close(outputs["prediction"], expected[f"{name}/prediction"], name=f"{name} prediction")
    source = x[model.encoder.input_name]
    targets = model.teacher_targets(source, padding_mask=x.get("padding_mask"))
    assert_close(targets, expected[f"{name}/targets"], name=f"{name} targets")


@pytest.mark.parametrize("name", ["image", "image_mto", "text", "audio"])
def test_pretraining_model_saved_before_the_restructuring_loads(name, expected):
    model = keras.saving.load_model(os.path.join(LEGACY, f"{name}.keras"))
    assert isinstance(model, Data2Vec2)
    check_model(model, expected, name)


def test_preset_directory_saved_before_the_restructuring_loads(expected):
    model = Data2Vec2.from_preset(os.path.join(LEGACY, "text_preset"))
    outputs = model(
        {k.split("/")[-1]: v for k, v in expected.items() if k.startswith("text/input/")}, training=False
    )
    assert_close(outputs["prediction"], expected["text/prediction"], name="preset prediction")


@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_classifier_saved_before_the_restructuring_loads(modality, expected):
    classifier = keras.saving.load_model(os.path.join(LEGACY, f"{modality}_classifier.keras"))
    source = expected[f"{modality}/input/{classifier.encoder.input_name}"]
    if modality == "audio":
        source = {"audio": source, "padding_mask": expected["audio/input/padding_mask"]}
    assert_close(classifier(source, training=False), expected[f"{modality}_classifier/logits"], name="logits")
