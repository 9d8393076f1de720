"""Your own images from a folder (class sub-folders give labels) as a tf.data pipeline, on any backend."""

import os
import pathlib

# The formats TensorFlow's `decode_image` reads (the same list as `keras.utils.image_dataset_from_directory`).
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}


def require_tensorflow(what):
    """Imports TensorFlow, or says that `what` needs it and how to install it."""
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            f"{what} builds a tf.data pipeline, which needs TensorFlow (an optional extra of keras_d2v2): "
            "`pip install 'keras-d2v2[tensorflow]'` (tensorflow-cpu is enough; the dataset then feeds "
            "`fit()` on any Keras backend)."
        ) from error
    return tf


def _visible(names):
    return sorted(name for name in names if not name.startswith("."))


def _image_files(folder, follow_links):
    files = []
    for root, dirs, names in os.walk(folder, followlinks=follow_links):
        dirs[:] = _visible(dirs)
        files += [os.path.join(root, n) for n in _visible(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(files)


def index_image_folder(directory, *, labels="inferred", follow_links=False):
    """`(paths, labels, class_names)` of the images under `directory`, as `load_image_folder` reads them.

    With `labels="inferred"`, the sub-folders of `directory` (sorted by name) are the classes and
    `labels` their indices, each image labelled by the sub-folder it is in (at any depth); a
    folder without sub-folders gives `labels=None, class_names=None`. With `labels=None`, every
    image under `directory` is listed, unlabelled. Hidden files and folders are skipped; file
    names are matched case-insensitively against `IMAGE_EXTENSIONS`.
    """
    if labels not in ("inferred", None):
        raise ValueError(f"`labels` must be 'inferred' (class sub-folders) or None (no labels), got {labels!r}.")
    directory = pathlib.Path(directory).expanduser()
    if not directory.exists():
        raise FileNotFoundError(f"The image folder {directory} does not exist.")
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a folder: pass the folder that holds the images.")
    entries = _visible(os.listdir(directory))
    subfolders = [n for n in entries if (directory / n).is_dir()]
    accepted = ", ".join(IMAGE_EXTENSIONS)
    if labels == "inferred" and subfolders:
        loose = [n for n in entries if n.lower().endswith(IMAGE_EXTENSIONS) and (directory / n).is_file()]
        if loose:
            raise ValueError(
                f"{directory} holds both class sub-folders ({', '.join(subfolders[:3])}, ...) and images at its "
                f"top level ({', '.join(loose[:3])}, ...). With labels='inferred' each sub-folder is a class: "
                "move the loose images into one, or pass labels=None to read every image without labels."
            )
        paths, indices = [], []
        for index, name in enumerate(subfolders):
            found = _image_files(directory / name, follow_links)
            paths += found
            indices += [index] * len(found)
        if not paths:
            raise ValueError(
                f"No images found in the class sub-folders of {directory} ({', '.join(subfolders[:5])}"
                f"{', ...' if len(subfolders) > 5 else ''}). Accepted extensions: {accepted}."
            )
        return paths, indices, subfolders
    paths = _image_files(directory, follow_links)
    if not paths:
        raise ValueError(f"No images found in {directory} (searched recursively). Accepted extensions: {accepted}.")
    return paths, None, None


def load_image_folder(
    directory,
    *,
    image_size,
    channels=3,
    labels="inferred",
    batch_size=None,
    shuffle=True,
    seed=None,
    interpolation="bilinear",
    crop_to_aspect_ratio=False,
    follow_links=False,
):
    """Images from a folder as a `tf.data.Dataset`, which `fit()` takes on every Keras backend.

    Layout: `directory/<class>/**/<image>` gives `(image, label)` pairs, the label being the index
    of the class sub-folder in sorted order (`dataset.class_names`); a flat folder of images (or
    `labels=None`) gives images alone. Images are decoded by TensorFlow (`IMAGE_EXTENSIONS`:
    BMP, GIF (first frame), JPEG, PNG) to `channels` channels, as float32 `(H, W, channels)` with
    values in [0, 255], so TensorFlow is needed (`pip install 'keras-d2v2[tensorflow]'`;
    tensorflow-cpu is enough) whichever backend trains the model.

    `image_size=(height, width)` (or an int for square) resizes every image as
    `keras.utils.image_dataset_from_directory` does (`keras.layers.Resizing`; with
    `crop_to_aspect_ratio=True` the largest central crop of the target aspect ratio is resized,
    without distortion), and the same images come out. `image_size=None` keeps each image at its
    own size, for the reference's random-resized-crop augmentation: map
    `keras_d2v2.data.pretraining_augmentation()` over the unbatched dataset, then batch.

    Args:
        directory: the folder.
        image_size: `(height, width)`, an int, or None to keep each image's own size.
        channels: 1 (grayscale), 3 (RGB) or 4 (RGBA).
        labels: `"inferred"` (class sub-folders, when there are any) or None (no labels).
        batch_size: int to batch the dataset (needs `image_size`), or None for single images.
        shuffle: whether to shuffle the file order, anew each epoch (before decoding).
        seed: int, seed of the shuffling.
        interpolation: of the resizing (see `keras.layers.Resizing`).
        crop_to_aspect_ratio: see above.
        follow_links: whether to follow symbolic links to sub-folders.

    Returns:
        A `tf.data.Dataset` with attributes `class_names` (None without labels) and `file_paths`.

    Example:
    >>> train = load_image_folder("imagenet/train", image_size=None, seed=0)   # (image, label)
    >>> augment = keras_d2v2.data.pretraining_augmentation(224, seed=0)
    >>> images = train.map(lambda x, y: augment(x)).batch(256, drop_remainder=True).prefetch(2)
    >>> model.fit(images, epochs=800)
    """
    if channels not in _COLOR_MODES:
        raise ValueError(f"`channels` must be 1 (grayscale), 3 (RGB) or 4 (RGBA), got {channels!r}.")
    if image_size is not None:
        image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(image_size) != 2 or any(int(s) != s or s < 1 for s in image_size):
            raise ValueError(
                f"`image_size` must be (height, width) of positive integers, an int or None; got {image_size}."
            )
    if batch_size is not None and image_size is None:
        raise ValueError(
            "Images of their own sizes cannot be batched: pass `image_size`, or map a crop such as "
            "`pretraining_augmentation()` over the unbatched dataset and batch after it."
        )
    paths, indices, class_names = index_image_folder(directory, labels=labels, follow_links=follow_links)
    tf = require_tensorflow("load_image_folder")
    import keras

    resize = None
    if image_size is not None:
        resize = keras.layers.Resizing(
            *image_size, interpolation=interpolation, crop_to_aspect_ratio=crop_to_aspect_ratio, dtype="float32"
        )

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        image = tf.cast(image, "float32")
        image.set_shape((None, None, channels))
        if resize is not None:
            image = resize(image)
            image.set_shape(image_size + (channels,))
        return image

    slices = paths if indices is None else (paths, tf.constant(indices, "int32"))
    dataset = tf.data.Dataset.from_tensor_slices(slices)
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if indices is None:
        dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(lambda path, label: (load(path), label), num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size is not None:
        dataset = dataset.batch(batch_size)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    dataset.class_names = class_names
    dataset.file_paths = paths
    return dataset
