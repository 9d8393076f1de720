"""The reference's image pre-training augmentation: RandomResizedCrop (PIL's resampling), flip, normalization."""

import keras
import numpy as np
import pytest

from keras_d2v2.data import IMAGENET_MEAN, IMAGENET_STD, RandomResizedCrop, pretraining_augmentation


def images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype("uint8")


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_shapes_and_dtypes():
    augment = pretraining_augmentation(8, seed=0)
    out = augment(images((3, 20, 30, 3)))
    assert tuple(out.shape) == (3, 8, 8, 3) and keras.backend.standardize_dtype(out.dtype) == "float32"
    assert tuple(augment(images((20, 30, 3))).shape) == (8, 8, 3)
    gray = pretraining_augmentation((6, 10), mean=(0.5,), std=(0.25,), seed=0)
    assert tuple(gray(images((2, 12, 12, 1))).shape) == (2, 6, 10, 1)
    assert RandomResizedCrop(5, 7).compute_output_shape((None, 20, 30, 3)) == (None, 5, 7, 3)


def test_deterministic_under_a_seed():
    x = images((4, 24, 24, 3))
    first, second = pretraining_augmentation(8, seed=1), pretraining_augmentation(8, seed=1)
    a = to_numpy(first(x))
    np.testing.assert_array_equal(a, to_numpy(second(x)))
    assert not np.array_equal(a, to_numpy(first(x)))  # each call draws new crops
    assert not np.array_equal(a, to_numpy(pretraining_augmentation(8, seed=2)(x)))


def test_regions_follow_torchvision():
    layer = RandomResizedCrop(8, 8, seed=0)
    top, left, h, w = (to_numpy(v) for v in layer._regions(layer._draws(2000), 2000, 60, 90))
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + h <= 60) and np.all(left + w <= 90)
    area, aspect = h * w / (60 * 90), w / h
    # Sides are rounded to whole pixels, so the bounds hold up to half a pixel per side.
    assert 0.2 - 0.03 <= area.min() < 0.25 and 0.8 < area.max() <= 1.0
    assert 3 / 4 - 0.05 <= aspect.min() and aspect.max() <= 4 / 3 + 0.05
    assert len(np.unique(top)) > 20 and len(np.unique(left)) > 20
    # The deterministic crop (training=False, and the fallback): central, at the closest allowed aspect ratio.
    wide = [float(to_numpy(v)[0]) for v in layer._regions(None, 1, 60, 90)]
    assert wide == [0.0, 5.0, 60.0, 80.0]
    square = [float(to_numpy(v)[0]) for v in layer._regions(None, 1, 30, 30)]
    assert square == [0.0, 0.0, 30.0, 30.0]


