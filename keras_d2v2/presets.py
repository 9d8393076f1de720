"""Named image, text and audio configurations: the reference's published ones, and tiny ones for tests and CPUs;
preset directories (a saved model's config and weights) in the keras-hub manner."""

import json
import os

import keras

from keras_d2v2.layers.block_masking_1d import BlockMasking1D
from keras_d2v2.layers.contextualized_targets import ContextualizedTargets
from keras_d2v2.layers.conv_feature_extractor import BASE_FEATURE_LAYERS
from keras_d2v2.layers.conv_decoder import ConvDecoder1D, ConvDecoder2D
from keras_d2v2.layers.inverse_block_masking import InverseBlockMasking
from keras_d2v2.layers.random_masking import RandomMasking
from keras_d2v2.models.audio_encoder import AudioEncoder
from keras_d2v2.models.data2vec2 import Data2Vec2
from keras_d2v2.models.image_encoder import ImageEncoder
from keras_d2v2.models.text_encoder import TextEncoder

_IMAGE_COMMON = dict(
    image_size=224, patch_size=16, channels=3, mlp_ratio=4.0, norm_eps=1e-6,
    mask_prob=0.8, block_length=3, mask_prob_adjust=0.07, clone_batch=16,
    decoder_groups=16, decoder_residual=True, decoder_input_dropout=0.0,
    instance_norm_target_layer=True, layer_norm_targets=True,
    mask_noise_std=0.01, cls_loss_weight=0.01,
    ema_decay=0.9998, ema_end_decay=0.99999, ema_anneal_end_step=100_000,
    min_target_var=0.0, min_pred_var=0.0,
)

IMAGE_PRESETS = {
    # examples/data2vec/config/v2/base_images_only_task.yaml
    "base": dict(_IMAGE_COMMON, embed_dim=768, depth=10, prenet_depth=2, num_heads=12, top_k=10,
                 decoder_dim=768, decoder_kernel=3, decoder_layers=6),
    # large_images_only_task.yaml
    "large": dict(_IMAGE_COMMON, embed_dim=1024, depth=24, prenet_depth=0, num_heads=16, top_k=18,
                  mask_prob=0.75, mask_prob_adjust=0.1, decoder_dim=1024, decoder_kernel=5, decoder_layers=3,
                  ema_anneal_end_step=150_000),
    # huge_images_only_task.yaml
    "huge": dict(_IMAGE_COMMON, embed_dim=1280, depth=32, prenet_depth=0, num_heads=16, top_k=24,
                 mask_prob=0.75, mask_prob_adjust=0.1, decoder_dim=1024, decoder_kernel=5, decoder_layers=3,
                 ema_end_decay=0.99995, ema_anneal_end_step=150_000),
    # A tiny ViT for Fashion-MNIST on a CPU (recipes/pretrain_image.py).
    "tiny": dict(_IMAGE_COMMON, image_size=28, patch_size=4, channels=1, embed_dim=64, depth=4, prenet_depth=1,
                 num_heads=4, top_k=4, clone_batch=4, mask_prob=0.75, mask_prob_adjust=0.07,
                 decoder_dim=64, decoder_kernel=3, decoder_layers=3, decoder_groups=4,
                 ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=3000),
    # The golden fixture's model (../shared/golden/image_config.json); for tests.
    "tiny_test": dict(_IMAGE_COMMON, image_size=32, patch_size=4, embed_dim=32, depth=2, prenet_depth=1,
                      num_heads=4, top_k=2, clone_batch=4, decoder_dim=32, decoder_groups=4, decoder_kernel=3,
                      decoder_layers=3, ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10),
}

_ENCODER_KEYS = ("image_size", "patch_size", "channels", "embed_dim", "depth", "prenet_depth", "num_heads",
                 "mlp_ratio", "norm_eps", "layer_norm_first", "dropout", "attention_dropout",
                 "activation_dropout", "post_mlp_dropout", "prenet_dropout", "drop_path_rate")
