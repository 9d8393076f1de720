"""The reference configuration of a golden fixture (`<modality>_config.json`) as the flat keyword
arguments of `Data2Vec2.image/text/audio`, so that the parity tests build whatever model the fixture
was made with.

`model_kwargs(config)` reads every setting the model needs from the file. A setting the model cannot
represent raises `UnsupportedConfig` naming the key and its value instead of building something else.
Not read: settings that only choose the reference's initial weights (`init_extra_token_zero`,
`mae_init`, `alibi_scale`), since the tests load the fixture's weights; the reference's `seed`, which
seeds its text masks, replayed by the tests; settings of branches the fixture does not take
(`alibi_dims`, `alibi_distance` without ALiBi, `mask_channel_length` without channel masking, a text
`prenet_dropout` without a prenet, the projection settings of the image `Decoder2d`, which has one);
and bookkeeping (`max_update`, `log_norms`, `ema_same_dtype`).
"""

import ast
import json
import pathlib

import keras
import numpy as np
import pytest

from keras_d2v2 import Data2Vec2

from conftest import GOLDEN

# Our settings that the reference config does not state.
OURS = dict(
    seed=0,  # initial weights (replaced by the fixture's), masks and noise (replayed from the fixture)
    collapse_check_after=5000,  # the reference checks min_target_var / min_pred_var after 5000 updates
    # Masked token optimization (docs/mto.md) off: the reference's student and loss.
    student_mode="visible_only", mask_fill="noise", attention_recalibration=False, singularity_loss_weight=0.0,
    entropy_loss_weight=0.0, entropy_sign=1.0, depth_weighting="shallow",
)
# The audio model normalizes each waveform itself; the reference does it in its data loader (normalize: true).
AUDIO_OURS = dict(normalize_waveform=True, sample_rate=16000)
DTYPES = {"fp32": "float32"}


class UnsupportedConfig(ValueError):
    """A reference setting that the model does not implement."""


def load_config(modality, folder=GOLDEN):
    path = pathlib.Path(folder) / f"{modality}_config.json"
    if not path.exists():
        pytest.skip(f"golden config {path} not found (set KERAS_D2V2_GOLDEN to the fixture folder)")
    return json.loads(path.read_text())


def build_model(config):
    """A `Data2Vec2` of the fixture's modality and settings (fresh weights)."""
    return getattr(Data2Vec2, config["modality"].lower())(**model_kwargs(config))


def optimizer(config):
    """The fixture's fairseq Adam as Keras AdamW (its weight-decay groups are the model's `decay_1d_weights`)."""
    opt = config["optimizer"]
    if opt["kind"] not in ("composite", "adam"):
        raise UnsupportedConfig(f"optimizer.kind = {opt['kind']!r} is not supported: only 'composite' or 'adam'.")
    if not opt["lr_schedule"].startswith("constant"):
        raise UnsupportedConfig(f"optimizer.lr_schedule = {opt['lr_schedule']!r} is not supported: only constant.")
    return keras.optimizers.AdamW(
        learning_rate=opt["lr"], beta_1=opt["betas"][0], beta_2=opt["betas"][1], epsilon=opt["eps"],
        weight_decay=opt["weight_decay"], global_clipnorm=opt["clip_norm"] or None,  # 0 = no clipping
    )