class FixedRegion(RandomResizedCrop):
    def __init__(self, region, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.region = region

    def _regions(self, draws, batch, in_height, in_width):
        return [self.backend.numpy.array([float(v)]) for v in self.region]


def pil_weights(in_size, out_size, interpolation):
    """Pillow's resampling coefficients (`precompute_coeffs` in libImaging/Resample.c), loop by loop."""
    support, a = {"bicubic": 2.0, "bilinear": 1.0}[interpolation], -0.5

    def kernel(x):
        x = abs(x)
        if interpolation == "bilinear":
            return max(1.0 - x, 0.0)
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a if x < 2.0 else 0.0

    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = (i + 0.5) * scale
        low = max(int(center - support * filter_scale + 0.5), 0)
        high = min(int(center + support * filter_scale + 0.5), in_size)
        for j in range(low, high):
            weights[i, j] = kernel((j - center + 0.5) / filter_scale)
        weights[i] /= weights[i].sum()
    return weights


REGIONS = [((3, 5, 20, 30), (8, 12)), ((10, 2, 6, 5), (16, 9)), ((0, 0, 40, 40), (40, 40)), ((1, 7, 33, 11), (5, 30))]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("region, size", REGIONS)
def test_resamples_as_pil_crop_then_resize(region, size, interpolation):
    """torchvision's RandomResizedCrop on a PIL image is `img.crop(box).resize(size)`: Pillow resamples
    the crop horizontally, clips to [0, 255], then vertically, and clips."""
    x = images((40, 40, 3), seed=3)  # noise: large overshoots, so the clipping matters
    top, left, h, w = region
    crop = x[top : top + h, left : left + w].astype("float64")
    rows, cols = pil_weights(h, size[0], interpolation), pil_weights(w, size[1], interpolation)
    horizontal = np.clip(np.einsum("jw,hwc->hjc", cols, crop), 0, 255)
    expected = np.clip(np.einsum("ih,hjc->ijc", rows, horizontal), 0, 255)
    out = to_numpy(FixedRegion(region, *size, interpolation=interpolation)(x[None]))[0]
    np.testing.assert_allclose(out, expected, atol=1e-3)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("region, size", REGIONS)
def test_matches_pil(region, size, interpolation):
    pil = pytest.importorskip("PIL.Image")
    # A smooth image: Pillow (the reference's, or 13, which may resample vertically first) rounds
    # each pass to uint8, so results agree to rounding when the pass order does not matter.
    y, x_ = np.mgrid[0:40, 0:40]
    x = np.stack([y * 6, x_ * 6, (y + x_) * 3], axis=-1).clip(0, 255).astype("uint8")
    top, left, h, w = region
    resample = {"bicubic": pil.BICUBIC, "bilinear": pil.BILINEAR}[interpolation]
    expected = np.asarray(pil.fromarray(x).crop((left, top, left + w, top + h)).resize(size[::-1], resample), "float32")
    out = to_numpy(FixedRegion(region, *size, interpolation=interpolation)(x[None]))[0]
    assert np.abs(out - expected).max() <= 1.0


def test_flip_mirrors_exactly():
    x = images((16, 20, 20, 3), seed=4)
    cropped = to_numpy(RandomResizedCrop(8, 8, seed=5)(x))
    flipped = to_numpy(pretraining_augmentation(8, mean=None, std=None, seed=5)(x))
    same = [np.array_equal(f, c) for f, c in zip(flipped, cropped)]
    mirrored = [np.array_equal(f, c[:, ::-1]) for f, c in zip(flipped, cropped)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert any(same) and any(mirrored)


def test_normalization_equals_numpy():
    # An image already at the output size and aspect ratio is resampled exactly (weights 1 and 0).
    x = images((2, 8, 8, 3), seed=6)
    augment = pretraining_augmentation(8, flip=False, seed=0)
    expected = (x / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(to_numpy(augment(x, training=False)), expected, rtol=1e-5, atol=1e-5)
    scaled = pretraining_augmentation(8, flip=False, mean=(0.5,), std=(0.2,), value_range=(-1.0, 1.0))
    y = np.random.default_rng(0).uniform(-1, 1, size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(to_numpy(scaled(y, training=False)), ((y + 1) / 2 - 0.5) / 0.2, rtol=1e-5, atol=1e-5)


def test_in_tf_data_on_images_of_different_sizes():
    tf = pytest.importorskip("tensorflow")
    sizes = [(20, 30), (33, 17), (12, 12)]
    arrays = [images(s + (3,), seed=i) for i, s in enumerate(sizes)]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(arrays), output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    )
    augment = pretraining_augmentation(8, seed=0)
    (batch,) = list(dataset.map(augment).batch(3).as_numpy_iterator())
    assert batch.shape == (3, 8, 8, 3) and batch.dtype == np.float32 and np.isfinite(batch).all()
    # Without randomness, tf.data (TensorFlow ops) and the backend compute the same thing.
    (fixed,) = list(dataset.map(lambda x: augment(x, training=False)).batch(3).as_numpy_iterator())
    for out, x in zip(fixed, arrays):
        np.testing.assert_allclose(out, to_numpy(augment(x, training=False)), atol=1e-4)


def test_serialization_round_trip():
    layer = RandomResizedCrop(8, 6, scale=(0.3, 0.9), interpolation="bilinear", value_range=None, seed=3)
    clone = RandomResizedCrop.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    x = images((2, 16, 16, 3))
    np.testing.assert_array_equal(to_numpy(layer(x)), to_numpy(clone(x)))
    pipeline = pretraining_augmentation(8, seed=0)
    restored = keras.layers.Pipeline.from_config(pipeline.get_config())
    np.testing.assert_allclose(to_numpy(pipeline(x, training=False)), to_numpy(restored(x, training=False)), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": (0.5, 0.2)}, "`scale` must be"),
        ({"scale": (0.0, 1.0)}, "`scale` must be"),
        ({"ratio": (2.0, 1.0)}, "`ratio` must be"),
        ({"interpolation": "nearest"}, "`interpolation` must be one of"),
        ({"value_range": (1, 0)}, "`value_range` must be"),
        ({"mean": (0.5, 0.5), "std": (0.2,)}, "one value per channel"),
        ({"mean": (0.5,), "std": None}, "both `mean` and `std`"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pretraining_augmentation(8, **kwargs)


def test_bad_size_and_rank():
    with pytest.raises(ValueError, match="`height` must be a positive integer"):
        RandomResizedCrop(0, 8)
    with pytest.raises(ValueError, match="Expected images"):
        RandomResizedCrop(8, 8)(np.zeros((2, 3, 8, 8, 3), "float32"))
