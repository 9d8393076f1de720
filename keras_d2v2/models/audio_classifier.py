"""Utterance classification on a data2vec 2.0 speech encoder."""

import keras

from keras_d2v2.models.audio_encoder import AudioEncoder
from keras_d2v2.models.encoder_classifier import EncoderClassifier


@keras.saving.register_keras_serializable(package="keras_d2v2")
class AudioClassifier(EncoderClassifier):
    """An `AudioEncoder` with an utterance-level classification head.

    The reference fine-tunes speech models for recognition with CTC; this package does not. For
    labels of a whole clip (speaker, language, keyword) the head is the image one applied over
    time: the encoder's outputs averaged over the clip's real frames (frames past the real
    samples of a padded clip are left out), a LayerNorm (`fc_norm`) and a linear layer to
    `num_classes` logits. A padded clip therefore gets the logits of the unpadded one.

    Inputs: float waveforms `(B, samples)` at the encoder's sample rate, or a dict with them under
    `"audio"` and an optional `"padding_mask"` `(B, samples)`, True at padding: the inputs of
    `Data2Vec2.audio`.

    Args:
        encoder: `AudioEncoder`, e.g. `Data2Vec2.export_encoder()` of a pre-trained audio model.
        num_classes: int, number of classes (logits out).
        norm_eps: float, epsilon of the head's LayerNorm.

    Example:
    >>> pretrained = keras.saving.load_model("runs/pretrain_audio.keras")
    >>> classifier = AudioClassifier.from_pretrained(pretrained, num_classes=5)
    >>> classifier.compile(optimizer="adamw", metrics=["accuracy"],
    ...                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> classifier.fit({"audio": clips, "padding_mask": padding}, labels, epochs=5)
    """

    encoder_class = AudioEncoder
    modality = "audio"

    def __init__(self, *, encoder, num_classes, norm_eps=1e-5, **kwargs):
        kwargs.setdefault("name", "audio_classifier")
        super().__init__(encoder=encoder, num_classes=num_classes, **kwargs)
        self.norm_eps = norm_eps
        self.fc_norm, self.head = self.norm_and_linear_head(norm_eps)

    def call(self, inputs, training=None):
        if isinstance(inputs, dict):
            unknown = sorted(set(inputs) - {"audio", "padding_mask"})
            if unknown or "audio" not in inputs:
                raise ValueError(
                    f"AudioClassifier takes a dict with 'audio' and optionally 'padding_mask', got keys {sorted(inputs)}."
                )
            audio, padding_mask = inputs["audio"], inputs.get("padding_mask")
        else:
            audio, padding_mask = inputs, None
        hidden = self.encoder(audio, training=training, padding_mask=padding_mask)
        return self.head(self.fc_norm(self.encoder.mean_pool(hidden, audio, padding_mask)))

    def get_config(self):
        config = super().get_config()
        config.update(norm_eps=self.norm_eps)
        return config
