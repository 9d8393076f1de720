"""Loads reference (fairseq `data2vec_multi`) weights into a Keras `Data2Vec2`.

A fairseq checkpoint keeps the student under `checkpoint["model"]` with the teacher's EMA
parameters under `checkpoint["model"]["_ema"]`, all with PyTorch layouts. This module renames
and transposes them onto our variables, so Meta's released weights (and the golden fixtures)
run in Keras on any backend.
"""

import os
import pickle
import zipfile
from collections.abc import Mapping

import numpy as np

PREFIX = "modality_encoders.IMAGE."
TEXT_PREFIX = "modality_encoders.TEXT."
AUDIO_PREFIX = "modality_encoders.AUDIO."


def _dense(weight):
    return weight.T


def _conv(weight):
    return np.transpose(weight, (2, 3, 1, 0))


def _conv1d(weight):
    return np.transpose(weight, (2, 1, 0))


def _same(weight):
    return weight


def _per_head(weight):
    # alibi_scale is (layers=1, 1, heads, 1, 1) in the reference.
    return np.reshape(weight, (-1,))


def _block_names(prefix, block):
    return {
        f"{prefix}attn.qkv.weight": (block.qkv.kernel, _dense),
        f"{prefix}attn.qkv.bias": (block.qkv.bias, _same),
        f"{prefix}attn.proj.weight": (block.attention_projection.kernel, _dense),
        f"{prefix}attn.proj.bias": (block.attention_projection.bias, _same),
        f"{prefix}norm1.weight": (block.norm1.gamma, _same),
        f"{prefix}norm1.bias": (block.norm1.beta, _same),
        f"{prefix}mlp.fc1.weight": (block.fc1.kernel, _dense),
        f"{prefix}mlp.fc1.bias": (block.fc1.bias, _same),
        f"{prefix}mlp.fc2.weight": (block.fc2.kernel, _dense),
        f"{prefix}mlp.fc2.bias": (block.fc2.bias, _same),
        f"{prefix}norm2.weight": (block.norm2.gamma, _same),
        f"{prefix}norm2.bias": (block.norm2.beta, _same),
    }


def _encoder_names(encoder):
    names = {
        f"{PREFIX}extra_tokens": (encoder.cls_token, _same),
        f"{PREFIX}local_encoder.proj.weight": (encoder.patch_embedding.projection.kernel, _conv),
        f"{PREFIX}local_encoder.proj.bias": (encoder.patch_embedding.projection.bias, _same),
        f"{PREFIX}fixed_positional_encoder.positions": (encoder.patch_embedding.positions, _same),
    }
    names.update(_context_names(PREFIX, encoder))
    return names


def _decoder_names(prefix, decoder, conv):
    names = {}
    for i, (kernel, bias) in enumerate(zip(decoder.kernels, decoder.biases)):
        names[f"{prefix}decoder.blocks.{i}.0.weight"] = (kernel, conv)
        names[f"{prefix}decoder.blocks.{i}.0.bias"] = (bias, _same)
    if len(decoder.projections) == 1:
        names[f"{prefix}decoder.proj.weight"] = (decoder.projections[0].kernel, _dense)
        names[f"{prefix}decoder.proj.bias"] = (decoder.projections[0].bias, _same)
    else:
        # nn.Sequential(Linear, GELU, Linear, ...): the Linear layers sit at even indices.
        for i, dense in enumerate(decoder.projections):
            names[f"{prefix}decoder.proj.{2 * i}.weight"] = (dense.kernel, _dense)
            names[f"{prefix}decoder.proj.{2 * i}.bias"] = (dense.bias, _same)
    return names


def _text_names(model):
    encoder = model.encoder
    student = {
        f"{TEXT_PREFIX}local_encoder.embed_tokens.weight": (encoder.token_embedding, _same),
        f"{TEXT_PREFIX}local_encoder.embed_positions.weight": (encoder.position_embedding, _same),
        f"{TEXT_PREFIX}local_encoder.layernorm_embedding.weight": (encoder.embedding_norm.gamma, _same),
        f"{TEXT_PREFIX}local_encoder.layernorm_embedding.bias": (encoder.embedding_norm.beta, _same),
    }
    student.update(_decoder_names(TEXT_PREFIX, model.decoder, _conv1d))
    teacher = {}
    for i, (block, teacher_block) in enumerate(zip(encoder.blocks, model.teacher.blocks)):
        student.update(_block_names(f"blocks.{i}.", block))
        # `ema_encoder_only`: the EMA module holds the blocks alone, named from 0.
        teacher.update(_block_names(f"{i}.", teacher_block))
    return student, teacher


