"""Sequence classification on a data2vec 2.0 text encoder, with the reference's fine-tuning head."""

import keras

from keras_d2v2.layers.random_state import derived_seed
from keras_d2v2.models.encoder_classifier import EncoderClassifier
from keras_d2v2.models.text_encoder import TextEncoder


@keras.saving.register_keras_serializable(package="keras_d2v2")
class TextClassifier(EncoderClassifier):
    """A `TextEncoder` with the reference's sentence-classification head (fairseq RoBERTa's).

    data2vec 2.0 fine-tunes text on GLUE with RoBERTa's `ClassificationHead`: the encoder output
    at the first position (the `<s>` token; text has no CLS token of its own), dropout, a dense
    layer of the model width with tanh, dropout, and a linear layer to `num_classes` logits; both
    dense layers start from normal(0, 0.02) weights and zero biases (`init_bert_params`). Padding
    (`pad_id` tokens) is hidden from attention by the encoder, so padding a sequence does not
    change its logits.

    Args:
        encoder: `TextEncoder`, e.g. `Data2Vec2.export_encoder()` of a pre-trained text model.
        num_classes: int, number of classes (logits out).
        dropout: float, the head's dropout (`pooler_dropout`; 0.0 in RoBERTa base).

    Example:
    >>> pretrained = keras.saving.load_model("runs/pretrain_text.keras")
    >>> classifier = TextClassifier.from_pretrained(pretrained, num_classes=6)
    >>> classifier.compile(optimizer="adamw", metrics=["accuracy"],
    ...                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> classifier.fit(token_ids, labels, epochs=5)
    """

    encoder_class = TextEncoder
    modality = "text"

    def __init__(self, *, encoder, num_classes, dropout=0.0, **kwargs):
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
        kwargs.setdefault("name", "text_classifier")
        super().__init__(encoder=encoder, num_classes=num_classes, **kwargs)
        self.dropout = dropout
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.pooler = keras.layers.Dense(
            encoder.embed_dim, activation="tanh", kernel_initializer=init, dtype=self.dtype_policy, name="pooler"
        )
        self.head = keras.layers.Dense(num_classes, kernel_initializer=init, dtype=self.dtype_policy, name="head")
        # Its own stream: the encoder's seed again would repeat the encoder's dropout draws.
        self.head_dropout = keras.layers.Dropout(
            dropout, seed=derived_seed(encoder.seed, "head_dropout"), dtype=self.dtype_policy
        )
        self.pooler.build((None, encoder.embed_dim))
        self.head.build((None, encoder.embed_dim))

    def call(self, tokens, training=None):
        first = self.encoder(tokens, training=training)[:, 0]
        pooled = self.pooler(self.head_dropout(first, training=training))
        return self.head(self.head_dropout(pooled, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(dropout=self.dropout)
        return config