def model_kwargs(config):
    """`Data2Vec2.<modality>(**model_kwargs(config))` builds the fixture's model."""
    modality = config["modality"]
    model = config["model_cfg"]
    encoder = model["modalities"][modality.lower()]
    decoder = encoder["decoder"]
    where = f"model_cfg.modalities.{modality.lower()}"
    names = ("model_cfg", where, f"{where}.decoder")
    for section, fixed, name in zip((model, encoder, decoder), _fixed(modality, model), names):
        _check(section, fixed, name)
    precision = config["precision"].split()[0]
    if precision not in DTYPES:
        raise UnsupportedConfig(f"precision = {config['precision']!r} is not supported: only {sorted(DTYPES)}.")

    kwargs = dict(
        OURS,
        dtype=DTYPES[precision],
        embed_dim=model["embed_dim"],
        depth=model["depth"],
        num_heads=model["num_heads"],
        mlp_ratio=float(model["mlp_ratio"]),
        norm_eps=model["norm_eps"],
        layer_norm_first=model["layer_norm_first"],
        dropout=model["encoder_dropout"],
        attention_dropout=model["attention_dropout"],
        activation_dropout=model["activation_dropout"],
        post_mlp_dropout=model["post_mlp_drop"],
        drop_path_rate=_drop_path_rate(model, encoder),
        mask_prob=encoder["mask_prob"],
        clone_batch=model["clone_batch"],
        mask_noise_std=encoder["mask_noise_std"],
        decoder_dim=decoder["decoder_dim"],
        decoder_layers=decoder["decoder_layers"],
        decoder_kernel=decoder["decoder_kernel"],
        decoder_groups=decoder["decoder_groups"],
        decoder_residual=decoder["decoder_residual"],
        decoder_input_dropout=decoder["input_dropout"],
        top_k=model["average_top_k_layers"],
        instance_norm_target_layer=model["instance_norm_target_layer"],
        layer_norm_target_layer=model["layer_norm_target_layer"],
        layer_norm_targets=model["layer_norm_targets"],
        instance_norm_targets=model["instance_norm_targets"],
        loss_scale=model["loss_scale"],  # None = 1/sqrt(embed_dim) in both
        cls_loss_weight=model["cls_loss"],
        ema_decay=model["ema_decay"],
        ema_end_decay=model["ema_end_decay"],
        ema_anneal_end_step=model["ema_anneal_end_step"],
        # The reference compares these with standard deviations (its `compute_var` returns one).
        min_target_std=model["min_target_var"],
        min_pred_std=model["min_pred_var"],
        decay_1d_weights=config["optimizer"]["kind"] == "adam",  # plain Adam; composite exempts 1-D weights
    )
    if modality == "IMAGE":
        kwargs.update(
            image_size=encoder["input_size"], patch_size=encoder["patch_size"], channels=encoder["in_chans"],
            prenet_depth=encoder["prenet_depth"], prenet_dropout=encoder["prenet_dropout"],
            block_length=encoder["mask_length"], mask_prob_adjust=encoder["mask_prob_adjust"],
            decoder_projection_layers=1,  # the reference's Decoder2d has one projection whatever projection_layers says
        )
    elif modality == "TEXT":
        dictionary = config["dictionary"]
        kwargs.update(
            vocab_size=dictionary["size"], pad_id=dictionary["pad"], max_positions=encoder["max_source_positions"],
            embedding_dropout=encoder["dropout"],
        )
    elif modality == "AUDIO":
        kwargs.update(
            AUDIO_OURS,
            feature_layers=feature_layers(encoder["feature_encoder_spec"]),
            prenet_depth=encoder["prenet_depth"], prenet_dropout=encoder["prenet_dropout"],
            layerdrop=model["layerdrop"], prenet_layerdrop=encoder["prenet_layerdrop"],
            conv_pos_width=encoder["conv_pos_width"], conv_pos_depth=encoder["conv_pos_depth"],
            conv_pos_groups=encoder["conv_pos_groups"], learned_alibi_scale=encoder["learned_alibi_scale"],
            block_length=encoder["mask_length"], mask_prob_adjust=encoder["mask_prob_adjust"],
            inverse_mask=encoder["inverse_mask"],
        )
    else:
        raise UnsupportedConfig(f"modality = {modality!r} is not supported.")
    if modality != "IMAGE":  # Decoder1d
        kwargs.update(decoder_projection_layers=decoder["projection_layers"],
                      decoder_projection_ratio=decoder["projection_ratio"])
    return kwargs


