"""Presets: every published configuration by name, and preset directories that restore a model exactly."""

import json

import keras
import numpy as np
import pytest
from keras import ops

import keras_d2v2
from keras_d2v2 import Data2Vec2
from keras_d2v2.presets import preset_names
from keras_d2v2.pretraining.preset_io import from_preset, save_to_preset

PUBLISHED = {"image_base", "image_large", "image_huge", "audio_base", "audio_large", "text_base", "text_large"}


def inputs(n=2):
    masking = keras_d2v2.InverseBlockMasking(mask_prob=0.8, clone_batch=4, seed=3)
    mask = ops.convert_to_numpy(masking(np.zeros((n, 64, 1), "float32"))).reshape(n, 4, 64)
    return {"images": np.random.default_rng(0).normal(size=(n, 32, 32, 3)).astype("float32"), "mask": mask}


def test_every_published_configuration_has_a_name():
    names = set(preset_names())
    assert PUBLISHED <= names
    assert {"image_tiny", "text_tiny", "audio_tiny"} <= names


def test_text_large_normalizes_targets_as_the_reference():
    # large_text_only_task: LayerNorm per layer, instance norm of the average (base: instance norm per layer).
    large, base = keras_d2v2.presets.TEXT_PRESETS["large"], keras_d2v2.presets.TEXT_PRESETS["base"]
    targets = large["targets"]
    assert (targets["layer_norm_target_layer"], targets["instance_norm_target_layer"], targets["instance_norm_targets"]) == (
        True, False, True)
    encoder = large["encoder"]
    assert (encoder["embed_dim"], encoder["depth"], encoder["num_heads"], targets["top_k"]) == (1024, 24, 16, 24)
    assert base["targets"]["instance_norm_target_layer"] and not base["targets"]["layer_norm_target_layer"]
    # Built at a tiny size (the flags are the point): what the preset says reaches the model.
    model = Data2Vec2.text("large", vocab_size=50, embed_dim=16, depth=2, num_heads=2, top_k=2, decoder_dim=16)
    assert (model.targets.layer_norm_target_layer, model.targets.instance_norm_targets) == (True, True)
    assert not model.targets.instance_norm_target_layer


def test_audio_large_is_the_references_large_audio_config():
    # large_audio_only_task.yaml: no layerdrop at all, and the composite optimizer that keeps 1-D
    # weights out of weight decay (base uses plain Adam, which decays every weight).
    presets = keras_d2v2.presets.AUDIO_PRESETS
    large, base = presets["large"], presets["base"]
    assert (large["encoder"]["prenet_depth"], large["encoder"]["depth"], large["masking"]["clone_batch"]) == (8, 16, 12)
    # Built at a tiny size: what the presets say reaches the model.
    tiny = dict(feature_layers=((8, 10, 5),) + ((8, 3, 2),) * 4 + ((8, 2, 2),) * 2, embed_dim=16, depth=2,
                prenet_depth=1, num_heads=2, top_k=2, decoder_dim=16, decoder_groups=2, conv_pos_width=6,
                conv_pos_groups=2)
    large = Data2Vec2.audio("large", **tiny)
    assert (large.encoder.layerdrop, large.encoder.prenet_layerdrop, large.decay_1d_weights) == (0.0, 0.0, False)
    base = Data2Vec2.audio("base", **tiny)
    assert (base.encoder.layerdrop, base.encoder.prenet_layerdrop, base.decay_1d_weights) == (0.05, 0.05, True)


def test_every_section_argument_can_be_overridden_by_flat_name_or_by_section():
    model = Data2Vec2.image(
        "tiny_test", decay_1d_weights=True, depth=3, decoder_layers=2, decoder_kernel=5, mask_prob=0.7, top_k=3,
        masking={"block_length": 2}, seed=0,
    )
    assert model.decay_1d_weights and model.encoder.depth == 3 and model.targets.top_k == 3
    assert (model.decoder.num_layers, model.decoder.kernel_size) == (2, 5)
    assert (model.masking.mask_prob, model.masking.block_length) == (0.7, 2)
    assert Data2Vec2.audio("tiny_test", inverse_mask=True).masking.inverse
    with pytest.raises(ValueError, match=r"Unknown argument\(s\) \['inverse_mask'\] for an image model"):
        Data2Vec2.image("tiny_test", inverse_mask=True)
    with pytest.raises(ValueError, match=r"Unknown argument\(s\) \['depth'\] for the decoder of a text model"):
        Data2Vec2.text("tiny_test", decoder={"depth": 2})


