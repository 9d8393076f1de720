"""The encoder contract (`keras_d2v2.Encoder`): the three encoders share its signatures, and a new
modality that implements it trains, saves and probes through `Data2Vec2` with no change to it."""

import inspect

import keras
import numpy as np
import pytest
from keras import ops

from keras_d2v2 import (
    AudioEncoder,
    ContextualizedTargets,
    ConvDecoder1D,
    Data2Vec2,
    Encoder,
    ImageEncoder,
    RandomMasking,
    TextEncoder,
)
from keras_d2v2.evaluation import encoder_features

from conftest import assert_close

CONTRACT = ("embed", "encode", "padding_mask", "check_inputs", "teacher_config", "teacher_features",
            "relative_positions", "token_positions", "mean_pool", "call")


@pytest.mark.parametrize("encoder_class", [ImageEncoder, TextEncoder, AudioEncoder])
def test_every_encoder_has_the_contracts_signatures(encoder_class):
    def signature(method):
        # The input is named for the modality ("images", "tokens", "audio"); everything else agrees.
        return [
            ("inputs" if name == encoder_class.input_name else name, parameter.kind, parameter.default)
            for name, parameter in inspect.signature(method).parameters.items()
        ]

    for name in CONTRACT:
        assert signature(getattr(encoder_class, name)) == signature(getattr(Encoder, name)), name


@keras.saving.register_keras_serializable(package="tests")
class SequenceEncoder(Encoder):
    """A new modality: sequences of `features`-dim vectors, embedded by one Dense layer plus a
    learned position table."""

    input_name = "sequence"
    own_args = ("features", "max_length")

    def __init__(self, *, features=3, max_length=16, **kwargs):
        super().__init__(**kwargs)
        self.features, self.max_length = features, max_length
        self.num_tokens = None
        self.projection = keras.layers.Dense(self.embed_dim, name="projection")
        self.make_transformer()

    def build_feature_encoder(self):
        self.projection.build((None, None, self.features))
        self.positions = self.add_weight(shape=(self.max_length, self.embed_dim), name="positions")

    def check_inputs(self, inputs, padding_mask=None, check_values=True):
        if len(inputs.shape) != 3 or inputs.shape[-1] != self.features:
            raise ValueError(f"`sequence` must have shape (batch, length, {self.features}), got {inputs.shape}.")

    def embed(self, inputs, training=None, padding_mask=None):
        self.check_inputs(inputs, padding_mask)
        return self.projection(inputs) + self.positions[None, : inputs.shape[1]]


def sequence_model():
    return Data2Vec2(
        encoder=SequenceEncoder(features=3, embed_dim=16, depth=2, num_heads=2, seed=0, name="encoder"),
        decoder=ConvDecoder1D(decoder_dim=16, num_layers=2, kernel_size=3, groups=1, seed=1, name="decoder"),
        masking=RandomMasking(mask_prob=0.5, clone_batch=2, seed=2, name="masking"),
        targets=ContextualizedTargets(top_k=2, name="targets"),
        cls_loss_weight=0.0,
        ema_decay=0.5,
        ema_end_decay=0.5,
        seed=3,
    )


def test_a_new_modality_trains_saves_and_probes_through_the_contract(tmp_path):
    data = np.random.default_rng(0).normal(size=(8, 10, 3)).astype("float32")
    model = sequence_model()
    teacher_before = ops.convert_to_numpy(model.teacher.blocks[0].qkv.kernel)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    history = model.fit({"sequence": data}, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and int(ops.convert_to_numpy(model.num_updates)) == 2
    # The teacher follows the student by EMA: it moved away from its initial copy.
    teacher_after = ops.convert_to_numpy(model.teacher.blocks[0].qkv.kernel)
    assert not np.allclose(teacher_after, teacher_before)

    x = {"sequence": data[:2], "mask": np.tile([[[1.0] * 5 + [0.0] * 5]], (2, 2, 1)).astype("float32"),
         "mask_noise": np.zeros((2, 2, 5, 16), "float32")}
    model.save(tmp_path / "sequence.keras")
    loaded = keras.saving.load_model(tmp_path / "sequence.keras")
    assert_close(loaded(x)["prediction"], model(x)["prediction"], name="prediction after a .keras round trip")
    assert_close(loaded.teacher_targets(data[:2]), model.teacher_targets(data[:2]), name="targets")

    features = encoder_features(model.export_encoder(), data, batch_size=3)
    assert features.shape == (8, 16)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match=r"`sequence` must have shape \(batch, length, 3\)"):
        model.fit({"sequence": data[..., :2]}, batch_size=4, epochs=1, verbose=0)
