"""Pictures: an image with its data2vec 2.0 masks, and training curves from a Keras history.

Needs matplotlib (`pip install 'keras-d2v2[bench]'`), imported only when a plotting function runs.
The figures are plain `matplotlib.figure.Figure` objects drawn on the Agg canvas: no pyplot,
no window, no global figure state; Jupyter displays them, and `path=` saves a PNG.

Example:
>>> masking = keras_d2v2.InverseBlockMasking(mask_prob=0.75, clone_batch=4, seed=0)
>>> masks = masking(np.zeros((1, 49, 1)))                   # (4, 49): 4 masks of a 7 x 7 grid
>>> plot_masks(images[0], masks, patch_size=4, path="masks.png")
>>> history = model.fit(images, epochs=10)
>>> plot_training_curves(history, metrics=["loss", "target_std"], path="curves.png")
"""

import csv
import math
import os

import numpy as np

# Masked patches are drawn as `MASK_DIM * pixel + (1 - MASK_DIM) * MASK_GREY`: a dimmed, greyed
# copy of the image, so the masked content stays faintly visible beside the shown patches.
MASK_DIM = 0.25
MASK_GREY = 0.5


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "keras_d2v2.visualization needs matplotlib: pip install 'keras-d2v2[bench]' (or pip install matplotlib)."
        ) from error
    return Figure, FigureCanvasAgg


def _numpy(value):
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError):
        from keras import ops

        return np.asarray(ops.convert_to_numpy(value))


def _rgb01(image):
    """`image` (H, W), (H, W, 1) or (H, W, 3) -> float (H, W, 3) in [0, 1].

    Integer pixels are divided by 255; float pixels already in [0, 1] are kept, others (e.g.
    standardized images) are rescaled by the image's own minimum and maximum.
    """
    image = _numpy(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"`image` must have shape (height, width), (height, width, 1) or (height, width, 3), got {image.shape}."
        )
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number):
        raise ValueError(f"`image` must hold numbers, got dtype {image.dtype}.")
    if np.issubdtype(image.dtype, np.integer):
        image = image.astype("float64") / 255.0
    else:
        image = image.astype("float64")
        if not np.all(np.isfinite(image)):
            raise ValueError("`image` holds NaN or inf.")
        low, high = image.min(), image.max()
        if low < 0.0 or high > 1.0:
            image = (image - low) / (high - low) if high > low else np.full_like(image, 0.5)
    image = np.clip(image, 0.0, 1.0)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _grid(image_shape, patch_size):
    if isinstance(patch_size, bool) or int(patch_size) != patch_size or patch_size < 1:
        raise ValueError(f"`patch_size` must be an integer >= 1, got {patch_size!r}.")
    patch_size = int(patch_size)
    height, width = image_shape[:2]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"`patch_size`={patch_size} does not divide the image size {height}x{width}; the masks cover a "
            "grid of whole patches."
        )
    return height // patch_size, width // patch_size, patch_size


def _check_masks(masks, rows, cols, name="masks"):
    masks = _numpy(masks)
    if masks.ndim == 1:
        masks = masks[None]
    if masks.ndim != 2:
        raise ValueError(f"`{name}` must have shape (num_masks, num_patches) or (num_patches,), got {masks.shape}.")
    if masks.shape[1] != rows * cols:
        raise ValueError(
            f"`{name}` has {masks.shape[1]} entries per mask, but the image holds {rows}x{cols} = {rows * cols} "
            "patches (image size / patch_size, row-major)."
        )
    if masks.shape[0] == 0:
        raise ValueError(f"`{name}` holds no mask.")
    if masks.dtype != bool:
        if not np.issubdtype(masks.dtype, np.number) or not np.all((masks == 0) | (masks == 1)):
            raise ValueError(f"`{name}` must be boolean or hold only 0 and 1 (1 = masked).")
        masks = masks != 0
    return masks