_MODEL_KEYS = ("mask_noise_std", "loss_scale", "cls_loss_weight", "ema_decay", "ema_end_decay",
               "ema_anneal_end_step", "min_target_var", "min_pred_var", "collapse_check_after",
               # Masked token optimization (docs/mto.md); no preset sets these: off is the reference.
               "student_mode", "mask_fill", "attention_recalibration", "singularity_loss_weight",
               "entropy_loss_weight", "entropy_sign", "depth_weighting")
_OTHER_KEYS = ("mask_prob", "block_length", "mask_prob_adjust", "clone_batch", "decoder_dim", "decoder_layers",
               "decoder_kernel", "decoder_groups", "decoder_residual", "decoder_input_dropout", "top_k",
               "instance_norm_target_layer", "layer_norm_target_layer", "layer_norm_targets",
               "instance_norm_targets", "seed", "dtype")


def _config(presets, preset, overrides, allowed, modality):
    if preset is None:
        config = dict(presets["base"])
    elif preset in presets:
        config = dict(presets[preset])
    else:
        raise ValueError(f"Unknown {modality} preset {preset!r}; available: {sorted(presets)}.")
    unknown = set(overrides) - set(allowed)
    if unknown:
        article = "an" if modality[0] in "aeiou" else "a"
        raise ValueError(f"Unknown argument(s) {sorted(unknown)} for {article} {modality} model.")
    config.update(overrides)
    seed = config.get("seed")
    return config, (lambda k: None if seed is None else seed + k)


def _targets(config):
    return ContextualizedTargets(
        top_k=config["top_k"],
        instance_norm_target_layer=config.get("instance_norm_target_layer", False),
        layer_norm_target_layer=config.get("layer_norm_target_layer", False),
        layer_norm_targets=config.get("layer_norm_targets", False),
        instance_norm_targets=config.get("instance_norm_targets", False),
        name="targets",
    )


def image_model(preset=None, **overrides):
    """Builds an image `Data2Vec2` from a preset name and/or flat keyword arguments."""
    config, offset = _config(IMAGE_PRESETS, preset, overrides, _ENCODER_KEYS + _MODEL_KEYS + _OTHER_KEYS, "image")
    dtype = config.get("dtype")

    return Data2Vec2(
        encoder=ImageEncoder(**{k: config[k] for k in _ENCODER_KEYS if k in config}, seed=offset(100), dtype=dtype, name="encoder"),
        decoder=ConvDecoder2D(
            decoder_dim=config["decoder_dim"], num_layers=config["decoder_layers"], kernel_size=config["decoder_kernel"],
            groups=config["decoder_groups"], residual=config["decoder_residual"],
            input_dropout=config["decoder_input_dropout"], seed=offset(50), dtype=dtype, name="decoder",
        ),
        masking=InverseBlockMasking(
            mask_prob=config["mask_prob"], block_length=config["block_length"],
            mask_prob_adjust=config["mask_prob_adjust"], clone_batch=config["clone_batch"], seed=offset(1),
            name="masking",
        ),
        targets=_targets(config),
        **{k: config[k] for k in _MODEL_KEYS if k in config},
        seed=offset(2),
        dtype=dtype,
    )


_TEXT_COMMON = dict(
    vocab_size=50265, max_positions=512, pad_id=1, mlp_ratio=4.0, norm_eps=1e-5,
    dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, post_mlp_dropout=0.1, embedding_dropout=0.1,
    mask_prob=0.48, clone_batch=8,
    decoder_groups=1, decoder_residual=False, decoder_projection_layers=2, decoder_projection_ratio=2.0,
    decoder_input_dropout=0.1, instance_norm_target_layer=True,
    mask_noise_std=0.01, loss_scale=1.0, cls_loss_weight=0.0,
    ema_decay=0.9999, ema_end_decay=0.99999, ema_anneal_end_step=100_000,
    min_target_var=0.1, min_pred_var=0.01,
)

