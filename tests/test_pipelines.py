"""Image input pipelines: image folders, TFDS datasets, and fit() from tf.data, PyDataset and torch DataLoader."""

import math
import sys

import keras
import numpy as np
import pytest

from keras_d2v2 import Data2Vec2
from keras_d2v2.data import load_image_folder, load_tfds, pretraining_augmentation

tf = pytest.importorskip("tensorflow")


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.io.write_file(str(path), tf.io.encode_png(array))


def random_image(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    """cat/ (2 images, one in a nested folder) and dog/ (3 images), of different sizes."""
    root = tmp_path_factory.mktemp("classes")
    arrays = {
        "cat/a.png": random_image((34, 40, 3), 0),
        "cat/more/b.PNG": random_image((32, 32, 3), 1),
        "dog/c.png": random_image((36, 33, 3), 2),
        "dog/d.png": random_image((40, 32, 3), 3),
        "dog/e.png": random_image((32, 45, 3), 4),
    }
    for name, array in arrays.items():
        write_png(root / name, array)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    write_png(root / ".hidden" / "x.png", random_image((8, 8, 3), 5))
    return root, arrays


@pytest.fixture(scope="module")
def net():
    """One model for all the fit() tests: each compiles its step once per input structure."""
    model = Data2Vec2.image("tiny_test", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def fit_two_steps(model, data):
    """Fits one epoch of two batches; returns the number of updates made and the loss."""
    before = int(keras.ops.convert_to_numpy(model.num_updates))
    history = model.fit(data, epochs=1, verbose=0)
    return int(keras.ops.convert_to_numpy(model.num_updates)) - before, history.history["loss"][-1]


# ------------------------------------------------------------------------------- image folders
def test_class_folders_give_labels_at_each_images_own_size(class_folder):
    root, arrays = class_folder
    dataset = load_image_folder(root, image_size=None, shuffle=False)
    assert dataset.class_names == ["cat", "dog"]
    samples = list(dataset.as_numpy_iterator())
    names = sorted(arrays, key=lambda n: str(root / n))  # files in sorted path order, class by class
    assert [label for _, label in samples] == [0, 0, 1, 1, 1]
    for (image, _), name in zip(samples, names):
        assert image.dtype == np.float32
        np.testing.assert_array_equal(image, arrays[name])
    assert dataset.file_paths == [str(root / n) for n in names]


def test_resized_images_are_kerass(class_folder):
    root, _ = class_folder
    ours = load_image_folder(root, image_size=(16, 12), shuffle=False, batch_size=2)
    keras_ds = keras.utils.image_dataset_from_directory(
        root, image_size=(16, 12), shuffle=False, batch_size=2, verbose=False
    )
    for (x, y), (kx, ky) in zip(ours.as_numpy_iterator(), keras_ds.as_numpy_iterator()):
        np.testing.assert_allclose(x, kx, atol=1e-4)
        np.testing.assert_array_equal(y, ky)
    gray = load_image_folder(root, image_size=8, channels=1, labels=None, shuffle=True, seed=0)
    images = list(gray.as_numpy_iterator())
    assert len(images) == 5 and all(i.shape == (8, 8, 1) for i in images) and gray.class_names is None


def test_flat_folder_gives_images_only(tmp_path):
    for i in range(3):
        write_png(tmp_path / f"{i}.png", random_image((10, 12, 3), i))
    dataset = load_image_folder(tmp_path, image_size=(10, 12), shuffle=False, batch_size=3)
    (batch,) = list(dataset.as_numpy_iterator())
    assert batch.shape == (3, 10, 12, 3) and dataset.class_names is None
    np.testing.assert_array_equal(batch[1], random_image((10, 12, 3), 1))


def test_image_folder_errors(tmp_path, class_folder, monkeypatch):
    with pytest.raises(FileNotFoundError, match=f"image folder {tmp_path / 'nope'} does not exist"):
        load_image_folder(tmp_path / "nope", image_size=8)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "x.txt").write_text("")
    message = r"No images found in the class sub-folders of .*empty \(a\). Accepted extensions: .bmp, .gif"
    with pytest.raises(ValueError, match=message):
        load_image_folder(tmp_path / "empty", image_size=8)
    with pytest.raises(ValueError, match=r"No images found in .*empty \(searched recursively\). Accepted extensions"):
        load_image_folder(tmp_path / "empty", image_size=8, labels=None)
    write_png(tmp_path / "mixed" / "cls" / "a.png", random_image((4, 4, 3), 0))
    write_png(tmp_path / "mixed" / "loose.png", random_image((4, 4, 3), 0))
    with pytest.raises(ValueError, match="both class sub-folders .* and images at its top level"):
        load_image_folder(tmp_path / "mixed", image_size=8)
    root, _ = class_folder
    with pytest.raises(ValueError, match="cannot be batched"):
        load_image_folder(root, image_size=None, batch_size=2)
    with pytest.raises(ValueError, match="`channels` must be 1"):
        load_image_folder(root, image_size=8, channels=2)
    with pytest.raises(ValueError, match="`labels` must be 'inferred'"):
        load_image_folder(root, image_size=8, labels=[0, 1])
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match=r"needs TensorFlow .*pip install 'keras-d2v2\[tensorflow\]'"):
        load_image_folder(root, image_size=8)


