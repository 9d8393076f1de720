"""Draws the pictures of the docs site: docs/images/masks.png and docs/images/pretrain_curves.png.

masks.png:            row 1, a Fashion-MNIST test image (a synthetic one when the data set is not
                      installed) with 4 masks from `InverseBlockMasking` set up as the `tiny` image
                      preset (7x7 patches, mask_prob 0.75, 3x3 blocks); row 2, a synthetic 224x224
                      image with 4 masks from the `base` preset's settings (14x14 patches of 16
                      pixels, mask_prob 0.8, 3x3 blocks, 39 visible patches).
pretrain_curves.png:  the logged metrics of a training run against the epoch, from a CSVLogger
                      file: `--csv PATH` if given, else a short real fit made here (the `tiny` image
                      preset on the first 2,048 Fashion-MNIST training images, or random images
                      when the data set is not installed; batch 128, 8 epochs, AdamW 2e-3 with
                      weight decay 0.05, CLS weight rescaled as in recipes/pretrain_image.py, seed 0),
                      logged to runs/doc_figures/pretrain_log.csv.

Command:   KERAS_BACKEND=torch .venv/bin/python scripts/make_doc_figures.py [--csv PATH] [--masks-only]
Time:      the fit is 128 steps, 2-5 minutes on 2 CPU cores with PyTorch; --masks-only takes seconds.
Needs:     matplotlib (`pip install 'keras-d2v2[bench]'`).
"""

import argparse
import os
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402

import keras_d2v2  # noqa: E402
from keras_d2v2.data import load_fashion_mnist, standardize_images  # noqa: E402
from keras_d2v2.presets import IMAGE_PRESETS  # noqa: E402
from keras_d2v2.visualization import plot_masks, plot_training_curves  # noqa: E402

IMAGES = REPO / "docs" / "images"
NUM_MASKS = 4


def fashion_mnist(count, split=0):
    """The first `count` images (uint8) of the training (0) or test (1) split, or None."""
    try:
        return load_fashion_mnist()[split][0][:count]
    except FileNotFoundError as error:
        print(f"note: {error}; using synthetic images instead", file=sys.stderr)
        return None


def synthetic_image(size, seed=0):
    """A smooth colour picture with a few shapes, so that masked and visible blocks are easy to tell apart."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([0.55 + 0.35 * np.sin(5 * x + 1), 0.5 + 0.35 * np.cos(4 * y), 0.6 + 0.3 * np.sin(3 * (x + y))], -1)
    rng = np.random.default_rng(seed)
    for _ in range(7):
        cy, cx, radius = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.06, 0.16)
        inside = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
        image[inside] = rng.uniform(0.05, 0.95, 3)
    stripes = (np.floor(8 * (x - y)) % 2 == 0) & (y > 0.7)
    image[stripes] *= 0.6
    return np.clip(image, 0.0, 1.0)


def preset_masks(preset, num_patches, seed):
    config = IMAGE_PRESETS[preset]["masking"]
    masking = keras_d2v2.InverseBlockMasking(
        mask_prob=config["mask_prob"], block_length=config["block_length"],
        mask_prob_adjust=config["mask_prob_adjust"], clone_batch=NUM_MASKS, seed=seed,
    )
    return keras.ops.convert_to_numpy(masking(np.zeros((1, num_patches, 1), "float32")))


def draw_masks(path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1.75 * (NUM_MASKS + 1), 3.9), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, NUM_MASKS + 1)
    tiny = IMAGE_PRESETS["tiny"]["encoder"]
    fmnist = fashion_mnist(1, split=1)
    small = fmnist[0] if fmnist is not None else (255 * synthetic_image(tiny["image_size"], seed=1)).astype("uint8")
    grid = (tiny["image_size"] // tiny["patch_size"]) ** 2
    plot_masks(small, preset_masks("tiny", grid, seed=0), patch_size=tiny["patch_size"], axes=axes[0],
               title=f"tiny: {tiny['image_size']}x{tiny['image_size']}, patch {tiny['patch_size']}")
    base = IMAGE_PRESETS["base"]["encoder"]
    grid = (base["image_size"] // base["patch_size"]) ** 2
    plot_masks(synthetic_image(base["image_size"]), preset_masks("base", grid, seed=1), patch_size=base["patch_size"],
               axes=axes[1], title=f"base: {base['image_size']}x{base['image_size']}, patch {base['patch_size']}")
    figure.savefig(path, dpi=90)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def short_fit(log_path):
    """A short real pre-training run of the `tiny` preset, logged with CSVLogger; returns the log's path."""
    keras.utils.set_random_seed(0)
    fmnist = fashion_mnist(2048)
    if fmnist is None:
        fmnist = np.random.default_rng(0).integers(0, 256, (2048, 28, 28), dtype=np.uint8)
    images = standardize_images(fmnist)
    batch_size = 128
    clones = IMAGE_PRESETS["tiny"]["masking"]["clone_batch"]
    # As recipes/pretrain_image.py: the CLS term is summed over the batch's clones, so its weight is
    # brought to the reference's per-GPU level (0.01 at 16 images x 16 clones).
    model = keras_d2v2.Data2Vec2.image("tiny", seed=0, cls_loss_weight=0.01 * 256 / (batch_size * clones))
    model.compile(optimizer=keras.optimizers.AdamW(2e-3, beta_2=0.95, weight_decay=0.05, global_clipnorm=4.0))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    model.fit(keras_d2v2.ShuffledBatches(images, batch_size=batch_size, seed=0), epochs=8, verbose=2,
              callbacks=[keras.callbacks.CSVLogger(str(log_path))])
    return log_path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=pathlib.Path, help="a CSVLogger file to plot instead of running a short fit")
    parser.add_argument("--masks-only", action="store_true", help="draw masks.png only")
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    draw_masks(IMAGES / "masks.png")
    if args.masks_only:
        return
    log = args.csv or short_fit(REPO / "runs" / "doc_figures" / "pretrain_log.csv")
    path = IMAGES / "pretrain_curves.png"
    plot_training_curves(log, metrics=["loss", "regression_loss", "cls_loss", "target_std", "pred_std", "ema_decay"],
                         path=path, yscale="linear", dpi=80)
    print(f"wrote {path} ({os.path.getsize(path) // 1024} KB) from {log}")


if __name__ == "__main__":
    main()