def feature_layers(spec):
    """The reference's conv spec, a Python expression such as `"[(512, 10, 5)] + [(512, 3, 2)] * 4"`,
    as `(channels, kernel, stride)` triples, evaluating literals, `+` and `*` only."""

    def value(node):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        return ast.literal_eval(node)

    return tuple(tuple(layer) for layer in value(ast.parse(spec, mode="eval").body))


def _drop_path_rate(model, encoder):
    """Our stochastic depth rises linearly from 0 over prenet and main blocks together; the reference
    has one linear schedule for the prenet blocks and one for the main blocks. Only a reference
    schedule that is ours for some rate can be built."""
    reference = np.concatenate([
        np.linspace(encoder["start_drop_path_rate"], encoder["end_drop_path_rate"], encoder["prenet_depth"]),
        np.linspace(model["start_drop_path_rate"], model["end_drop_path_rate"], model["depth"]),
    ])
    rate = float(reference[-1])
    if not np.allclose(reference, np.linspace(0.0, rate, len(reference))):
        raise UnsupportedConfig(
            f"model_cfg.start/end_drop_path_rate = {model['start_drop_path_rate']}/{model['end_drop_path_rate']} "
            f"with the prenet's {encoder['start_drop_path_rate']}/{encoder['end_drop_path_rate']} is not supported: "
            "the model's rate rises linearly from 0 over prenet and main blocks together."
        )
    return rate


def _fixed(modality, model):
    """Settings the model implements one way only, as {key: the value it implements} for the
    model config, the modality's encoder config and its decoder config."""
    image, text, audio = (modality == m for m in ("IMAGE", "TEXT", "AUDIO"))
    trunk = {
        "supported_modality": modality,
        "loss_beta": 0,  # > 0 is a smooth L1 loss
        "norm_affine": True,
        "layer_norm_first": False,  # the reference's pre-LN block drops the FFN residual; ours keeps it
        "end_of_block_targets": False,  # targets are the FFN outputs
        "batch_norm_target_layer": False,
        "dropout_input": 0.0,
        "shared_decoder": None,
        "decoder_group": False,
        "skip_ema": False,
        "recon_loss": 0,
        "d2v_loss": 1,
        "ema_encoder_only": text,  # the text teacher is the blocks only; image and audio teachers the encoder
    }
    encoder = {
        "model_depth": model["depth"],
        "num_extra_tokens": int(image),  # the image CLS token
        "ema_local_encoder": image,  # only the image teacher embeds its input itself
        "use_alibi_encoder": audio,
        "learned_alibi": False,
        "alibi_max_pos": None,
        "learned_alibi_scale_per_layer": False,
        "mask_prob_min": None,
        "keep_masked_pct": 0,
        "add_masks": False,
        "remove_masks": False,
        "mask_dropout": 0,
        "mask_channel_prob": 0,
        "encoder_zero_mask": True,
        "local_grad_mult": 1.0,
    }
    decoder = {"add_positions_masked": False, "add_positions_all": False}
    if not audio:  # only the audio builder has layerdrop
        trunk["layerdrop"] = 0.0
    if image:
        encoder.update(
            embed_dim=model["embed_dim"], inverse_mask=True, fixed_positions=True, transformer_decoder=False,
            enc_dec_transformer=False, prenet_layerdrop=0,
        )
    if text:
        encoder.update(
            prenet_depth=0, mask_length=1, mask_prob_adjust=0, inverse_mask=False, learned_pos=True,
            no_token_positional_embeddings=False, no_scale_embedding=True, layernorm_embedding=True,
        )
    if audio:
        encoder.update(
            extractor_mode="layer_norm", conv_pos_pre_ln=False, learned_alibi_scale_per_head=True,
            num_alibi_heads=model["num_heads"],
        )
    return trunk, encoder, decoder


def _check(section, fixed, where):
    for key, supported in fixed.items():
        if section[key] != supported:
            raise UnsupportedConfig(
                f"{where}.{key} = {section[key]!r} is not supported: the model implements only {supported!r}."
            )