def _context_names(prefix, encoder):
    """Names of the parts of an encoder after its local features: context norm, prenet and main
    blocks, and the final norm of pre-LN models."""
    names = {}
    if encoder.context_norm is not None:
        names[f"{prefix}context_encoder.norm.weight"] = (encoder.context_norm.gamma, _same)
        names[f"{prefix}context_encoder.norm.bias"] = (encoder.context_norm.beta, _same)
    if encoder.final_norm is not None:
        names["norm.weight"] = (encoder.final_norm.gamma, _same)
        names["norm.bias"] = (encoder.final_norm.beta, _same)
    for i, block in enumerate(encoder.prenet_blocks):
        names.update(_block_names(f"{prefix}context_encoder.blocks.{i}.", block))
    for i, block in enumerate(encoder.blocks):
        names.update(_block_names(f"blocks.{i}.", block))
    return names


def _audio_encoder_names(encoder):
    p = AUDIO_PREFIX
    names = {f"{p}alibi_scale": (encoder.alibi.scale, _per_head)}
    if not encoder.contextualize_only:
        extractor = encoder.feature_extractor
        for i, (conv, norm) in enumerate(zip(extractor.convs, extractor.norms)):
            names[f"{p}local_encoder.conv_layers.{i}.0.weight"] = (conv.kernel, _conv1d)
            names[f"{p}local_encoder.conv_layers.{i}.2.1.weight"] = (norm.gamma, _same)
            names[f"{p}local_encoder.conv_layers.{i}.2.1.bias"] = (norm.beta, _same)
        names[f"{p}project_features.1.weight"] = (encoder.feature_norm.gamma, _same)
        names[f"{p}project_features.1.bias"] = (encoder.feature_norm.beta, _same)
        names[f"{p}project_features.2.weight"] = (encoder.feature_projection.kernel, _dense)
        names[f"{p}project_features.2.bias"] = (encoder.feature_projection.bias, _same)
    positions = encoder.conv_positions
    # nn.Sequential(TransposeLast, *conv layers, TransposeLast): the conv layers sit at 1..depth.
    for i, (kernel, bias) in enumerate(zip(positions.kernels, positions.biases)):
        names[f"{p}relative_positional_encoder.{i + 1}.0.weight"] = (kernel, _conv1d)
        names[f"{p}relative_positional_encoder.{i + 1}.0.bias"] = (bias, _same)
    names.update(_context_names(p, encoder))
    return names


def fairseq_weight_names(model):
    """`(student, teacher)` dicts: fairseq parameter name -> (our variable, layout transform)."""
    from keras_d2v2.models.audio_encoder import AudioEncoder
    from keras_d2v2.models.text_encoder import TextEncoder

    if isinstance(model.encoder, TextEncoder):
        return _text_names(model)
    if isinstance(model.encoder, AudioEncoder):
        student = _audio_encoder_names(model.encoder)
        student.update(_decoder_names(AUDIO_PREFIX, model.decoder, _conv1d))
        return student, _audio_encoder_names(model.teacher)
    student = _encoder_names(model.encoder)
    student.update(_decoder_names(PREFIX, model.decoder, _conv))
    return student, _encoder_names(model.teacher)


def _converted(names, state_dict, what):
    """`[(variable, value)]` for every weight in `names`, each checked (name, dtype, finiteness,
    shape after conversion) before any is assigned: a refused state dict changes nothing."""
    missing = sorted(set(names) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(names))
    if missing or unexpected:
        raise ValueError(
            f"The {what} state dict does not match the model: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}."
        )
    pairs = []
    for name, (variable, transform) in names.items():
        raw = np.asarray(state_dict[name])
        if not np.issubdtype(raw.dtype, np.floating):
            raise ValueError(f"{what} weight {name!r} has dtype {raw.dtype}; expected floating-point weights.")
        if not np.all(np.isfinite(raw)):
            raise ValueError(f"{what} weight {name!r} holds NaN or inf; the checkpoint is damaged.")
        value = transform(raw.astype("float32"))
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{what} weight {name!r} has shape {tuple(value.shape)} after conversion, but the model's "
                f"{variable.path!r} has shape {tuple(variable.shape)}; build the model with the checkpoint's sizes."
            )
        pairs.append((variable, value))
    return pairs


