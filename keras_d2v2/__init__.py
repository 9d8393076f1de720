"""keras_d2v2: data2vec 2.0 self-supervised pre-training for Keras 3 (TensorFlow, JAX, PyTorch)."""

from keras_d2v2 import callbacks, data, layers, optimizers, presets
from keras_d2v2.callbacks import (
    EMATeacher,
    InvalidInputBatch,
    KNNMonitor,
    RepresentationCollapse,
    TrainingDiverged,
    TrainingGuard,
)
from keras_d2v2.data import ShuffledBatches
from keras_d2v2.layers import (
    ALiBiBias,
    BlockMasking1D,
    ContextualizedTargets,
    ConvDecoder1D,
    ConvDecoder2D,
    ConvFeatureExtractor,
    ConvPositionalEncoding,
    InverseBlockMasking,
    PatchEmbedding,
    PixelTargets,
    RandomMasking,
    ReplicaSeedGenerator,
    TransformerBlock,
    TransformerDecoder,
)
from keras_d2v2.models import (
    AudioClassifier,
    AudioEncoder,
    Encoder,
    ImageClassifier,
    ImageEncoder,
    TextClassifier,
    TextEncoder,
)
from keras_d2v2.optimizers import LayerDecayAdamW
from keras_d2v2.pretraining.data2vec2 import Data2Vec2
from keras_d2v2.pretraining.ema import TeacherEMA
from keras_d2v2.tokenizers import ByteLevelBPETokenizer
from keras_d2v2.version import __version__