def masked_image(image, mask, patch_size):
    """The picture `plot_masks` draws for one mask: float RGB `(H, W, 3)` in [0, 1].

    Visible patches (mask 0) show the image; masked patches (mask 1) show
    `MASK_DIM * pixel + (1 - MASK_DIM) * MASK_GREY`, i.e. the image dimmed towards grey.

    Args:
        image: `(H, W)`, `(H, W, 1)` or `(H, W, 3)`; integer pixels are read as 0-255, float
            pixels outside [0, 1] are rescaled by the image's minimum and maximum.
        mask: `(T,)` bool or 0/1 (1 = masked), `T = (H / patch_size) * (W / patch_size)` patches
            in row-major order over the patch grid, as `InverseBlockMasking` returns them.
        patch_size: int, side of a patch in pixels.

    Returns:
        numpy float64 array `(H, W, 3)`.
    """
    rgb = _rgb01(image)
    rows, cols, patch_size = _grid(rgb.shape, patch_size)
    mask = _numpy(mask)
    if mask.ndim != 1:
        raise ValueError(f"`mask` must have shape (num_patches,), got {mask.shape}.")
    mask = _check_masks(mask, rows, cols, name="mask")[0]
    pixel_mask = np.kron(mask.reshape(rows, cols), np.ones((patch_size, patch_size), dtype=bool))
    dimmed = MASK_DIM * rgb + (1.0 - MASK_DIM) * MASK_GREY
    return np.where(pixel_mask[..., None], dimmed, rgb)


def _new_figure(panels, columns, panel_size):
    Figure, FigureCanvasAgg = _matplotlib()
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in axes[panels:]:
        unused.set_axis_off()
    return figure, list(axes[:panels])


def _save(figure, path, dpi):
    if path is not None:
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        figure.savefig(path, dpi=dpi)