def load_fairseq_weights(model, state_dict, teacher_state_dict=None):
    """Assigns reference weights to an image, text or audio `Data2Vec2`.

    Args:
        model: a `Data2Vec2` whose sizes match the checkpoint (e.g. `Data2Vec2.image(preset="base")`).
        state_dict: mapping of fairseq names to arrays (numpy or torch). A `"_ema"` entry, as in a
            fairseq checkpoint, is used as the teacher unless `teacher_state_dict` is given.
        teacher_state_dict: mapping for the EMA teacher; when absent everywhere, the teacher starts
            as a copy of the student, as at the start of pre-training.

    Raises a ValueError listing missing/unexpected names, or naming the first weight of the wrong
    shape, of a non-float dtype or holding NaN/inf. Every weight is checked before the first is
    assigned, so a refused state dict leaves the model as it was.
    """
    for name, value in (("state_dict", state_dict), ("teacher_state_dict", teacher_state_dict)):
        if not isinstance(value, Mapping) and (value is not None or name == "state_dict"):
            raise ValueError(
                f"`{name}` must be a mapping of fairseq parameter names to tensors (what "
                f"`read_fairseq_checkpoint` returns), got {_describe(value)}."
            )
    teacher = teacher_state_dict if teacher_state_dict is not None else state_dict.get("_ema")
    student = {k: _to_numpy(v) for k, v in state_dict.items() if k != "_ema"}
    student_names, teacher_names = fairseq_weight_names(model)
    assignments = _converted(student_names, student, "student")
    if teacher is not None:
        assignments += _converted(teacher_names, {k: _to_numpy(v) for k, v in teacher.items()}, "teacher")
    for variable, value in assignments:
        variable.assign(value)
    if teacher is None:
        model.reset_teacher()
    return model


def _to_numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value)


class _Opaque:
    """Stands in for any non-tensor object in a checkpoint (configs, argparse namespaces)."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


_TORCH_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"),
    ("torch", "device"),
} | {("torch", f"{kind}Storage") for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Byte", "Bool")}


_EXPECTED = (
    "a fairseq data2vec 2.0 checkpoint: a PyTorch file written by `torch.save` holding a dict with the model's "
    "state dict (parameter names to tensors, the EMA teacher under '_ema') under 'model', or that state dict itself"
)


def read_fairseq_checkpoint(path):
    """Reads a fairseq `.pt` checkpoint without executing any pickled code.

    Tries `torch.load(weights_only=True)` first. fairseq checkpoints also pickle their config
    objects, which that refuses; then a restricted unpickler rebuilds tensors and replaces every
    other object by an inert placeholder, never importing or calling anything else. Returns the
    model state dict (the teacher under `"_ema"`).

    Raises a ValueError naming `path` and what was expected when the file is not a PyTorch file
    (random bytes, a Keras `.keras` archive), or holds something other than a state dict (a list,
    a dict without one); a FileNotFoundError when there is no such file.
    """
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No fairseq checkpoint at {path}: there is no such file.")
    if _is_keras_archive(path):
        raise ValueError(
            f"{path} is a Keras `.keras` archive, not {_EXPECTED}. Load it with `keras.saving.load_model`."
        )
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle())
    except (OSError, MemoryError):
        raise
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on a foreign file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is not a readable PyTorch file ({reason[:200]}); expected {_EXPECTED}.") from error
    state = checkpoint["model"] if isinstance(checkpoint, Mapping) and "model" in checkpoint else checkpoint
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds {_describe(checkpoint)}, not a dict; expected {_EXPECTED}.")
    problem = _state_dict_problem(state)
    if problem:
        where = "its 'model' entry" if state is not checkpoint else "it"
        raise ValueError(f"{path} holds {_describe(checkpoint)}, but {where} {problem}; expected {_EXPECTED}.")
    return state


def _is_keras_archive(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    return "metadata.json" in names and bool(names & {"config.json", "model.weights.h5"})


def _state_dict_problem(state):
    """Why `state` is not a state dict (names to tensors, `_ema` a nested one), or None."""
    if not isinstance(state, Mapping):
        return f"is {_describe(state)}, not a dict"
    for key, value in state.items():
        if not isinstance(key, str):
            return f"has a key {key!r} that is not a parameter name"
        if key == "_ema" and isinstance(value, Mapping):
            continue
        if not (hasattr(value, "detach") or isinstance(value, np.ndarray)):
            return f"maps {key!r} to {_describe(value)}, not a tensor"
    return None


def _describe(value):
    if isinstance(value, Mapping):
        return f"a dict with keys {sorted(map(str, value))[:6]}{' ...' if len(value) > 6 else ''}"
    if isinstance(value, _Opaque):
        return "a pickled object other than a tensor"
    return f"a value of type {type(value).__name__}"


def _restricted_pickle():
    import types

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in _TORCH_GLOBALS:
                return getattr(__import__(module, fromlist=[name]), name)
            return _Opaque

    def load(file, **kwargs):
        return Unpickler(file, **kwargs).load()

    # torch reads legacy (non-zip) files through `load`, zip files through `Unpickler`: both restricted.
    return types.SimpleNamespace(Unpickler=Unpickler, load=load, __name__="keras_d2v2_restricted")
