"""Tokenizers for the text model (need the `text` extra: `pip install 'keras-d2v2[text]'`)."""

from keras_d2v2.tokenizers.bpe import ByteLevelBPETokenizer
