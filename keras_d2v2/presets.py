"""Named configurations, as data: the reference's published image, text and audio models, and tiny
ones for tests and CPUs.

A preset is a nested config with one section per part of a `Data2Vec2`: `encoder`, `decoder`,
`masking`, `targets` (each the constructor arguments of that layer) and `model` (those of
`Data2Vec2` itself). `MODALITIES` names the layer classes each modality builds them with;
`keras_d2v2.pretraining.preset_io.build_model` does the building. Nothing here imports a model.
"""

MODALITIES = {
    "image": {
        "encoder": "ImageEncoder",
        "decoder": "ConvDecoder2D",
        "masking": "InverseBlockMasking",
        "targets": "ContextualizedTargets",
    },
    "text": {
        "encoder": "TextEncoder",
        "decoder": "ConvDecoder1D",
        "masking": "RandomMasking",
        "targets": "ContextualizedTargets",
    },
    "audio": {
        "encoder": "AudioEncoder",
        "decoder": "ConvDecoder1D",
        "masking": "BlockMasking1D",
        "targets": "ContextualizedTargets",
    },
}
SECTIONS = ("encoder", "decoder", "masking", "targets", "model")


def _with(preset, **changes):
    """A copy of `preset` with the sections in `changes` updated key by key."""
    return {section: {**preset[section], **changes.get(section, {})} for section in SECTIONS}


# examples/data2vec/config/v2/base_images_only_task.yaml
_IMAGE_BASE = {
    "encoder": dict(image_size=224, patch_size=16, channels=3, embed_dim=768, depth=10, prenet_depth=2, num_heads=12,
                    mlp_ratio=4.0, norm_eps=1e-6),
    "decoder": dict(decoder_dim=768, num_layers=6, kernel_size=3, groups=16, residual=True, input_dropout=0.0),
    "masking": dict(mask_prob=0.8, block_length=3, mask_prob_adjust=0.07, clone_batch=16),
    "targets": dict(top_k=10, instance_norm_target_layer=True, layer_norm_target_layer=False,
                    layer_norm_targets=True, instance_norm_targets=False),
    "model": dict(mask_noise_std=0.01, cls_loss_weight=0.01, ema_decay=0.9998, ema_end_decay=0.99999,
                  ema_anneal_end_step=100_000, min_target_std=0.0, min_pred_std=0.0),
}

IMAGE_PRESETS = {
    "base": _IMAGE_BASE,
    # large_images_only_task.yaml
    "large": _with(
        _IMAGE_BASE,
        encoder=dict(embed_dim=1024, depth=24, prenet_depth=0, num_heads=16),
        decoder=dict(decoder_dim=1024, kernel_size=5, num_layers=3),
        masking=dict(mask_prob=0.75, mask_prob_adjust=0.1),
        targets=dict(top_k=18),
        model=dict(ema_anneal_end_step=150_000),
    ),
    # huge_images_only_task.yaml
    "huge": _with(
        _IMAGE_BASE,
        encoder=dict(embed_dim=1280, depth=32, prenet_depth=0, num_heads=16),
        decoder=dict(decoder_dim=1024, kernel_size=5, num_layers=3),
        masking=dict(mask_prob=0.75, mask_prob_adjust=0.1),
        targets=dict(top_k=24),
        model=dict(ema_end_decay=0.99995, ema_anneal_end_step=150_000),
    ),
    # A tiny ViT for Fashion-MNIST on a CPU (recipes/pretrain_image.py).
    "tiny": _with(
        _IMAGE_BASE,
        encoder=dict(image_size=28, patch_size=4, channels=1, embed_dim=64, depth=4, prenet_depth=1, num_heads=4),
        decoder=dict(decoder_dim=64, kernel_size=3, num_layers=3, groups=4),
        masking=dict(mask_prob=0.75, mask_prob_adjust=0.07, clone_batch=4),
        targets=dict(top_k=4),
        model=dict(ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=3000),
    ),
    # The golden fixture's model at the time of writing (../shared/golden/image_config.json); for tests.
    "tiny_test": _with(
        _IMAGE_BASE,
        encoder=dict(image_size=32, patch_size=4, embed_dim=32, depth=2, prenet_depth=1, num_heads=4),
        decoder=dict(decoder_dim=32, groups=4, kernel_size=3, num_layers=3),
        masking=dict(clone_batch=4),
        targets=dict(top_k=2),
        model=dict(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10),
    ),
}

# examples/data2vec/config/v2/base_text_only_task.yaml (RoBERTa's GPT-2 BPE vocabulary + <mask>)
_TEXT_BASE = {
    "encoder": dict(vocab_size=50265, max_positions=512, pad_id=1, embed_dim=768, depth=12, num_heads=12,
                    mlp_ratio=4.0, norm_eps=1e-5, dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                    post_mlp_dropout=0.1, embedding_dropout=0.1),
    "decoder": dict(decoder_dim=768, num_layers=5, kernel_size=9, groups=1, residual=False, projection_layers=2,
                    projection_ratio=2.0, input_dropout=0.1),
    "masking": dict(mask_prob=0.48, clone_batch=8),
    "targets": dict(top_k=12, instance_norm_target_layer=True, layer_norm_target_layer=False,
                    layer_norm_targets=False, instance_norm_targets=False),
    "model": dict(mask_noise_std=0.01, loss_scale=1.0, cls_loss_weight=0.0, ema_decay=0.9999, ema_end_decay=0.99999,
                  ema_anneal_end_step=100_000, min_target_std=0.1, min_pred_std=0.01),
}

