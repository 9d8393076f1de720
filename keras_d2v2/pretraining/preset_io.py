"""Building a `Data2Vec2` from a preset (`keras_d2v2.presets`), and preset directories (a saved
model's config and weights) in the keras-hub manner."""

import inspect
import json
import os

import keras

from keras_d2v2.atomic_write import replaced_atomically
from keras_d2v2.layers.random_state import derived_seed
from keras_d2v2.presets import MODALITIES, PRESETS, SECTIONS, preset_names
from keras_d2v2.version import __version__

PRESET_CONFIG_FILE = "config.json"
PRESET_WEIGHTS_FILE = "model.weights.h5"
PRESET_METADATA_FILE = "metadata.json"

# Flat names of decoder arguments that are not `decoder_` + the argument's own name.
_DECODER_FLAT_NAMES = {"decoder_layers": "num_layers", "decoder_kernel": "kernel_size", "decoder_dim": "decoder_dim"}
# Flat names of masking arguments that are not the argument's own name.
_MASKING_FLAT_NAMES = {"inverse_mask": "inverse"}


def _registered(class_name):
    return keras.saving.get_registered_object(f"keras_d2v2>{class_name}")


def modality_classes(modality):
    """`{"encoder", "decoder", "masking", "targets", "model"}`: the classes a `modality` builds with."""
    if modality not in MODALITIES:
        raise ValueError(f"`modality` must be one of {sorted(MODALITIES)}, got {modality!r}.")
    classes = {section: _registered(class_name) for section, class_name in MODALITIES[modality].items()}
    classes["model"] = _registered("Data2Vec2")
    return classes


def _arguments(cls):
    """Keyword arguments of `cls.__init__`, less those the builder sets itself."""
    return set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs", "seed", "name", "dtype", *SECTIONS}


def _section_of(name, classes):
    """`(section, argument)` that a flat keyword argument `name` sets, or None."""
    if name.startswith("decoder_"):
        argument = _DECODER_FLAT_NAMES.get(name, name[len("decoder_") :])
        return ("decoder", argument) if argument in _arguments(classes["decoder"]) else None
    if name in _MASKING_FLAT_NAMES and _MASKING_FLAT_NAMES[name] in _arguments(classes["masking"]):
        return "masking", _MASKING_FLAT_NAMES[name]
    for section in ("encoder", "masking", "targets", "model"):
        if name in _arguments(classes[section]):
            return section, name
    return None


def build_model(modality, preset=None, **overrides):
    """A freshly initialized `Data2Vec2` for `modality` ("image", "text", "audio") from the preset
    named `preset` (`"base"` when None) with `overrides` applied.

    An override is a flat keyword argument (an argument of the encoder, masking, targets or
    `Data2Vec2`, by its own name; a decoder argument as `decoder_<name>`, e.g. `decoder_dim`,
    `decoder_layers`, `decoder_kernel`, `decoder_groups`; `inverse_mask`), a section given as a
    dict (`decoder={"kernel_size": 5}`), `seed` or `dtype`. With `seed`, every part's seed is
    derived from it by name (`derived_seed(seed, "encoder")`, ...), so the initial weights, masks
    and noise are a function of that seed alone. Images also take `decoder="transformer"` (a
    `TransformerDecoder` in place of the conv decoder) and `targets="pixels"` (MAE's `PixelTargets`,
    no teacher), and any modality `masking="random"` (`RandomMasking`); each part's arguments then
    come from the flat and dict overrides above.

    Example:
    >>> model = build_model("image", "tiny", depth=6, decoder_layers=2, seed=0)
    >>> mae = build_model("image", "tiny", decoder="transformer", targets="pixels", masking="random",
    ...                   mask_prob=0.75, clone_batch=1)
    """
    classes = modality_classes(modality)
    presets = PRESETS[modality]
    name = "base" if preset is None else preset
    if name not in presets:
        raise ValueError(f"Unknown {modality} preset {preset!r}; available: {sorted(presets)}.")
    config = {section: dict(values) for section, values in presets[name].items()}
    seed, dtype = overrides.pop("seed", None), overrides.pop("dtype", None)
    swapped = _swap_parts(modality, classes, config, overrides)
    unknown = []
    for key, value in overrides.items():
        if key in SECTIONS and isinstance(value, dict):
            bad = sorted(set(value) - _arguments(classes[key]))
            if bad:
                raise ValueError(f"Unknown argument(s) {bad} for the {key} of {_article(modality)} {modality} model.")
            config[key].update(value)
            continue
        target = _section_of(key, classes)
        if target is None:
            unknown.append(key)
        else:
            config[target[0]][target[1]] = value
    if unknown:
        raise ValueError(f"Unknown argument(s) {sorted(unknown)} for {_article(modality)} {modality} model.")
    if swapped.get("targets") == "pixels":
        patch_size, channels = config["encoder"]["patch_size"], config["encoder"]["channels"]
        config["targets"].setdefault("patch_size", patch_size)
        config["decoder"].setdefault("output_dim", patch_size * patch_size * channels)

    def part(section, **kwargs):
        return classes[section](**config[section], seed=derived_seed(seed, section), name=section, **kwargs)

    return classes["model"](
        encoder=part("encoder", dtype=dtype),
        decoder=part("decoder", dtype=dtype),
        masking=part("masking"),
        targets=classes["targets"](**config["targets"], name="targets"),
        **config["model"],
        seed=derived_seed(seed, "model"),
        dtype=dtype,
    )


