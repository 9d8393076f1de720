"""Image classification on a data2vec 2.0 image encoder, with the reference's fine-tuning head."""

import keras
from keras import ops

from keras_d2v2.models.image_encoder import ImageEncoder


@keras.saving.register_keras_serializable(package="keras_d2v2")
class ImageClassifier(keras.Model):
    """An `ImageEncoder` with the reference's fine-tuning head (`mae_image_classification`).

    The head mean-pools the patch tokens of the encoder's last block (the CLS token is dropped),
    applies a LayerNorm (`fc_norm`, eps 1e-6) and a linear layer (truncated-normal init, std
    0.02, zero bias) to `num_classes` logits. Train it with
    `loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)` and, for the reference's
    layer-wise learning-rate decay, `keras_d2v2.optimizers.LayerDecayAdamW` with
    `lr_multipliers=classifier.layer_decay_multipliers(0.65)` (0.75 for large/huge).

    Args:
        encoder: `ImageEncoder`, e.g. `Data2Vec2.export_encoder()` of a pre-trained model.
        num_classes: int, number of classes (logits out).
        norm_eps: float, epsilon of the head's LayerNorm.

    Example:
    >>> pretrained = keras.saving.load_model("runs/pretrain_image.keras")
    >>> classifier = ImageClassifier.from_pretrained(pretrained, num_classes=10, drop_path_rate=0.1)
    >>> classifier.compile(optimizer="adamw", metrics=["accuracy"],
    ...                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> classifier.fit(images, labels, epochs=10)
    """

    def __init__(self, *, encoder, num_classes, norm_eps=1e-6, **kwargs):
        if not isinstance(encoder, ImageEncoder):
            raise ValueError(
                f"`encoder` must be an `ImageEncoder` (an image model's encoder), got "
                f"{type(encoder).__name__}; ImageClassifier classifies images only."
            )
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}.")
        kwargs.setdefault("name", "image_classifier")
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_classes = num_classes
        self.norm_eps = norm_eps
        self.fc_norm = keras.layers.LayerNormalization(epsilon=norm_eps, dtype=self.dtype_policy, name="fc_norm")
        self.head = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=self.dtype_policy,
            name="head",
        )
        if not encoder.built:
            encoder.build()
        self.fc_norm.build((None, encoder.embed_dim))
        self.head.build((None, encoder.embed_dim))

    @classmethod
    def from_pretrained(cls, pretrained, *, num_classes, **encoder_overrides):
        """A classifier on a copy of the student encoder of `pretrained`, a `Data2Vec2` image model
        or the path of one saved with `model.save()`. `encoder_overrides` (e.g.
        `drop_path_rate=0.1`, the reference's base setting) change the copy's configuration."""
        from keras_d2v2.models.data2vec2 import Data2Vec2

        if isinstance(pretrained, str):
            pretrained = keras.saving.load_model(pretrained)
        if not isinstance(pretrained, Data2Vec2):
            raise ValueError(f"`pretrained` must be a `Data2Vec2` model or its path, got {type(pretrained).__name__}.")
        return cls(encoder=pretrained.export_encoder(**encoder_overrides), num_classes=num_classes)

    def call(self, images, training=None):
        hidden = self.encoder(images, training=training)
        pooled = ops.mean(hidden[:, self.encoder.num_extra_tokens :], axis=1)
        return self.head(self.fc_norm(pooled))

    def compile(self, optimizer="adamw", **kwargs):
        """As `keras.Model.compile`; 1-D weights (biases, LayerNorm) are kept out of the optimizer's
        weight decay, as in the reference's fine-tuning parameter groups."""
        super().compile(optimizer=optimizer, **kwargs)
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if getattr(inner, "weight_decay", None):
            inner.exclude_from_weight_decay(var_list=[v for v in self.trainable_variables if len(v.shape) <= 1])

    def compile_from_config(self, config):
        # Keras skips compile() on load when it is overridden, which would drop the optimizer state.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def layer_decay_multipliers(self, layer_decay):
        """`{variable.path: multiplier}` for `LayerDecayAdamW`, the reference's layer-wise decay.

        Block `i` of the `n` transformer blocks (context-encoder blocks first, then the main ones)
        gets `layer_decay ** (n - i)`; as in the reference, only the blocks are scaled: the patch
        embedding, CLS token, context LayerNorm and the head keep the full learning rate."""
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"`layer_decay` must be in (0, 1], got {layer_decay}.")
        blocks = self.encoder.prenet_blocks + self.encoder.blocks
        multipliers = {}
        for i, block in enumerate(blocks):
            for variable in block.trainable_variables:
                if variable.path in multipliers:
                    raise ValueError(f"Two weights share the path {variable.path!r}; rename the layers.")
                multipliers[variable.path] = layer_decay ** (len(blocks) - i)
        return multipliers

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            num_classes=self.num_classes,
            norm_eps=self.norm_eps,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