def test_presets_are_data():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(keras_d2v2.presets))
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    for modality, table in keras_d2v2.presets.PRESETS.items():
        for name, preset in table.items():
            assert set(preset) == set(keras_d2v2.presets.SECTIONS), (modality, name)


def test_a_builtin_name_builds_the_same_model_as_the_modality_builder():
    keras.utils.set_random_seed(0)
    by_name = from_preset("image_tiny_test", seed=0, cls_loss_weight=0.5)
    keras.utils.set_random_seed(0)
    direct = Data2Vec2.image("tiny_test", seed=0, cls_loss_weight=0.5)
    assert {**by_name.get_config(), "name": None} == {**direct.get_config(), "name": None}
    for a, b in zip(by_name.weights, direct.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    assert Data2Vec2.from_preset("text_tiny_test").encoder.input_name == "tokens"


@pytest.mark.parametrize("preset", ["image_tiny_test", "audio_tiny_test", "text_tiny_test"])
def test_the_seed_alone_fixes_the_initial_weights(preset):
    def initial_weights(global_seed, seed):
        keras.utils.set_random_seed(global_seed)
        model = from_preset(preset, seed=seed)
        return {w.path: ops.convert_to_numpy(w) for w in model.trainable_weights}

    first, again, other = initial_weights(1, seed=0), initial_weights(2, seed=0), initial_weights(1, seed=1)
    assert first.keys() == again.keys() == other.keys()
    random = [path for path, value in first.items() if value.std() > 0]  # not the constant-initialized ones
    assert len(random) >= 10
    for path in first:
        np.testing.assert_array_equal(first[path], again[path], err_msg=path)
    for path in random:
        assert not np.array_equal(first[path], other[path]), path
    # No two weights start from the same values (a shared seeded initializer would do that).
    flat = {path: first[path].ravel()[:64].tobytes() for path in random}
    assert len(set(flat.values())) == len(flat)


def test_preset_directory_restores_a_trained_model_exactly(tmp_path):
    keras.utils.set_random_seed(0)
    model = Data2Vec2.image("tiny_test", seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.fit(inputs(), batch_size=2, epochs=2, verbose=0)  # teacher and student now differ
    model.save_to_preset(tmp_path / "preset")

    restored = Data2Vec2.from_preset(tmp_path / "preset")
    as_json = lambda m: json.loads(json.dumps(m.get_config()))  # noqa: E731  (tuples become lists)
    assert as_json(restored) == as_json(model)
    assert len(restored.weights) == len(model.weights)
    for a, b in zip(restored.weights, model.weights):
        assert a.path.split("/", 1)[1] == b.path.split("/", 1)[1]
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    x = inputs()
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored(x)["prediction"]), ops.convert_to_numpy(model(x)["prediction"]), rtol=1e-6, atol=1e-6
    )
    metadata = json.loads((tmp_path / "preset" / "metadata.json").read_text())
    assert metadata["modality"] == "images"
    assert metadata["encoder_parameters"] == model.encoder.count_params()
    assert metadata["keras_d2v2_version"] == keras_d2v2.__version__


def test_bad_presets_say_what_exists(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown preset 'image_giant'.*built-in presets: \[.*'image_base'"):
        from_preset("image_giant")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json; write it with `save_to_preset`"):
        from_preset(tmp_path / "empty")
    save_to_preset(Data2Vec2.image("tiny_test", seed=0), tmp_path / "p")
    with pytest.raises(ValueError, match=r"settings \['seed'\] cannot be changed"):
        from_preset(tmp_path / "p", seed=1)
