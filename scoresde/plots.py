"""Pictures of samples: scatter plots for 2-D data, image grids for [N, H, W, C] data; written as PNG."""

from __future__ import annotations

import math
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only: no display is assumed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from scoresde import atomic  # noqa: E402


def scatter_png(path: str | pathlib.Path, samples, reference=None, title: str = "") -> None:
    """Scatter plot of 2-D samples: [N, 2], over optional reference data: [M, 2] in grey."""
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ref = np.asarray(reference)
        ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.75", label="data")
    x = np.asarray(samples)
    ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", markerscale=5, fontsize=7)
    fig.tight_layout()
    with atomic.replacing(path) as temporary:
        fig.savefig(temporary)
    plt.close(fig)


def _grid(images, cols: int | None) -> np.ndarray:
    """Images [N, H, W, C] in [0, 1] tiled `cols` per row (default: a square grid) with 1-pixel white gaps."""
    x = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = x.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
    return grid


def image_grid_png(path: str | pathlib.Path, images, scale: int = 4, cols: int | None = None) -> None:
    """A grid of images: [N, H, W, C] with values in [0, 1], each pixel repeated `scale` times, `cols` per row
    (default: a square grid)."""
    grid = np.kron(_grid(images, cols), np.ones((scale, scale, 1), np.float32))
    pixels = (grid * 255).round().astype(np.uint8)
    with atomic.replacing(path) as temporary:
        Image.fromarray(pixels[..., 0] if grid.shape[-1] == 1 else pixels).save(temporary)


def titled_rows_png(path: str | pathlib.Path, rows, cols: int = 8) -> None:
    """Rows of images, each under its title: rows is a sequence of (title, images [N, H, W, C] in [0, 1]),
    each drawn as a grid `cols` wide (e.g. a prompt above the samples drawn for it)."""
    grids = [_grid(images, min(cols, len(images))) for _, images in rows]
    width = max(g.shape[1] for g in grids)
    heights = [g.shape[0] / width * 6 + 0.35 for g in grids]
    fig, axes = plt.subplots(len(grids), 1, figsize=(6, sum(heights)), dpi=100, squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (title, _), grid in zip(axes[:, 0], rows, grids):
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    with atomic.replacing(path) as temporary:
        fig.savefig(temporary)
    plt.close(fig)


def samples_png(path: str | pathlib.Path, samples, reference=None, title: str = "") -> None:
    """Scatter for 2-D samples [N, 2]; image grid (values in [0, 1]) for [N, H, W, C]."""
    if np.ndim(samples) == 2 and np.shape(samples)[1] == 2:
        scatter_png(path, samples, reference, title)
    elif np.ndim(samples) == 4:
        image_grid_png(path, samples)
    else:
        raise ValueError(f"cannot draw samples shaped {np.shape(samples)}; expected [N, 2] or [N, H, W, C].")
