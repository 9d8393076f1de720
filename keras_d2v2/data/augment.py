"""The reference's image pre-training augmentation, as Keras layers that run on every backend and in tf.data."""

import math

import keras

try:  # Keras >= 3.11
    from keras.src.layers.preprocessing.data_layer import DataLayer as _DataLayer
except ImportError:  # pragma: no cover - older Keras 3
    from keras.src.layers.preprocessing.tf_data_layer import TFDataLayer as _DataLayer

# torchvision's ImageNet statistics, used by the reference (fairseq `MaeImageDataset`) for pixels in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PIL's resampling filters (Pillow `src/libImaging/Resample.c`): (support, kernel).
_FILTERS = {
    "bicubic": 2.0,  # Keys cubic, a = -0.5
    "bilinear": 1.0,  # triangle
}


@keras.saving.register_keras_serializable(package="keras_d2v2")
class RandomResizedCrop(_DataLayer):
    """Crops a random region of each image and resizes it, as torchvision's `RandomResizedCrop` does.

    For every image, a region of `scale` times the image's area (uniform) with an aspect ratio
    drawn log-uniformly from `ratio` is placed uniformly at random; if no region fits in 10
    draws, the central crop at the closest allowed aspect ratio is used (torchvision's rule,
    drawn here for all 10 attempts at once). The region is resized to `(height, width)` with
    PIL's antialiased resampling (`interpolation="bicubic"` is PIL's BICUBIC, Keys cubic with
    a = -0.5, kernel widened by the downscaling factor; `"bilinear"` its triangle filter),
    computed as two dense resampling matrices per image, so that every image of a batch gets its
    own region. Only pixels inside the region contribute, as with torchvision's crop-then-resize;
    as with PIL's uint8 images, the horizontal pass and then the vertical one are each clipped to
    `value_range`. With `training=False` every
    image gets the deterministic fallback crop (the whole image when its aspect ratio is within
    `ratio`).

    Defaults reproduce the reference's image pre-training crop (fairseq `MaeImageDataset`:
    `RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=3)` with torchvision's default
    `ratio=(3/4, 4/3)`): the same resampling as Pillow's (horizontal pass, clip, vertical pass,
    clip), except that Pillow rounds each pass to uint8 and this layer keeps floats (tested within
    1 level of 255 of Pillow on smooth images; Pillow 13 may run the vertical pass first, which
    moves its clipped overshoots on noisy images by a few levels). The crop parameters are drawn
    with Keras' random ops, so they follow torchvision's distribution, not its random stream.

    Runs on any backend, eagerly, inside a compiled function or in a `tf.data` pipeline (there it
    uses TensorFlow ops whatever the backend, like Keras' own preprocessing layers). Images are
    channels-last, `(H, W, C)` or a batch `(B, H, W, C)`, any numeric dtype; outputs are float.
    In `tf.data`, map it over single images to crop images of different sizes, before batching.

    Args:
        height, width: output size.
        scale: `(min, max)` fraction of the image's area that the region covers.
        ratio: `(min, max)` aspect ratio (width / height) of the region.
        interpolation: `"bicubic"` (the reference's) or `"bilinear"`.
        value_range: `(low, high)` the outputs are clipped to, or None for no clipping.
        seed: int, seed of the crops.

    Example:
    >>> crop = RandomResizedCrop(224, 224, seed=0)
    >>> crop(np.zeros((8, 375, 500, 3), "uint8")).shape
    (8, 224, 224, 3)
    """

    def __init__(
        self,
        height,
        width,
        *,
        scale=(0.2, 1.0),
        ratio=(3.0 / 4.0, 4.0 / 3.0),
        interpolation="bicubic",
        value_range=(0.0, 255.0),
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("height", height), ("width", width)):
            if int(value) != value or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        scale, ratio = tuple(float(s) for s in scale), tuple(float(r) for r in ratio)
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"`scale` must be (min, max) with 0 < min <= max <= 1, got {scale}.")
        if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"`ratio` must be (min, max) with 0 < min <= max, got {ratio}.")
        if interpolation not in _FILTERS:
            raise ValueError(f"`interpolation` must be one of {sorted(_FILTERS)}, got {interpolation!r}.")
        if value_range is not None:
            value_range = tuple(float(v) for v in value_range)
            if len(value_range) != 2 or not value_range[0] < value_range[1]:
                raise ValueError(f"`value_range` must be (low, high) with low < high, or None; got {value_range}.")
        self.height, self.width = int(height), int(width)
        self.scale, self.ratio = scale, ratio
        self.interpolation = interpolation
        self.value_range = value_range
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

    # ------------------------------------------------------------------------------- the region
    def _draws(self, batch):
        """Uniform [0, 1) draws of `batch` regions: area and log-aspect of 10 attempts, offsets."""
        seed = self._get_seed_generator(self.backend._backend)
        uniform = self.backend.random.uniform
        return uniform((batch, 10), seed=seed), uniform((batch, 10), seed=seed), uniform((batch, 2), seed=seed)

    def _regions(self, draws, batch, in_height, in_width):
        """(top, left, height, width) of every image's region, float (B,) each; the deterministic
        fallback crop for all when `draws` is None."""
        np_ = self.backend.numpy
        in_h, in_w = self.backend.cast(in_height, "float32"), self.backend.cast(in_width, "float32")
        # torchvision's fallback: the central crop at the aspect ratio closest to the image's.
        in_ratio = in_w / in_h
        low, high = self.ratio
        fallback_w = np_.where(in_ratio > high, np_.round(in_h * high), in_w)
        fallback_h = np_.where(in_ratio < low, np_.round(in_w / low), in_h)
        fallback = (np_.floor((in_h - fallback_h) / 2), np_.floor((in_w - fallback_w) / 2), fallback_h, fallback_w)
        fallback = [np_.ones((batch,), "float32") * value for value in fallback]
        if draws is None:
            return fallback
        area_draw, aspect_draw, offsets = draws
        area = in_h * in_w * (self.scale[0] + (self.scale[1] - self.scale[0]) * area_draw)
        aspect = np_.exp(math.log(low) + (math.log(high) - math.log(low)) * aspect_draw)
        w = np_.round(np_.sqrt(area * aspect))
        h = np_.round(np_.sqrt(area / aspect))
        valid = np_.logical_and(np_.logical_and(w > 0, w <= in_w), np_.logical_and(h > 0, h <= in_h))
        first = np_.argmax(self.backend.cast(valid, "int32"), axis=1)[:, None]
        found = np_.any(valid, axis=1)
        h = np_.take_along_axis(h, first, axis=1)[:, 0]
        w = np_.take_along_axis(w, first, axis=1)[:, 0]
        top = np_.minimum(np_.floor(offsets[:, 0] * (in_h - h + 1)), in_h - h)
        left = np_.minimum(np_.floor(offsets[:, 1] * (in_w - w + 1)), in_w - w)
        return [np_.where(found, chosen, other) for chosen, other in zip((top, left, h, w), fallback)]

    def _weights(self, start, length, in_size, out_size):
        """(B, out_size, in_size) matrices resampling `[start, start + length)` to `out_size`
        pixels, with PIL's coefficients (`precompute_coeffs` in Pillow's Resample.c)."""
        np_ = self.backend.numpy
        support = _FILTERS[self.interpolation]
        scale = length / out_size
        filter_scale = np_.maximum(scale, 1.0)[:, None, None]
        centers = ((np_.arange(out_size, dtype="float32") + 0.5)[None, :] * scale[:, None])[..., None]
        low = np_.maximum(np_.floor(centers - support * filter_scale + 0.5), 0.0)
        high = np_.minimum(np_.floor(centers + support * filter_scale + 0.5), length[:, None, None])
        pixel = np_.arange(in_size, dtype="float32")[None, None, :] - start[:, None, None]
        x = np_.abs((pixel - centers + 0.5) / filter_scale)
        if self.interpolation == "bicubic":
            a = -0.5
            kernel = np_.where(
                x < 1.0,
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                np_.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0),
            )
        else:
            kernel = np_.maximum(1.0 - x, 0.0)
        inside = np_.logical_and(pixel >= low, pixel < high)
        kernel = np_.where(inside, kernel, 0.0)
        total = np_.sum(kernel, axis=-1, keepdims=True)
        return kernel / np_.where(total == 0.0, 1.0, total)

    # --------------------------------------------------------------------------------- the layer
    def call(self, images, training=True):
        images = self.backend.cast(images, self.compute_dtype)
        shape = self.backend.core.shape(images)
        if len(shape) not in (3, 4):
            raise ValueError(f"Expected images (H, W, C) or (B, H, W, C), got shape {tuple(shape)}.")
        batched = len(shape) == 4
        if not batched:
            images = self.backend.numpy.expand_dims(images, 0)
        draws = self._draws(self.backend.core.shape(images)[0]) if training else None
        resample = self._resample
        if self.backend.name == "jax":
            # Eager JAX runs (and compiles) op by op: one compiled function is much faster.
            import jax

            if getattr(self, "_jitted_resample", None) is None:
                self._jitted_resample = jax.jit(self._resample)
            resample = self._jitted_resample
        outputs = resample(images, draws)
        return outputs if batched else outputs[0]

    def _resample(self, images, draws):
        batch, in_height, in_width = self.backend.core.shape(images)[:3]
        top, left, height, width = self._regions(draws, batch, in_height, in_width)
        rows = self.backend.cast(self._weights(top, height, in_height, self.height), self.compute_dtype)
        cols = self.backend.cast(self._weights(left, width, in_width, self.width), self.compute_dtype)
        einsum = self.backend.numpy.einsum
        # PIL resamples horizontally, then vertically, clipping each pass to the pixel range.
        outputs = self._clip(einsum("bjw,bhwc->bhjc", cols, images))
        return self._clip(einsum("bih,bhjc->bijc", rows, outputs))

    def _clip(self, images):
        if self.value_range is None:
            return images
        return self.backend.numpy.clip(images, self.value_range[0], self.value_range[1])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-3]) + (self.height, self.width, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            height=self.height,
            width=self.width,
            scale=self.scale,
            ratio=self.ratio,
            interpolation=self.interpolation,
            value_range=self.value_range,
            seed=self.seed,
        )
        return config


