"""What a user fixes when inpainting or colorizing: examples and masks read from PNG or `.npz` files.

Both are checked against the model before anything is sampled, so bad input fails with one ValueError that
names the file:

* examples: a PNG (8-bit greyscale "L" or colour "RGB"; images only) or an `.npz` with an array `x`, of one
  example shaped like the model's ([H, W, C], or [D] for points) or a batch [N, ...] of them; images are
  uint8, or floats in [0, 1] (what `scoresde sample` writes);
* masks: 1 = known, 0 = to fill in; a PNG of black (0) and white (255) pixels, or an `.npz` with an array
  `mask` of 0s and 1s, shaped like one example, like the batch, or [H, W] for every channel of an image.

`.npz` files are read with allow_pickle=False: an object array is refused, never unpickled. Image files are
opened lazily and refused before decoding when their header claims more than `MAX_IMAGE_PIXELS` pixels (a
decompression bomb); `scoresde.data` opens image folders the same way (`open_image`).
"""

from __future__ import annotations

import contextlib
import pathlib
import zipfile
from typing import Iterator

import numpy as np
from PIL import Image

from scoresde.samplers.base import require

_PNG_CHANNELS = {"L": 1, "RGB": 3}
MAX_IMAGE_PIXELS = 4096 * 4096


@contextlib.contextmanager
def open_image(path: str | pathlib.Path) -> Iterator[Image.Image]:
    """An image file with its header read and its pixels not yet decoded; ValueError naming the file if it
    cannot be read or claims more than MAX_IMAGE_PIXELS pixels."""
    try:
        with Image.open(path) as image:
            require(image.width * image.height <= MAX_IMAGE_PIXELS,
                    f"image file {path} is {image.width}x{image.height} pixels; at most {MAX_IMAGE_PIXELS} "
                    f"pixels are decoded.")
            yield image
    except (OSError, SyntaxError) as error:  # Pillow raises SyntaxError for some broken PNG chunks
        raise ValueError(f"image file {path} cannot be read: {error}") from error


def _read_png(path: pathlib.Path) -> np.ndarray:
    """An 8-bit greyscale or RGB PNG as uint8 [H, W, C]."""
    with open_image(path) as image:
        mode, array = image.mode, np.asarray(image)
    require(mode in _PNG_CHANNELS, f"{path} is a {mode!r} image; give an 8-bit greyscale (L) or RGB one.")
    return array.reshape(array.shape[:2] + (_PNG_CHANNELS[mode],))


def _read_npz(path: pathlib.Path, key: str) -> np.ndarray:
    """Array `key` of an .npz archive, without unpickling."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:  # numpy takes other files for pickles, refused
        raise ValueError(f"{path} cannot be read as an .npz archive (a zip of .npy arrays).") from error
    require(isinstance(archive, np.lib.npyio.NpzFile), f"{path} is a .npy array, not an .npz archive.")
    with archive:
        require(key in archive.files, f"{path} has no array {key!r}; it holds {sorted(archive.files)}.")
        try:
            return archive[key]
        except (OSError, ValueError, zipfile.BadZipFile) as error:  # numpy's refusal of an object array
            raise ValueError(f"{path}: array {key!r} cannot be read: {error}") from error


def _read(path: str | pathlib.Path, key: str, *, images: bool) -> np.ndarray:
    path = pathlib.Path(path)
    require(path.is_file(), f"{path} does not exist.")
    if path.suffix.lower() == ".npz":
        return _read_npz(path, key)
    require(path.suffix.lower() == ".png", f"{path}: give a .png or .npz file.")
    require(images, f"{path}: this model's examples are points, so give them as an .npz array {key!r}.")
    return _read_png(path)


def _batched(array: np.ndarray, example_shape: tuple[int, ...], path: str, what: str) -> np.ndarray:
    """[*example_shape] or [N, *example_shape] -> [N, *example_shape]."""
    shape = tuple(array.shape)
    require(shape == example_shape or (len(shape) == len(example_shape) + 1 and shape[1:] == example_shape),
            f"{path}: the {what} is shaped {shape}; the model takes examples shaped {example_shape} (or a "
            f"batch [N, {', '.join(map(str, example_shape))}]).")
    return array.reshape((-1,) + example_shape)


def _unit_range(x: np.ndarray, path: str) -> np.ndarray:
    """Image values: uint8 to [0, 1]; floats must already lie in [0, 1]."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    require(np.issubdtype(x.dtype, np.floating), f"{path}: images must be uint8 or floats; got {x.dtype}.")
    require(bool(np.all((x >= 0.0) & (x <= 1.0))),
            f"{path}: float images must lie in [0, 1]; got [{np.nanmin(x)}, {np.nanmax(x)}].")
    return x.astype(np.float32)


def read_examples(
    path: str | pathlib.Path, example_shape: tuple[int, ...], *, images: bool, grey: bool = False
) -> np.ndarray:
    """The examples in `path`, in the data's stored range (images in [0, 1]): [N, *example_shape].

    Args:
      path: a PNG, or an .npz with an array `x`.
      example_shape: the model's example shape, e.g. (8, 8, 1) or (2,).
      images: the model's examples are images (else points).
      grey: one-channel images are accepted and repeated over the model's channels (colorization input).

    Raises:
      ValueError: for a missing or unreadable file, or examples of another shape or range than the model's.
    """
    x = _read(path, "x", images=images)
    if images:
        x = _unit_range(x, str(path))
        if grey and x.shape[-1] == 1 and example_shape[-1] != 1:
            x = np.repeat(x, example_shape[-1], axis=-1)
    else:
        require(np.issubdtype(x.dtype, np.number) and bool(np.all(np.isfinite(x))),
                f"{path}: points must be finite numbers.")
    return _batched(np.asarray(x, np.float32), example_shape, str(path), "input")


def read_mask(path: str | pathlib.Path, shape: tuple[int, ...], *, images: bool) -> np.ndarray:
    """The mask in `path` (1 known, 0 unknown) broadcast to the batch shape [N, *example_shape], float32.

    A PNG mask is black (0, unknown) and white (255, known); an .npz array `mask` holds 0s and 1s, shaped like
    the batch, like one example or (images) [H, W] for every channel.

    Raises:
      ValueError: for a missing or unreadable file, a mask of another shape, or values outside {0, 1}.
    """
    mask = _read(path, "mask", images=images)
    if pathlib.Path(path).suffix.lower() == ".png":
        require(bool(np.all((mask == 0) | (mask == 255))),
                f"{path}: a PNG mask must be black (0, unknown) and white (255, known) only.")
        mask = mask // 255
    require(bool(np.all((mask == 0) | (mask == 1))),
            f"{path}: the mask must hold only 0 (unknown) and 1 (known); got values "
            f"{sorted(np.unique(mask).tolist())[:5]}.")
    if images and mask.ndim == 2:
        mask = mask[..., None]
    if images and mask.shape[-1:] == (1,) and shape[-1] != 1:
        mask = np.repeat(mask, shape[-1], axis=-1)
    mask = _batched(mask, shape[1:], str(path), "mask")
    require(len(mask) in (1, shape[0]),
            f"{path}: the file holds {len(mask)} masks for {shape[0]} inputs; give one, or one per input.")
    return np.broadcast_to(mask, shape).astype(np.float32)