TEXT_PRESETS = {
    "base": _TEXT_BASE,
    # large_text_only_task.yaml: per-layer LayerNorm then a final instance norm of the averaged
    # targets; settings the spec does not list (the decoder among them) are base's.
    "large": _with(
        _TEXT_BASE,
        encoder=dict(embed_dim=1024, depth=24, num_heads=16),
        masking=dict(mask_prob=0.5),
        targets=dict(top_k=24, instance_norm_target_layer=False, layer_norm_target_layer=True,
                     instance_norm_targets=True),
    ),
    # A tiny text model for a CPU (recipes/pretrain_text.py): 8k BPE ids, blocks of 128 tokens.
    "tiny": _with(
        _TEXT_BASE,
        encoder=dict(vocab_size=8192, max_positions=128, embed_dim=128, depth=4, num_heads=4),
        decoder=dict(decoder_dim=128, kernel_size=5, num_layers=2),
        masking=dict(clone_batch=2),
        targets=dict(top_k=4),
        model=dict(ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=1000),
    ),
    # The golden fixture's model at the time of writing (../shared/golden/text_config.json); for tests.
    "tiny_test": _with(
        _TEXT_BASE,
        encoder=dict(vocab_size=100, max_positions=32, embed_dim=32, depth=2, num_heads=4, dropout=0.0,
                     attention_dropout=0.0, post_mlp_dropout=0.0, embedding_dropout=0.0),
        decoder=dict(decoder_dim=32, kernel_size=9, num_layers=2, input_dropout=0.0),
        masking=dict(clone_batch=2),
        targets=dict(top_k=2),
        model=dict(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10),
    ),
}

# examples/data2vec/config/v2/base_audio_only_task.yaml (LibriSpeech 960 h, 16 kHz)
_AUDIO_BASE = {
    "encoder": dict(feature_layers=((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2, embed_dim=768,
                    depth=12, prenet_depth=0, num_heads=12, mlp_ratio=4.0, norm_eps=1e-5, dropout=0.1,
                    attention_dropout=0.1, activation_dropout=0.0, post_mlp_dropout=0.1, prenet_dropout=0.1,
                    layerdrop=0.05, prenet_layerdrop=0.05, conv_pos_width=95, conv_pos_depth=5, conv_pos_groups=16),
    "decoder": dict(decoder_dim=384, num_layers=4, kernel_size=7, groups=16, residual=True, input_dropout=0.1),
    "masking": dict(mask_prob=0.5, block_length=5, mask_prob_adjust=0.05, clone_batch=8),
    "targets": dict(top_k=8, instance_norm_target_layer=True, layer_norm_target_layer=False,
                    layer_norm_targets=False, instance_norm_targets=False),
    # Plain Adam, whose weight decay covers every parameter (`decay_1d_weights`).
    "model": dict(mask_noise_std=0.01, loss_scale=None, cls_loss_weight=0.0, ema_decay=0.999, ema_end_decay=0.99999,
                  ema_anneal_end_step=75_000, min_target_std=0.1, min_pred_std=0.01, decay_1d_weights=True),
}

AUDIO_PRESETS = {
    "base": _AUDIO_BASE,
    # large_audio_only_task.yaml (Libri-light): no layerdrop, and the composite optimizer that
    # keeps 1-D weights out of weight decay; settings the spec does not list are base's.
    "large": _with(
        _AUDIO_BASE,
        encoder=dict(embed_dim=1024, depth=16, prenet_depth=8, num_heads=16, layerdrop=0.0, prenet_layerdrop=0.0),
        decoder=dict(decoder_dim=768),
        masking=dict(mask_prob=0.55, mask_prob_adjust=0.1, clone_batch=12),
        targets=dict(top_k=16),
        model=dict(ema_decay=0.9997, ema_end_decay=1.0, ema_anneal_end_step=300_000, decay_1d_weights=False),
    ),
    # A tiny speech model for a CPU (recipes/pretrain_audio.py): 64 conv channels, 1 s segments.
    "tiny": _with(
        _AUDIO_BASE,
        encoder=dict(feature_layers=((64, 10, 5),) + ((64, 3, 2),) * 4 + ((64, 2, 2),) * 2, embed_dim=128, depth=4,
                     num_heads=4),
        decoder=dict(decoder_dim=64, groups=8),
        masking=dict(clone_batch=4),
        targets=dict(top_k=4),
        model=dict(ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=2000),
    ),
    # The golden fixture's model at the time of writing (../shared/golden/audio_config.json); for tests.
    "tiny_test": _with(
        _AUDIO_BASE,
        encoder=dict(feature_layers=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2, embed_dim=48, depth=3,
                     num_heads=6, conv_pos_width=25, conv_pos_groups=4, dropout=0.0, attention_dropout=0.0,
                     post_mlp_dropout=0.0, prenet_dropout=0.0, layerdrop=0.0, prenet_layerdrop=0.0),
        decoder=dict(decoder_dim=24, groups=4, input_dropout=0.0),
        masking=dict(clone_batch=4),
        targets=dict(top_k=2),
        model=dict(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10),
    ),
}

PRESETS = {"image": IMAGE_PRESETS, "text": TEXT_PRESETS, "audio": AUDIO_PRESETS}


def preset_names():
    """Every built-in preset, as `"<modality>_<name>"` (e.g. `"image_base"`, `"text_large"`)."""
    return sorted(f"{modality}_{name}" for modality, table in PRESETS.items() for name in table)
