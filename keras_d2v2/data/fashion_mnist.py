"""Fashion-MNIST from local IDX files (Debian's `dataset-fashion-mnist` installs them offline)."""

import gzip
import os
import pathlib

import numpy as np

FASHION_MNIST_DIR = pathlib.Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
# Mean and std of the Fashion-MNIST training pixels scaled to [0, 1].
MEAN, STD = 0.2860, 0.3530


def _read_idx(path):
    data = gzip.open(path).read()
    ndim = data[3]
    shape = np.frombuffer(data, ">u4", ndim, 4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(directory=None):
    """Returns `(x_train, y_train), (x_test, y_test)` as uint8 images (N, 28, 28) and labels.

    Reads `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` from `directory` (default
    `$FASHION_MNIST_DIR` or `/usr/share/datasets/fashion-mnist`, where
    `apt-get install dataset-fashion-mnist` puts them). Nothing is downloaded.
    """
    directory = pathlib.Path(directory or FASHION_MNIST_DIR)
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    missing = [n for n in names if not (directory / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} not found in {directory}. Install them with "
            "`apt-get install dataset-fashion-mnist`, or point FASHION_MNIST_DIR at a folder holding the IDX files."
        )
    x_train, y_train, x_test, y_test = (_read_idx(directory / n) for n in names)
    return (x_train, y_train), (x_test, y_test)


def standardize_images(images):
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1), scaled to [0, 1] and standardized."""
    return ((images.astype("float32") / 255.0 - MEAN) / STD)[..., None]
