"""keras_d2v2.visualization: the masked pictures against an independent per-patch computation, the
curves against the history they come from, and the argument checks."""

import sys

import keras
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from keras_d2v2 import (
    InverseBlockMasking,  # noqa: E402
    visualization,  # noqa: E402
)
from keras_d2v2.visualization import masked_image, plot_masks, plot_training_curves  # noqa: E402


def patchwise_reference(image01, mask, patch):
    """Patch by patch: visible patches copied, masked ones 0.25 * pixel + 0.75 * 0.5; image in [0, 1], RGB."""
    out = image01.copy()
    cols = image01.shape[1] // patch
    for t, masked in enumerate(mask):
        if masked:
            r, c = divmod(t, cols)
            block = out[r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
            block[...] = 0.25 * block + 0.375
    return out


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_masked_image_matches_patchwise_reference(channels):
    rng = np.random.default_rng(channels or 0)
    shape = (12, 8) if channels is None else (12, 8, channels)
    image = rng.uniform(0.0, 1.0, shape)
    image[np.isclose(image, 0.5)] = 0.9  # 0.5 is the grey that masking leaves unchanged
    mask = rng.integers(0, 2, 6).astype(bool)  # a 3 x 2 grid of 4 x 4 patches
    mask[:2] = [True, False]
    rgb = image.reshape(12, 8, -1) * np.ones((1, 1, 3))
    got = masked_image(image, mask, patch_size=4)
    assert got.shape == (12, 8, 3)
    np.testing.assert_allclose(got, patchwise_reference(rgb, mask, 4), rtol=0, atol=1e-12)
    # Pixels differ from the image exactly inside the masked patches.
    changed = np.any(got != rgb, axis=-1)
    expected = np.kron(mask.reshape(3, 2), np.ones((4, 4), bool))
    np.testing.assert_array_equal(changed, expected)
    # 0/1 integers mean the same as booleans.
    np.testing.assert_array_equal(masked_image(image, mask.astype("int32"), patch_size=4), got)


def test_masked_image_pixel_scaling():
    mask = np.array([0, 1, 0, 0], bool)
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    np.testing.assert_allclose(masked_image(pixels, mask, 4)[:4, :4, 0], pixels[:4, :4] / 255.0)
    standardized = np.linspace(-2.0, 3.0, 64).reshape(8, 8, 1)
    visible = masked_image(standardized, mask, 4)[:4, :4, 0]
    np.testing.assert_allclose(visible, (standardized[:4, :4, 0] + 2.0) / 5.0)
    masked = masked_image(standardized, mask, 4)[:4, 4:, 0]
    np.testing.assert_allclose(masked, 0.25 * (standardized[:4, 4:, 0] + 2.0) / 5.0 + 0.375)


def test_plot_masks_draws_each_mask_of_inverse_block_masking(tmp_path):
    masking = InverseBlockMasking(mask_prob=0.75, block_length=3, mask_prob_adjust=0.07, clone_batch=4, seed=0)
    masks = masking(np.zeros((1, 49, 1), "float32"))  # a backend tensor (4, 49)
    masks_np = keras.ops.convert_to_numpy(masks).astype(bool)
    image = np.random.default_rng(0).uniform(0.05, 0.45, (28, 28, 1)).astype("float32")
    path = tmp_path / "sub" / "masks.png"
    figure = plot_masks(image, masks, patch_size=4, path=path)
    assert len(figure.axes) == 5
    np.testing.assert_allclose(figure.axes[0].images[0].get_array(), np.repeat(image, 3, -1), atol=1e-7)
    for k, ax in enumerate(figure.axes[1:]):
        drawn = np.asarray(ax.images[0].get_array())
        expected = patchwise_reference(np.repeat(image, 3, -1).astype("float64"), masks_np[k], 4)
        np.testing.assert_allclose(drawn, expected, atol=1e-7)
        assert ax.get_title() == f"mask {k + 1}: {masks_np[k].mean():.0%} masked"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rendered_pixels_follow_the_mask():
    # One flat colour per 4 x 4 patch of a 3 x 2 grid; sample the rendered canvas at each patch centre.
    colours = np.random.default_rng(1).uniform(0.05, 0.45, (3, 2, 3))
    image = np.kron(colours, np.ones((4, 4, 1)))
    mask = np.array([1, 0, 0, 1, 1, 0], bool)
    figure = plot_masks(image, mask, patch_size=4, dpi=100)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3] / 255.0
    for ax, shown in zip(figure.axes, [np.zeros(6, bool), mask]):
        box = ax.get_window_extent()
        for t in range(6):
            r, c = divmod(t, 2)
            x = int(box.x0 + (c + 0.5) * box.width / 2)
            y = int(pixels.shape[0] - (box.y1 - (r + 0.5) * box.height / 3))
            expected = 0.25 * colours[r, c] + 0.375 if shown[t] else colours[r, c]
            np.testing.assert_allclose(pixels[y, x], expected, atol=1.5 / 255)


def test_plot_masks_into_given_axes():
    from matplotlib.figure import Figure

    figure = Figure()
    axes = figure.subplots(2, 3)
    mask = np.eye(2, 4, dtype=bool)
    assert plot_masks(np.zeros((8, 8)), mask, patch_size=4, axes=axes[1, :]) is figure
    assert [len(ax.images) for ax in axes.ravel()] == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="`axes` must hold 3 Axes"):
        plot_masks(np.zeros((8, 8)), mask, patch_size=4, axes=axes[0, :2])