# The parts a string override swaps in: `decoder="transformer"`, `targets="pixels"`, `masking="random"`.
_PART_CHOICES = {
    "decoder": ("conv", "transformer"),
    "targets": ("contextualized", "pixels"),
    "masking": ("preset", "random"),
}


def _swap_parts(modality, classes, config, overrides):
    """Applies `decoder="transformer"`, `targets="pixels"` (images only) and `masking="random"`
    (`RandomMasking` with the preset's `mask_prob` and `clone_batch`) to `classes` and `config`,
    popping them from `overrides`; returns the swaps made. The transformer decoder takes the
    preset's decoder width and depth and the encoder's head count; pixel targets set the CLS
    weight to 0 (no teacher) and, once the overrides are in, the patch size and the decoder's
    `output_dim` (`patch_size**2 * channels`)."""
    choices = {}
    for section, options in _PART_CHOICES.items():
        if isinstance(overrides.get(section), str):
            choices[section] = overrides.pop(section)
            if choices[section] not in options:
                raise ValueError(f"`{section}` must be one of {options} (or a dict of arguments), got {choices[section]!r}.")
    swapped = {key: value for key, value in choices.items() if value != _PART_CHOICES[key][0]}
    if swapped.get("masking") == "random":
        classes["masking"] = _registered("RandomMasking")
        config["masking"] = {key: config["masking"][key] for key in ("mask_prob", "clone_batch")}
    image_only = {key: value for key, value in swapped.items() if key != "masking"}
    if image_only and modality != "image":
        raise ValueError(f"{image_only} are for images (a square patch grid); got {_article(modality)} {modality} model.")
    if swapped.get("decoder") == "transformer":
        classes["decoder"] = _registered("TransformerDecoder")
        conv = config["decoder"]
        config["decoder"] = {
            "decoder_dim": conv["decoder_dim"],
            "num_layers": conv["num_layers"],
            "num_heads": config["encoder"]["num_heads"],
            "input_dropout": conv.get("input_dropout", 0.0),
        }
    if swapped.get("targets") == "pixels":
        classes["targets"] = _registered("PixelTargets")
        config["targets"] = {}
        config["model"]["cls_loss_weight"] = 0.0
    return swapped


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def from_preset(preset, **overrides):
    """A `Data2Vec2` from a built-in preset name (`preset_names()`) or a directory written by `save_to_preset`.

    A built-in name builds a freshly initialized model (keyword `overrides` change its settings, as
    for `Data2Vec2.image(...)`); a directory restores the saved model, weights included, as it was.
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
    if modality in PRESETS and name in PRESETS[modality]:
        return build_model(modality, name, **overrides)
    raise ValueError(
        f"Unknown preset {preset!r}: no such directory, and not a built-in preset; built-in presets: {preset_names()}."
    )


def save_to_preset(model, directory):
    """Writes `model` (a `Data2Vec2`) to `directory` as a preset: `config.json` (its Keras config),
    `model.weights.h5` (every weight: student, decoder, teacher, EMA step counters) and
    `metadata.json` (package version, modality, parameter count); `from_preset(directory)` restores it."""
    os.makedirs(directory, exist_ok=True)
    # Each file is replaced atomically, weights first: a failed save leaves the previous files
    # (and, as long as the model's architecture is unchanged, a loadable preset) in place.
    model.save_weights(os.path.join(directory, PRESET_WEIGHTS_FILE))
    metadata = {
        "keras_d2v2_version": __version__,
        "keras_version": keras.__version__,
        "modality": model.encoder.input_name,
        "encoder_parameters": int(model.encoder.count_params()),
    }
    for name, content in ((PRESET_CONFIG_FILE, keras.saving.serialize_keras_object(model)), (PRESET_METADATA_FILE, metadata)):
        with replaced_atomically(os.path.join(directory, name)) as tmp:
            with open(tmp, "w") as f:
                json.dump(content, f, indent=2)
