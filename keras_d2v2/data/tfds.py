"""Image datasets in TensorFlow Datasets format, read offline unless a download is asked for."""

import os
import pathlib

from keras_d2v2.data.image_folder import require_tensorflow


def _require_tfds():
    require_tensorflow("load_tfds")
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "load_tfds needs tensorflow-datasets, an optional extra of keras_d2v2: "
            "`pip install 'keras-d2v2[datasets]'`. For a folder of image files, "
            "`keras_d2v2.data.load_image_folder` needs only TensorFlow."
        ) from error
    return tfds


def _looks_like_path(name):
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.isdir(name)


def _builder_from_directory(tfds, directory):
    directory = pathlib.Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"The prepared dataset folder {directory} does not exist.")
    if (directory / "dataset_info.json").is_file():
        return tfds.builder_from_directory(str(directory))
    # A dataset's folder rather than one of its versions: `<name>/[<config>/]<version>/`.
    patterns = ("*/dataset_info.json", "*/*/dataset_info.json")
    found = sorted({path.parent for pattern in patterns for path in directory.glob(pattern)})
    if len(found) == 1:
        return tfds.builder_from_directory(str(found[0]))
    if found:
        raise ValueError(
            f"{directory} holds several prepared datasets or versions: {', '.join(map(str, found))}. Pass one of them."
        )
    raise FileNotFoundError(
        f"{directory} is not a prepared TFDS dataset (no dataset_info.json in it or in its version "
        "sub-folders). Prepare one with `tfds build <name> --data_dir <dir>` and pass "
        "`<dir>/<name>/<version>`, or pass the name with `data_dir=<dir>`."
    )


def load_tfds(
    name_or_dir,
    *,
    split,
    data_dir=None,
    download=False,
    image_key="image",
    label_key="label",
    image_size=None,
    batch_size=None,
    shuffle_files=False,
    seed=None,
):
    """A TensorFlow Datasets image dataset as a `tf.data.Dataset` of float32 images (and labels).

    `name_or_dir` is a TFDS name (`"cifar10"`, `"imagenet2012"`, `"name/config:version"`), looked
    up in `data_dir` (default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`), or the folder of a
    prepared dataset (`<data_dir>/<name>/<version>`, or a dataset's folder holding one version).
    Nothing is downloaded unless `download=True` (and never from TFDS' GCS mirror: `try_gcs` is
    off), so a dataset that is not prepared fails at once, saying where it was looked for and how
    to prepare it, instead of retrying network calls. Datasets built with your own TFDS builder
    or `tfds.dataset_builders.store_as_tfds_dataset` load the same way.

    Needs tensorflow-datasets (`pip install 'keras-d2v2[datasets]'`, which also needs
    TensorFlow); the dataset feeds `fit()` on every Keras backend.

    Args:
        name_or_dir: a TFDS name or a prepared dataset's folder.
        split: e.g. `"train"`, `"validation[:10%]"` (TFDS' split syntax).
        data_dir: where prepared datasets are (for a name).
        download: whether to download and prepare a dataset that is not there yet.
        image_key: the image feature.
        label_key: the label feature, used when the dataset has it; None for images alone.
        image_size: `(height, width)` or an int to resize every image (`keras.layers.Resizing`,
            bilinear), or None to keep each image's own size (then map a crop, e.g.
            `pretraining_augmentation()`, before batching).
        batch_size: int to batch (needs `image_size` unless all images have one size).
        shuffle_files: whether to read the dataset's files in a shuffled order.
        seed: int, seed of the file order.

    Returns:
        A `tf.data.Dataset` yielding `(image, label)` or `image`; float32 images `(H, W, C)` with
        values in [0, 255]. Attributes: `info` (the `tfds.core.DatasetInfo`), `class_names`
        (of a `ClassLabel` label, else None).

    Example:
    >>> train = load_tfds("imagenet2012", split="train", data_dir="/data/tfds", shuffle_files=True)
    >>> augment = keras_d2v2.data.pretraining_augmentation(224, seed=0)
    >>> images = train.map(lambda x, y: augment(x)).batch(256, drop_remainder=True).prefetch(2)
    """
    tfds = _require_tfds()
    tf = require_tensorflow("load_tfds")
    import keras

    name_or_dir = os.fspath(name_or_dir)
    if _looks_like_path(name_or_dir):
        builder = _builder_from_directory(tfds, name_or_dir)
    else:
        where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        try:
            builder = tfds.builder(name_or_dir, data_dir=data_dir, try_gcs=False)
        except tfds.core.DatasetNotFoundError as error:
            raise ValueError(
                f"'{name_or_dir}' is neither a tensorflow-datasets catalogue name nor a dataset prepared in "
                f"{where}. Check the name (https://www.tensorflow.org/datasets/catalog), pass the right "
                "`data_dir`, or pass the prepared dataset's folder."
            ) from error
        if not builder.is_prepared():
            if not download:
                raise FileNotFoundError(
                    f"'{name_or_dir}' is not prepared in {where} (looked for {builder.data_dir}), and "
                    "`download=False`. Prepare it once with `tfds build "
                    f"{name_or_dir} --data_dir {where}` (some datasets, e.g. imagenet2012, need their archives "
                    "placed in <data_dir>/downloads/manual first), or pass `download=True`."
                )
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
    features = builder.info.features
    if image_key not in features:
        raise ValueError(f"The dataset has no feature '{image_key}' (`image_key`); its features: {sorted(features)}.")
    label_key = label_key if label_key is not None and label_key in features else None
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    dataset = builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config)

    resize = None
    if image_size is not None:
        image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        resize = keras.layers.Resizing(*image_size, dtype="float32")

    def select(example):
        image = tf.cast(example[image_key], "float32")
        if resize is not None:
            image = resize(image)
        return image if label_key is None else (image, example[label_key])

    dataset = dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size is not None:
        dataset = dataset.batch(batch_size)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    dataset.info = builder.info
    label = features[label_key] if label_key is not None else None
    dataset.class_names = list(label.names) if isinstance(label, tfds.features.ClassLabel) else None
    return dataset