# ------------------------------------------------------------------------------------- TFDS
@pytest.fixture(scope="module")
def tfds_dataset(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")
    data_dir = tmp_path_factory.mktemp("tfds")
    arrays = [random_image((8, 8, 3), i) for i in range(6)]
    features = tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(names=["a", "b", "c"])}
    )
    tfds.dataset_builders.store_as_tfds_dataset(
        name="tiny_images",
        version="1.0.0",
        features=features,
        split_datasets={"train": [(i, {"image": a, "label": i % 3}) for i, a in enumerate(arrays)]},
        data_dir=str(data_dir),
        disable_shuffling=True,
    )
    return data_dir, arrays


def test_tfds_by_name_and_by_folder(tfds_dataset):
    data_dir, arrays = tfds_dataset
    dataset = load_tfds("tiny_images", split="train", data_dir=str(data_dir))
    samples = list(dataset.as_numpy_iterator())
    assert dataset.class_names == ["a", "b", "c"] and [int(y) for _, y in samples] == [0, 1, 2, 0, 1, 2]
    for (image, _), array in zip(samples, arrays):
        assert image.dtype == np.float32
        np.testing.assert_array_equal(image, array)
    for folder in (data_dir / "tiny_images" / "1.0.0", data_dir / "tiny_images"):
        dataset = load_tfds(folder, split="train[:4]", label_key=None, image_size=4, batch_size=4)
        (batch,) = list(dataset.as_numpy_iterator())
        assert batch.shape == (4, 4, 4, 3)


def test_tfds_errors(tfds_dataset, tmp_path, monkeypatch):
    data_dir, _ = tfds_dataset
    # A catalogue dataset that is not prepared fails at once, without touching the network.
    with pytest.raises(FileNotFoundError, match=f"'mnist' is not prepared in {tmp_path}.*tfds build mnist --data_dir"):
        load_tfds("mnist", split="train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="neither a tensorflow-datasets catalogue name nor a dataset prepared in"):
        load_tfds("no_such_dataset_xyz", split="train", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="is not a prepared TFDS dataset"):
        load_tfds(tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tfds(tmp_path / "missing", split="train")
    with pytest.raises(ValueError, match=r"no feature 'img' \(`image_key`\); its features: \['image', 'label'\]"):
        load_tfds("tiny_images", split="train", data_dir=str(data_dir), image_key="img")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"needs tensorflow-datasets.*pip install 'keras-d2v2\[datasets\]'"):
        load_tfds("tiny_images", split="train", data_dir=str(data_dir))


# ------------------------------------------------------- fit() from each kind of input pipeline
def test_fit_from_an_image_folder_through_tf_data_with_the_reference_augmentation(class_folder, net):
    root, _ = class_folder
    augment = pretraining_augmentation(32, seed=0)
    dataset = load_image_folder(root, image_size=None, seed=0).map(lambda x, y: augment(x))
    dataset = dataset.batch(2, drop_remainder=True)
    steps, loss = fit_two_steps(net, dataset)
    assert steps == 2 and math.isfinite(loss)


def test_fit_from_tf_data_with_labels(net):
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(4))).batch(2)
    steps, loss = fit_two_steps(net, dataset)  # labels are ignored
    assert steps == 2 and math.isfinite(loss)


class Batches(keras.utils.PyDataset):
    def __init__(self, images, batch_size):
        super().__init__()
        self.images, self.batch_size = images, batch_size

    def __len__(self):
        return len(self.images) // self.batch_size

    def __getitem__(self, index):
        return self.images[index * self.batch_size : (index + 1) * self.batch_size]


def test_fit_from_a_py_dataset(net):
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    steps, loss = fit_two_steps(net, Batches(images, 2))
    assert steps == 2 and math.isfinite(loss)


def test_fit_from_a_torch_data_loader(net):
    torch = pytest.importorskip("torch")
    images = torch.randn(4, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=2)
    steps, loss = fit_two_steps(net, loader)
    assert steps == 2 and math.isfinite(loss)