def pretraining_augmentation(
    image_size=224,
    *,
    scale=(0.2, 1.0),
    ratio=(3.0 / 4.0, 4.0 / 3.0),
    interpolation="bicubic",
    flip=True,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    value_range=(0.0, 255.0),
    seed=None,
):
    """The reference's image pre-training augmentation, as a `keras.layers.Pipeline`.

    Reproduces fairseq's `MaeImageDataset` transform for data2vec 2.0 image pre-training
    (ImageNet-1K, all image configs): `RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=3
    [bicubic])`, `RandomHorizontalFlip()`, `ToTensor()` (pixels / 255), `Normalize(IMAGENET_MEAN,
    IMAGENET_STD)`; no color jitter. Layers: `RandomResizedCrop` (this package; see its notes on
    PIL rounding), `keras.layers.RandomFlip("horizontal")` (each image mirrored with probability
    1/2) and `keras.layers.Normalization`, which maps a pixel `x` of `value_range = (low, high)`
    to `((x - low) / (high - low) - mean) / std` per channel.

    Works on every backend and in `tf.data` (`dataset.map(augment)`; map over single images to
    crop images of different sizes, then batch); call it with `training=False` for the
    deterministic central crop without flip. Images are channels-last, `(H, W, C)` or `(B, H, W,
    C)`, with values in `value_range` (uint8 images: the default `(0, 255)`). Outputs are float32
    `(..., image_size, image_size, C)`.

    Args:
        image_size: int or `(height, width)` of the crops.
        scale, ratio, interpolation: of `RandomResizedCrop`.
        flip: whether to mirror images horizontally at random.
        mean, std: per-channel statistics of pixels scaled to [0, 1] (one value each for
            grayscale images), or None to skip normalization (outputs then stay in `value_range`).
        value_range: `(low, high)` range of the input pixels.
        seed: int, seed of the crops and flips.

    Example:
    >>> augment = pretraining_augmentation(224, seed=0)
    >>> images = load_image_folder("train/", image_size=None).map(lambda x, y: augment(x)).batch(256)
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    low, high = (float(v) for v in value_range)
    layers = [
        RandomResizedCrop(
            height, width, scale=scale, ratio=ratio, interpolation=interpolation, value_range=(low, high), seed=seed
        )
    ]
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=None if seed is None else seed + 1))
    if (mean is None) != (std is None):
        raise ValueError("Pass both `mean` and `std`, or neither.")
    if mean is not None:
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"`mean` and `std` must have one value per channel, `std` > 0; got {mean}, {std}.")
        span = high - low
        normalize = keras.layers.Normalization(
            mean=[low + span * m for m in mean], variance=[(span * s) ** 2 for s in std], axis=-1
        )
        # Built now, for single images (its statistics then broadcast over batches too): built at
        # its first call it would be built inside a trace on JAX, or not at all in tf.data.
        normalize.build((None, None, len(mean)))
        layers.append(normalize)
    return keras.layers.Pipeline(layers)