@pytest.mark.parametrize(
    "image, masks, patch_size, message",
    [
        (np.zeros((2, 8, 8, 3)), np.zeros((1, 4)), 4, "`image` must have shape"),
        (np.zeros((8, 8, 2)), np.zeros((1, 4)), 4, "`image` must have shape"),
        (np.full((8, 8), np.nan), np.zeros((1, 4)), 4, "`image` holds NaN"),
        (np.zeros((8, 8)), np.zeros((1, 4)), 3, "`patch_size`=3 does not divide"),
        (np.zeros((8, 8)), np.zeros((1, 4)), 0, "`patch_size` must be an integer"),
        (np.zeros((8, 8)), np.zeros((1, 5)), 4, r"`masks` has 5 entries per mask, but the image holds 2x2 = 4"),
        (np.zeros((8, 8)), np.zeros((1, 1, 4)), 4, "`masks` must have shape"),
        (np.zeros((8, 8)), np.full((1, 4), 2), 4, "`masks` must be boolean or hold only 0 and 1"),
        (np.zeros((8, 8)), np.zeros((0, 4)), 4, "`masks` holds no mask"),
    ],
)
def test_plot_masks_bad_inputs(image, masks, patch_size, message):
    with pytest.raises(ValueError, match=message):
        plot_masks(image, masks, patch_size=patch_size)


def test_masked_image_bad_mask():
    with pytest.raises(ValueError, match=r"`mask` must have shape \(num_patches,\)"):
        masked_image(np.zeros((8, 8)), np.zeros((2, 4)), 4)
    with pytest.raises(ValueError, match="`mask` has 3 entries"):
        masked_image(np.zeros((8, 8)), np.zeros(3), 4)


def lines(ax):
    return [(line.get_xdata(), line.get_ydata()) for line in ax.get_lines()]


def test_training_curves_from_a_real_fit_and_its_csv_log(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mae"])
    csv_path = tmp_path / "log.csv"
    history = model.fit(x, y, validation_data=(x, y), epochs=4, batch_size=8, verbose=0,
                        callbacks=[keras.callbacks.CSVLogger(str(csv_path))])
    logged = history.history
    for source in (history, logged, csv_path, str(csv_path)):
        figure = plot_training_curves(source, metrics=["loss", "mae"])
        assert [ax.get_title() for ax in figure.axes] == ["loss", "mae"]
        for ax, name in zip(figure.axes, ["loss", "mae"]):
            (x_train, y_train), (x_val, y_val) = lines(ax)
            np.testing.assert_array_equal(x_train, [1, 2, 3, 4])
            np.testing.assert_array_equal(x_val, [1, 2, 3, 4])
            np.testing.assert_allclose(y_train, logged[name], rtol=1e-6)
            np.testing.assert_allclose(y_val, logged[f"val_{name}"], rtol=1e-6)
    # By default: every metric except the val_ series, which join their metric's panel.
    titles = [ax.get_title() for ax in plot_training_curves(history).axes]
    assert sorted(titles) == sorted(k for k in logged if not k.startswith("val_"))


def test_training_curves_from_per_epoch_dicts(tmp_path):
    rows = [{"loss": 3.0, "target_std": 0.5}, {"loss": 2.0, "target_std": 0.4}, {"loss": 1.5, "target_std": 0.45}]
    path = tmp_path / "curves.png"
    figure = plot_training_curves(rows, path=path, yscale="log")
    ((x, loss),), ((_, var),) = lines(figure.axes[0]), lines(figure.axes[1])
    np.testing.assert_array_equal(x, [1, 2, 3])
    np.testing.assert_array_equal(loss, [3.0, 2.0, 1.5])
    np.testing.assert_array_equal(var, [0.5, 0.4, 0.45])
    assert figure.axes[0].get_yscale() == "log"
    assert path.read_bytes()[:4] == b"\x89PNG"
    # Values close together (an EMA decay) are labelled as they are, without an offset.
    figure = plot_training_curves({"ema_decay": [0.99904, 0.99907, 0.99910]})
    figure.canvas.draw()
    assert figure.axes[0].yaxis.get_major_formatter().get_offset() == ""
    # A History's epoch numbers are kept (e.g. a run resumed at epoch 3), counted from 1.
    history = keras.callbacks.History()
    history.history, history.epoch = {"loss": [2.0, 1.0]}, [2, 3]
    np.testing.assert_array_equal(lines(plot_training_curves(history, metrics="loss").axes[0])[0][0], [3, 4])


@pytest.mark.parametrize(
    "history, metrics, message",
    [
        ({"loss": [1.0, 2.0]}, ["accuracy"], r"`metrics` names \['accuracy'\], which the history lacks; it has \['loss'\]"),
        ({"loss": [1.0, 2.0]}, [], "`metrics` is empty"),
        ({}, None, "`history` holds no numeric metric"),
        ({"loss": []}, None, "`history` holds no numeric metric"),
        ({"loss": [1.0, 2.0], "mae": [1.0]}, None, "`history` metrics have different lengths"),
        (42, None, "`history` must be a keras History"),
        ([1.0, 2.0], None, "`history` given as a list must hold one dict"),
    ],
)
def test_training_curves_bad_inputs(history, metrics, message):
    with pytest.raises(ValueError, match=message):
        plot_training_curves(history, metrics=metrics)


def test_empty_csv_log(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("epoch,loss\n")
    with pytest.raises(ValueError, match="`history` file .* holds no epoch"):
        plot_training_curves(path)


def test_missing_matplotlib_says_what_to_install(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'keras-d2v2\[bench\]'"):
        plot_masks(np.zeros((8, 8)), np.zeros((1, 4)), patch_size=4)
    with pytest.raises(ImportError, match=r"pip install 'keras-d2v2\[bench\]'"):
        plot_training_curves({"loss": [1.0]})
    assert visualization.MASK_DIM == 0.25 and visualization.MASK_GREY == 0.5