def plot_masks(image, masks, *, patch_size, path=None, axes=None, columns=None, title=None, dpi=100):
    """Shows an image and each of its masks: visible patches as they are, masked ones greyed.

    Args:
        image: `(H, W)`, `(H, W, 1)` or `(H, W, 3)`, numpy or a backend tensor (see `masked_image`
            for how pixels are scaled).
        masks: `(M, T)` (or `(T,)` for one mask), bool or 0/1 with 1 = masked; `T` patches in
            row-major order over the `(H / patch_size) x (W / patch_size)` grid. The output of
            `InverseBlockMasking` for one image is such an array.
        patch_size: int, side of a patch in pixels.
        path: if given, the figure is also saved there (PNG unless the suffix says otherwise).
        axes: optional sequence of `M + 1` matplotlib Axes to draw into (the image, then each
            mask), e.g. one row of a larger figure; by default a new figure is made.
        columns: panels per row of a new figure (default: all `M + 1` in one row, at most 9).
        title: optional title of the image panel (default "image").
        dpi: resolution of the saved PNG.

    Returns:
        The `matplotlib.figure.Figure`.

    Raises:
        ValueError: naming the argument, when `image` is not an image, `patch_size` does not divide
            its size, or `masks` does not hold 0/1 masks of the image's patch grid.
        ImportError: when matplotlib is not installed.
    """
    rgb = _rgb01(image)
    rows, cols, patch_size = _grid(rgb.shape, patch_size)
    masks = _check_masks(masks, rows, cols)
    panels = len(masks) + 1
    if axes is None:
        columns = columns or min(panels, 9)
        if isinstance(columns, bool) or int(columns) != columns or columns < 1:
            raise ValueError(f"`columns` must be an integer >= 1, got {columns!r}.")
        figure, axes = _new_figure(panels, int(columns), (1.6, 1.75))
    else:
        _matplotlib()
        axes = list(np.ravel(axes))
        if len(axes) != panels:
            raise ValueError(f"`axes` must hold {panels} Axes (the image and {panels - 1} masks), got {len(axes)}.")
        figure = axes[0].figure
    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].set_title("image" if title is None else title, fontsize=9)
    for k, (ax, mask) in enumerate(zip(axes[1:], masks)):
        ax.imshow(masked_image(rgb, mask, patch_size), interpolation="nearest")
        ax.set_title(f"mask {k + 1}: {mask.mean():.0%} masked", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    _save(figure, path, dpi)
    return figure


def _blank(value):
    return value is None or (isinstance(value, str) and not value.strip())


def _history_columns(history):
    """`(epochs, {name: values})` from a History, a `.history` dict, a list of dicts or a CSV path."""
    epochs = None
    if isinstance(history, (str, os.PathLike)):
        with open(history, newline="") as file:
            rows = list(csv.DictReader(file))
        if not rows:
            raise ValueError(f"`history` file {os.fspath(history)!r} holds no epoch.")
        history = rows
    if hasattr(history, "history") and isinstance(history.history, dict):
        epochs = getattr(history, "epoch", None)
        history = history.history
    if isinstance(history, dict):
        columns = {str(k): list(v) for k, v in history.items()}
    elif isinstance(history, (list, tuple)):
        if not all(isinstance(row, dict) for row in history):
            raise ValueError("`history` given as a list must hold one dict of metric values per epoch.")
        names = list(dict.fromkeys(k for row in history for k in row))
        columns = {str(k): [row.get(k) for row in history] for k in names}
    else:
        raise ValueError(
            "`history` must be a keras History, its `.history` dict, a list of per-epoch dicts or the path of a "
            f"CSVLogger file, got {type(history).__name__}."
        )
    if "epoch" in columns:
        epochs = columns.pop("epoch")
    numeric = {}
    for name, values in columns.items():
        try:
            numeric[name] = np.array([np.nan if _blank(v) else float(v) for v in values], dtype="float64")
        except (TypeError, ValueError):
            continue  # a non-numeric column (e.g. a learning-rate schedule's name)
    lengths = {len(v) for v in numeric.values()}
    if not numeric or lengths == {0}:
        raise ValueError("`history` holds no numeric metric.")
    if len(lengths) != 1:
        raise ValueError(f"`history` metrics have different lengths: { {k: len(v) for k, v in numeric.items()} }.")
    length = lengths.pop()
    if epochs is not None and len(epochs) == length:
        x = np.array([float(e) for e in epochs]) + 1.0  # Keras counts epochs from 0 and prints them from 1
    else:
        x = np.arange(1, length + 1, dtype="float64")
    return x, numeric


def plot_training_curves(history, *, metrics=None, path=None, columns=3, yscale="linear", dpi=100):
    """Plots each metric of a training run against the epoch, one panel per metric.

    Args:
        history: what `fit()` returns (a `keras.callbacks.History`), its `.history` dict
            (`{name: [value per epoch]}`), a list of per-epoch dicts (`[{name: value}, ...]`), or the
            path of a `keras.callbacks.CSVLogger` file.
        metrics: names to plot, in order (a string for one); by default every numeric metric, in
            the history's order. The `val_<name>` series, when present, is drawn in `<name>`'s
            panel (and gets no panel of its own by default).
        path: if given, the figure is also saved there.
        columns: panels per row.
        yscale: matplotlib y scale of every panel, e.g. "linear" or "log".
        dpi: resolution of the saved PNG.

    Returns:
        The `matplotlib.figure.Figure`; panel `i` is `figure.axes[i]`, its first line the metric
        (x = epoch, counted from 1) and its second, if any, the `val_` series.

    Raises:
        ValueError: naming the argument, when `history` is empty or of another type, or `metrics`
            names a metric the history lacks.
        ImportError: when matplotlib is not installed.
    """
    epochs, series = _history_columns(history)
    if metrics is None:
        metrics = [name for name in series if not (name.startswith("val_") and name[4:] in series)]
    elif isinstance(metrics, str):
        metrics = [metrics]
    else:
        metrics = list(metrics)
    if not metrics:
        raise ValueError("`metrics` is empty: name at least one metric to plot.")
    unknown = [m for m in metrics if m not in series]
    if unknown:
        raise ValueError(f"`metrics` names {unknown}, which the history lacks; it has {sorted(series)}.")
    if isinstance(columns, bool) or int(columns) != columns or columns < 1:
        raise ValueError(f"`columns` must be an integer >= 1, got {columns!r}.")
    columns = min(int(columns), len(metrics))
    figure, axes = _new_figure(len(metrics), columns, (3.2, 2.4))
    for ax, name in zip(axes, metrics):
        ax.plot(epochs, series[name], marker="o", markersize=3, label=name)
        if f"val_{name}" in series:
            ax.plot(epochs, series[f"val_{name}"], marker="o", markersize=3, label=f"val_{name}")
            ax.legend(fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_yscale(yscale)
        if yscale == "linear":
            ax.ticklabel_format(axis="y", useOffset=False)  # e.g. ema_decay 0.99904 as is, not 1e-5 + 0.999
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    _save(figure, path, dpi)
    return figure