TEXT_PRESETS = {
    # examples/data2vec/config/v2/base_text_only_task.yaml (RoBERTa's GPT-2 BPE vocabulary + <mask>)
    "base": dict(_TEXT_COMMON, embed_dim=768, depth=12, num_heads=12, top_k=12,
                 decoder_dim=768, decoder_kernel=9, decoder_layers=5),
    # large_text_only_task.yaml: per-layer LayerNorm then a final instance norm of the averaged
    # targets; settings the spec does not list (the decoder among them) are base's.
    "large": dict(_TEXT_COMMON, embed_dim=1024, depth=24, num_heads=16, top_k=24, mask_prob=0.5,
                  instance_norm_target_layer=False, layer_norm_target_layer=True, instance_norm_targets=True,
                  decoder_dim=768, decoder_kernel=9, decoder_layers=5),
    # A tiny text model for a CPU (recipes/pretrain_text.py): 8k BPE ids, blocks of 128 tokens.
    "tiny": dict(_TEXT_COMMON, vocab_size=8192, max_positions=128, embed_dim=128, depth=4, num_heads=4, top_k=4,
                 clone_batch=2, decoder_dim=128, decoder_kernel=5, decoder_layers=2,
                 ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=1000),
    # The golden fixture's model (../shared/golden/text_config.json); for tests.
    "tiny_test": dict(_TEXT_COMMON, vocab_size=100, max_positions=32, embed_dim=32, depth=2, num_heads=4, top_k=2,
                      clone_batch=2, decoder_dim=32, decoder_kernel=9, decoder_layers=2, decoder_input_dropout=0.0,
                      dropout=0.0, attention_dropout=0.0, post_mlp_dropout=0.0, embedding_dropout=0.0,
                      ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10),
}

_TEXT_ENCODER_KEYS = ("vocab_size", "max_positions", "pad_id", "embed_dim", "depth", "num_heads", "mlp_ratio",
                      "norm_eps", "layer_norm_first", "dropout", "attention_dropout", "activation_dropout",
                      "post_mlp_dropout", "embedding_dropout", "drop_path_rate")
_TEXT_OTHER_KEYS = ("mask_prob", "clone_batch", "decoder_dim", "decoder_layers", "decoder_kernel", "decoder_groups",
                    "decoder_residual", "decoder_projection_layers", "decoder_projection_ratio",
                    "decoder_input_dropout", "top_k", "instance_norm_target_layer", "layer_norm_target_layer",
                    "layer_norm_targets", "instance_norm_targets", "seed", "dtype")


def text_model(preset=None, **overrides):
    """Builds a text `Data2Vec2` from a preset name and/or flat keyword arguments."""
    config, offset = _config(TEXT_PRESETS, preset, overrides, _TEXT_ENCODER_KEYS + _MODEL_KEYS + _TEXT_OTHER_KEYS, "text")
    dtype = config.get("dtype")
    return Data2Vec2(
        encoder=TextEncoder(**{k: config[k] for k in _TEXT_ENCODER_KEYS if k in config}, seed=offset(100), dtype=dtype,
                            name="encoder"),
        decoder=ConvDecoder1D(
            decoder_dim=config["decoder_dim"], num_layers=config["decoder_layers"], kernel_size=config["decoder_kernel"],
            groups=config["decoder_groups"], residual=config["decoder_residual"],
            projection_layers=config["decoder_projection_layers"], projection_ratio=config["decoder_projection_ratio"],
            input_dropout=config["decoder_input_dropout"], seed=offset(50), dtype=dtype, name="decoder",
        ),
        masking=RandomMasking(mask_prob=config["mask_prob"], clone_batch=config["clone_batch"], seed=offset(1),
                              name="masking"),
        targets=_targets(config),
        **{k: config[k] for k in _MODEL_KEYS if k in config},
        seed=offset(2),
        dtype=dtype,
    )


