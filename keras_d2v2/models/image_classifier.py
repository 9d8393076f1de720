"""Image classification on a data2vec 2.0 image encoder, with the reference's fine-tuning head."""

import keras

from keras_d2v2.models.encoder_classifier import EncoderClassifier
from keras_d2v2.models.image_encoder import ImageEncoder


@keras.saving.register_keras_serializable(package="keras_d2v2")
class ImageClassifier(EncoderClassifier):
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

    encoder_class = ImageEncoder
    modality = "images"

    def __init__(self, *, encoder, num_classes, norm_eps=1e-6, **kwargs):
        kwargs.setdefault("name", "image_classifier")
        super().__init__(encoder=encoder, num_classes=num_classes, **kwargs)
        self.norm_eps = norm_eps
        self.fc_norm, self.head = self.norm_and_linear_head(norm_eps)

    def call(self, images, training=None):
        hidden = self.encoder(images, training=training)
        return self.head(self.fc_norm(self.encoder.mean_pool(hidden, images)))

    def get_config(self):
        config = super().get_config()
        config.update(norm_eps=self.norm_eps)
        return config
