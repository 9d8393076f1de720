from keras_d2v2.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomResizedCrop, pretraining_augmentation
from keras_d2v2.data.fashion_mnist import FASHION_MNIST_DIR, load_fashion_mnist, standardize_images
from keras_d2v2.data.image_folder import IMAGE_EXTENSIONS, index_image_folder, load_image_folder
from keras_d2v2.data.python_docs import (
    DOC_SECTIONS,
    PYTHON_DOCS_DIR,
    held_out_documents,
    load_python_docs,
    section_classification,
)
from keras_d2v2.data.shuffled_batches import SetDataEpoch, ShuffledBatches
from keras_d2v2.data.tfds import load_tfds