_AUDIO_COMMON = dict(
    feature_layers=BASE_FEATURE_LAYERS, prenet_depth=0, mlp_ratio=4.0, norm_eps=1e-5,
    dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, post_mlp_dropout=0.1, prenet_dropout=0.1,
    layerdrop=0.05, prenet_layerdrop=0.05, conv_pos_width=95, conv_pos_depth=5, conv_pos_groups=16,
    mask_prob=0.5, block_length=5, mask_prob_adjust=0.05, clone_batch=8,
    decoder_groups=16, decoder_kernel=7, decoder_layers=4, decoder_residual=True, decoder_input_dropout=0.1,
    instance_norm_target_layer=True, mask_noise_std=0.01, loss_scale=None, cls_loss_weight=0.0,
    ema_decay=0.999, ema_end_decay=0.99999, ema_anneal_end_step=75_000,
    min_target_var=0.1, min_pred_var=0.01,
    # base_audio_only_task uses plain Adam, whose weight decay covers every parameter.
    decay_1d_weights=True,
)

AUDIO_PRESETS = {
    # examples/data2vec/config/v2/base_audio_only_task.yaml (LibriSpeech 960 h, 16 kHz)
    "base": dict(_AUDIO_COMMON, embed_dim=768, depth=12, num_heads=12, top_k=8, decoder_dim=384),
    # large_audio_only_task.yaml (Libri-light); settings the spec does not list are base's.
    "large": dict(_AUDIO_COMMON, embed_dim=1024, depth=16, prenet_depth=8, num_heads=16, top_k=16, clone_batch=12,
                  mask_prob=0.55, mask_prob_adjust=0.1, decoder_dim=768,
                  ema_decay=0.9997, ema_end_decay=1.0, ema_anneal_end_step=300_000),
    # A tiny speech model for a CPU (recipes/pretrain_audio.py): 64 conv channels, 1 s segments.
    "tiny": dict(_AUDIO_COMMON, feature_layers=((64, 10, 5),) + ((64, 3, 2),) * 4 + ((64, 2, 2),) * 2,
                 embed_dim=128, depth=4, num_heads=4, top_k=4, clone_batch=4, decoder_dim=64, decoder_groups=8,
                 ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=2000),
    # The golden fixture's model (../shared/golden/audio_config.json); for tests.
    "tiny_test": dict(_AUDIO_COMMON, feature_layers=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2,
                      embed_dim=48, depth=3, num_heads=6, top_k=2, clone_batch=4, conv_pos_width=25,
                      conv_pos_groups=4, decoder_dim=24, decoder_groups=4, decoder_input_dropout=0.0,
                      dropout=0.0, attention_dropout=0.0, post_mlp_dropout=0.0, prenet_dropout=0.0,
                      layerdrop=0.0, prenet_layerdrop=0.0, ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10),
}

_AUDIO_ENCODER_KEYS = ("feature_layers", "embed_dim", "depth", "prenet_depth", "num_heads", "mlp_ratio", "norm_eps",
                       "layer_norm_first", "dropout", "attention_dropout", "activation_dropout", "post_mlp_dropout",
                       "prenet_dropout", "layerdrop", "prenet_layerdrop", "drop_path_rate", "conv_pos_width",
                       "conv_pos_depth", "conv_pos_groups", "learned_alibi_scale", "normalize_waveform",
                       "sample_rate")
_AUDIO_OTHER_KEYS = ("mask_prob", "block_length", "mask_prob_adjust", "inverse_mask", "clone_batch", "decoder_dim",
                     "decoder_layers", "decoder_kernel", "decoder_groups", "decoder_residual", "decoder_input_dropout",
                     "top_k", "instance_norm_target_layer", "layer_norm_target_layer", "layer_norm_targets",
                     "instance_norm_targets", "decay_1d_weights", "seed", "dtype")


