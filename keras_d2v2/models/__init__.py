from keras_d2v2.models.audio_classifier import AudioClassifier
from keras_d2v2.models.audio_encoder import AudioEncoder
from keras_d2v2.models.encoder import Encoder
from keras_d2v2.models.image_classifier import ImageClassifier
from keras_d2v2.models.image_encoder import ImageEncoder
from keras_d2v2.models.text_classifier import TextClassifier
from keras_d2v2.models.text_encoder import TextEncoder