def audio_model(preset=None, **overrides):
    """Builds an audio `Data2Vec2` from a preset name and/or flat keyword arguments."""
    config, offset = _config(AUDIO_PRESETS, preset, overrides, _AUDIO_ENCODER_KEYS + _MODEL_KEYS + _AUDIO_OTHER_KEYS,
                             "audio")
    dtype = config.get("dtype")
    return Data2Vec2(
        encoder=AudioEncoder(**{k: config[k] for k in _AUDIO_ENCODER_KEYS if k in config}, seed=offset(100),
                             dtype=dtype, name="encoder"),
        decoder=ConvDecoder1D(
            decoder_dim=config["decoder_dim"], num_layers=config["decoder_layers"], kernel_size=config["decoder_kernel"],
            groups=config["decoder_groups"], residual=config["decoder_residual"],
            input_dropout=config["decoder_input_dropout"], seed=offset(50), dtype=dtype, name="decoder",
        ),
        masking=BlockMasking1D(mask_prob=config["mask_prob"], block_length=config["block_length"],
                               mask_prob_adjust=config["mask_prob_adjust"], inverse=config.get("inverse_mask", False),
                               clone_batch=config["clone_batch"], seed=offset(1), name="masking"),
        targets=_targets(config),
        **{k: config[k] for k in _MODEL_KEYS if k in config},
        decay_1d_weights=config["decay_1d_weights"],
        seed=offset(2),
        dtype=dtype,
    )


_BUILDERS = {"image": (IMAGE_PRESETS, image_model), "text": (TEXT_PRESETS, text_model), "audio": (AUDIO_PRESETS, audio_model)}
PRESET_CONFIG_FILE = "config.json"
PRESET_WEIGHTS_FILE = "model.weights.h5"
PRESET_METADATA_FILE = "metadata.json"


def preset_names():
    """Every built-in preset, as `"<modality>_<name>"` (e.g. `"image_base"`, `"text_large"`)."""
    return sorted(f"{modality}_{name}" for modality, (table, _) in _BUILDERS.items() for name in table)


def from_preset(preset, **overrides):
    """A `Data2Vec2` from a built-in preset name (`preset_names()`) or a directory written by `save_to_preset`.

    A built-in name builds a freshly initialized model (keyword `overrides` change its settings, as
    for `Data2Vec2.image(...)`; with `seed=...` the initial weights, masks and noise are a function
    of that seed alone); a directory restores the saved model, weights included, as it was.
    Nothing is downloaded.

    Example:
    >>> model = from_preset("image_tiny", seed=0)
    >>> save_to_preset(model, "my_preset")
    >>> same = from_preset("my_preset")
    """
    preset = os.fspath(preset)
    if os.path.isdir(preset):
        if overrides:
            raise ValueError(
                f"A preset directory restores a saved model as it was; settings {sorted(overrides)} cannot be changed."
            )
        config_path = os.path.join(preset, PRESET_CONFIG_FILE)
        weights_path = os.path.join(preset, PRESET_WEIGHTS_FILE)
        for path in (config_path, weights_path):
            if not os.path.isfile(path):
                raise ValueError(f"Preset directory {preset!r} has no {os.path.basename(path)}; write it with `save_to_preset`.")
        with open(config_path) as f:
            model = keras.saving.deserialize_keras_object(json.load(f))
        model.load_weights(weights_path)
        return model
    modality, _, name = preset.partition("_")
    if modality in _BUILDERS and name in _BUILDERS[modality][0]:
        return _BUILDERS[modality][1](name, **overrides)
    raise ValueError(
        f"Unknown preset {preset!r}: no such directory, and not a built-in preset; built-in presets: {preset_names()}."
    )


def save_to_preset(model, directory):
    """Writes `model` (a `Data2Vec2`) to `directory` as a preset: `config.json` (its Keras config),
    `model.weights.h5` (every weight: student, decoder, teacher, EMA step counters) and
    `metadata.json` (package version, modality, parameter count); `from_preset(directory)` restores it."""
    from keras_d2v2 import __version__

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, PRESET_CONFIG_FILE), "w") as f:
        json.dump(keras.saving.serialize_keras_object(model), f, indent=2)
    model.save_weights(os.path.join(directory, PRESET_WEIGHTS_FILE))
    metadata = {
        "keras_d2v2_version": __version__,
        "keras_version": keras.__version__,
        "modality": model.encoder.input_name,
        "encoder_parameters": int(model.encoder.count_params()),
    }
    with open(os.path.join(directory, PRESET_METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
