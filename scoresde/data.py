"""Datasets: 2-D toy sets, scikit-learn's handwritten digits, pairs of them with prompts, image folders and
`.npz` arrays.

Every dataset is held in host memory as a finite train/test split of numpy arrays. Images are stored in
[0, 1] on the 8-bit grid, channel-last [N, H, W, C] float32, and are scaled batch by batch to the model's
range: [0, 1], or [-1, 1] when `centered` (the `data.centered` option of Song et al. 2021). Optional uniform
dequantization, (255 x + u) / 256 with u ~ U[0, 1) (Theis et al. 2016, Sec. 3.1; Ho et al. 2020, App. B), is
applied before scaling. 2-D points are [N, 2] and are used as given.

Batches are pure functions of (seed, step): step k takes slice k mod (N // B) of a permutation drawn from
(seed, epoch), so a run resumed at step k sees exactly the batches an uninterrupted run would have seen.
A batch is a small pytree, `Batch`: the examples `x` and, for a dataset with labels (digits; `.npz` with a
label array; an image folder with one sub-folder per class), their integer labels `cond`, the condition a
class-conditional network is trained on. "digit_pairs" (`scoresde.digit_pairs`) serves [H, 2H, C] canvases
of two digits side by side whose `cond` is the token ids [B, L] of a prompt naming them
(`scoresde.tokenizer`); its labels, [N, 2] (left, right) digits, stay with the dataset for evaluation.

Example:
    >>> dataset = build_dataset(DataConfig(dataset="digits", image_size=16, centered=True))
    >>> batch = dataset.batch(step=0, batch_size=128)  # x: [128, 16, 16, 1] in [-1, 1], cond: [128] labels
    >>> x = dataset.train_batch(step=0, batch_size=128)  # batch.x alone
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import jax
import numpy as np
from flax import struct
from PIL import Image

from scoresde import digit_pairs, observations, tokenizer, toy2d

ArrayT = TypeVar("ArrayT")

# Independent random streams derived from the one dataset seed.
_SPLIT_STREAM, _SHUFFLE_STREAM, _TRAIN_NOISE_STREAM, _TEST_NOISE_STREAM = range(4)
_TOY_TRAIN_STREAM, _TOY_TEST_STREAM = range(2)
_PAIRS_TRAIN_STREAM, _PAIRS_TEST_STREAM = 4, 5
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_DEFAULT_NPZ_KEYS = ("x", "images")
_DEFAULT_LABEL_KEYS = ("y", "labels")
_DIGITS_SIZE = 8
_DIGITS_MAX = 16


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Dataset settings, converted once from the experiment config at the CLI boundary.

    Attributes:
      dataset: a name accepted by `build_dataset`.
      image_size: digits: 8 or a multiple of 8 (nearest-neighbour upsampling keeps the 8-bit grid);
        image_folder (a folder of images, or of one sub-folder of images per class, labelled in sorted name
        order): centre-crop to a square and resize to this side, or None to require equal sizes;
        npz: None, or the size the stored images must have.
      num_channels: 1 (grayscale) or 3 (RGB); grayscale sources are repeated to 3 channels.
      centered: scale images to [-1, 1] instead of [0, 1].
      uniform_dequantization: add U[0, 1) noise on the 8-bit grid, (255 x + u) / 256, to every batch.
      path: the image folder or `.npz` file.
      npz_key: the array of examples in the `.npz` file; None tries "x", then "images".
      label_key: the array of labels in the `.npz` file; None takes "y" or "labels" when present.
      test_fraction: fraction of digits / folder / npz examples held out, chosen by `seed` (digit_pairs:
        of the digits, so test canvases hold test digits only).
      seed: seeds the split, the toy samples, the canvases and prompts, the shuffling and the dequantization
        noise.
      num_train: number of toy training points or digit-pair training canvases.
      num_test: number of toy test points or digit-pair test canvases.
    """

    dataset: str = "checkerboard"
    image_size: int | None = None
    num_channels: int = 1
    centered: bool = False
    uniform_dequantization: bool = False
    path: str | None = None
    npz_key: str | None = None
    label_key: str | None = None
    test_fraction: float = 0.1
    seed: int = 0
    num_train: int = 10_000
    num_test: int = 2_000

    def __post_init__(self):
        if self.num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3; got {self.num_channels}.")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be positive or None; got {self.image_size}.")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in [0, 1); got {self.test_fraction}.")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative; got {self.seed}.")
        if self.num_train < 1 or self.num_test < 0:
            raise ValueError(
                f"num_train must be >= 1 and num_test >= 0; got {self.num_train} and {self.num_test}."
            )


def scaler(centered: bool) -> Callable[[ArrayT], ArrayT]:
    """Maps data in [0, 1] to the model's range: [-1, 1] if `centered`, else unchanged (numpy or jax)."""
    return (lambda x: 2.0 * x - 1.0) if centered else (lambda x: x)


def inverse_scaler(centered: bool) -> Callable[[ArrayT], ArrayT]:
    """Inverse of `scaler(centered)`: maps the model's range back to [0, 1], e.g. to write images."""
    return (lambda x: (x + 1.0) / 2.0) if centered else (lambda x: x)


def dequantize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform dequantization of 8-bit data x in [0, 1]: y = (255 x + u) / 256 with u ~ U[0, 1), same shape.

    x is first snapped to the 8-bit grid, and u is drawn on a 2^-16 grid so that y = (2^16 * 255 x + k) / 2^24
    is exact in float32: y lies in [0, 1) and floor(256 y) recovers 255 x (Theis et al. 2016, Sec. 3.1).
    """
    noise = rng.integers(0, 2**16, size=np.shape(x)).astype(np.float32) / 2**16
    return ((np.rint(255.0 * np.asarray(x, np.float32)) + noise) / 256.0).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Images in [0, 1] (any shape) to uint8, clipping values outside the range."""
    return np.clip(np.rint(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def check_batch_size(batch_size: int, device_count: int | None = None) -> int:
    """Checks that a global batch splits evenly over devices and returns the per-device batch size.

    Args:
      batch_size: the global batch size.
      device_count: number of devices sharing the batch; defaults to `jax.device_count()`.

    Raises:
      ValueError: naming the batch size and the device count when the batch does not split evenly.
    """
    count = jax.device_count() if device_count is None else device_count
    if batch_size < 1 or batch_size % count:
        raise ValueError(f"batch size {batch_size} is not a positive multiple of the device count {count}.")
    return batch_size // count


@struct.dataclass
class Batch:
    """What one step trains on: x: [B, ...] examples; cond: [B] int32 class labels, [B, L] int32 prompt
    token ids, or None (no condition)."""

    x: np.ndarray | jax.Array
    cond: np.ndarray | jax.Array | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A finite train/test split held in host memory, batched deterministically.

    Attributes:
      name: the dataset name.
      train: [N, H, W, C] images in [0, 1], or [N, D] points.
      test: [M, ...] shaped like `train`.
      train_labels: [N] int32 class labels ([N, 2] left and right digits of digit_pairs), or None.
      test_labels: [M] or [M, 2] shaped like `train_labels`, or None.
      train_cond: what batches serve as `cond`: [N] the labels, [N, L] prompt token ids, or None.
      test_cond: [M, ...] shaped like `train_cond`, or None.
      is_image: whether examples are images (scaled and optionally dequantized) or points (used as given).
      centered: images are served in [-1, 1] instead of [0, 1].
      uniform_dequantization: batches get uniform dequantization noise.
      seed: seeds the shuffling and the dequantization noise.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray | None
    test_labels: np.ndarray | None
    train_cond: np.ndarray | None
    test_cond: np.ndarray | None
    is_image: bool
    centered: bool = False
    uniform_dequantization: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.uniform_dequantization and not self.is_image:
            raise ValueError(
                f"uniform_dequantization applies to 8-bit images, not to the points of {self.name!r}."
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (16, 16, 1) or (2,)."""
        return self.train.shape[1:]

    def scale(self, x: ArrayT) -> ArrayT:
        """Stored range ([0, 1] images) to the model's range; points unchanged."""
        return scaler(self.centered and self.is_image)(x)

    def unscale(self, x: ArrayT) -> ArrayT:
        """Model's range back to the stored range ([0, 1] images), e.g. for `to_uint8`; points unchanged."""
        return inverse_scaler(self.centered and self.is_image)(x)

    def batch_indices(self, step: int, batch_size: int) -> np.ndarray:
        """Training-set indices of the global batch at `step`: [batch_size], a pure function of (seed, step).

        Each epoch is a fresh permutation drawn from (seed, epoch); the last N mod batch_size examples of an
        epoch's permutation are skipped, so every batch is full.
        """
        n = len(self.train)
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch size {batch_size} must lie in [1, {n}] for the {n} training examples.")
        if step < 0:
            raise ValueError(f"step must be non-negative; got {step}.")
        epoch, k = divmod(step, n // batch_size)
        permutation = np.random.default_rng((self.seed, _SHUFFLE_STREAM, epoch)).permutation(n)
        return permutation[k * batch_size : (k + 1) * batch_size]

    def batch(self, step: int, batch_size: int, *, process_index: int = 0, process_count: int = 1) -> Batch:
        """The training batch at `step`: x dequantized (if set) and scaled, and its labels (if any), each
        [batch_size / process_count, ...].

        Args:
          step: the training step; the batch is a pure function of (seed, step).
          batch_size: the global batch size, over all processes.
          process_index: this host's slice of the global batch (multi-host training).
          process_count: number of hosts; the slices of all hosts concatenate to the global batch.
        """
        local = check_batch_size(batch_size, process_count)
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} must lie in [0, {process_count}).")
        rows = slice(process_index * local, (process_index + 1) * local)
        indices = self.batch_indices(step, batch_size)
        x = self._prepare(self.train[indices], (self.seed, _TRAIN_NOISE_STREAM, step))[rows]
        return Batch(x, None if self.train_cond is None else self.train_cond[indices][rows])

    def train_batch(
        self, step: int, batch_size: int, *, process_index: int = 0, process_count: int = 1
    ) -> np.ndarray:
        """The examples of `batch(step, batch_size, ...)` alone: [batch_size / process_count, ...]."""
        return self.batch(step, batch_size, process_index=process_index, process_count=process_count).x

    def test_batch(self, index: int, batch_size: int) -> Batch:
        """Test batch `index`: at most batch_size examples from index * batch_size on, dequantized with fixed
        noise (if set) and scaled, a pure function of (seed, index), with their labels."""
        if batch_size < 1:
            raise ValueError(f"batch size must be positive; got {batch_size}.")
        rows = slice(index * batch_size, (index + 1) * batch_size)
        x = self._prepare(self.test[rows], (self.seed, _TEST_NOISE_STREAM, index))
        return Batch(x, None if self.test_cond is None else self.test_cond[rows])

    def test_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The examples of the test set in order, as `test_batch` serves them.

        Yields:
          [batch_size, ...] arrays (the last may be shorter).
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be positive; got {batch_size}.")
        for i in range(-(-len(self.test) // batch_size)):
            yield self.test_batch(i, batch_size).x

    def _prepare(self, x: np.ndarray, noise_seed: tuple[int, ...]) -> np.ndarray:
        if self.uniform_dequantization:
            x = dequantize(x, np.random.default_rng(noise_seed))
        return self.scale(x)


def _split(config: DataConfig, x: np.ndarray, labels: np.ndarray | None, *, is_image: bool) -> Dataset:
    """Holds out `config.test_fraction` of the examples, chosen by a permutation drawn from the seed."""
    num_test = int(round(config.test_fraction * len(x)))
    if num_test >= len(x):
        raise ValueError(f"test_fraction {config.test_fraction} leaves no training examples out of {len(x)}.")
    order = np.random.default_rng((config.seed, _SPLIT_STREAM)).permutation(len(x))
    train, test = np.sort(order[num_test:]), np.sort(order[:num_test])
    train_labels, test_labels = (None, None) if labels is None else (labels[train], labels[test])
    return Dataset(
        name=config.dataset,
        train=x[train],
        test=x[test],
        train_labels=train_labels,
        test_labels=test_labels,
        train_cond=train_labels,
        test_cond=test_labels,
        is_image=is_image,
        centered=config.centered,
        uniform_dequantization=config.uniform_dequantization,
        seed=config.seed,
    )


def _match_channels(x: np.ndarray, num_channels: int, source: str) -> np.ndarray:
    """[N, H, W, C] -> [N, H, W, num_channels], repeating a single channel; other mismatches are errors."""
    if x.shape[-1] == num_channels:
        return x
    if x.shape[-1] == 1:
        return np.repeat(x, num_channels, axis=-1)
    raise ValueError(f"{source} has {x.shape[-1]} channels; cannot make num_channels {num_channels} of them.")


def _load_toy(config: DataConfig) -> Dataset:
    """Fixed finite samples of a 2-D toy distribution from `scoresde.toy2d`: [num_train, 2], [num_test, 2],
    with the toy's labels where it has them (the noisy curves' branch, e.g. eight_gaussians' mode)."""
    key = jax.random.PRNGKey(config.seed)
    train, train_labels = toy2d.sample_toy_labelled(
        config.dataset, jax.random.fold_in(key, _TOY_TRAIN_STREAM), config.num_train)
    test, test_labels = toy2d.sample_toy_labelled(
        config.dataset, jax.random.fold_in(key, _TOY_TEST_STREAM), config.num_test)
    train_labels, test_labels = (None, None) if train_labels is None else map(np.asarray, (train_labels,
                                                                                           test_labels))
    return Dataset(
        name=config.dataset,
        train=np.asarray(train),
        test=np.asarray(test),
        train_labels=train_labels,
        test_labels=test_labels,
        train_cond=train_labels,
        test_cond=test_labels,
        is_image=False,
        uniform_dequantization=config.uniform_dequantization,
        seed=config.seed,
    )


def _load_digits(config: DataConfig) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits (values 0..16), rounded onto the 8-bit grid in [0, 1]."""
    from sklearn.datasets import load_digits  # here, not at the top: importing it takes two seconds

    size = config.image_size or _DIGITS_SIZE
    if size % _DIGITS_SIZE:
        raise ValueError(f"digits image_size must be a multiple of {_DIGITS_SIZE}; got {size}.")
    digits = load_digits()
    x = np.rint(digits.images * (255.0 / _DIGITS_MAX)) / 255.0
    x = np.repeat(np.repeat(x, size // _DIGITS_SIZE, axis=1), size // _DIGITS_SIZE, axis=2)
    x = _match_channels(x[..., None].astype(np.float32), config.num_channels, "digits")
    return _split(config, x, digits.target.astype(np.int32), is_image=True)


def _load_digit_pairs(config: DataConfig) -> Dataset:
    """`num_train` / `num_test` canvases of two digits side by side, [H, 2H, C], with prompts naming them
    (`scoresde.digit_pairs`): training canvases of the training digits in the seen pairs only, test canvases
    of the test digits in all 100 pairs."""
    digits = _load_digits(config)
    train, train_labels, train_prompts = digit_pairs.canvases(
        digits.train, digits.train_labels, digit_pairs.SEEN_PAIRS, config.num_train,
        np.random.default_rng((config.seed, _PAIRS_TRAIN_STREAM)))
    test, test_labels, test_prompts = digit_pairs.canvases(
        digits.test, digits.test_labels, digit_pairs.ALL_PAIRS, config.num_test,
        np.random.default_rng((config.seed, _PAIRS_TEST_STREAM)))
    return dataclasses.replace(
        digits, name=config.dataset, train=train, test=test, train_labels=train_labels,
        test_labels=test_labels, train_cond=tokenizer.encode_batch(train_prompts),
        test_cond=tokenizer.encode_batch(test_prompts))


def _existing_path(path: str | None, what: str) -> Path:
    if path is None:
        raise ValueError(f"the {what} needs a path; none was given.")
    if not Path(path).exists():
        raise ValueError(f"{what} {path} does not exist.")
    return Path(path)


def _entries(folder: Path) -> list[Path]:
    """The folder's entries in sorted order, hidden ones (".name") left out."""
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} is not a directory.")
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as error:
        raise ValueError(f"image folder {folder} cannot be read: {error}") from error


def _list_images(folder: Path) -> list[Path]:
    """The folder's .png/.jpg/.jpeg files in sorted order; ValueError naming the folder if there are none."""
    files = [p for p in _entries(folder) if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise ValueError(f"image folder {folder} holds no {'/'.join(_IMAGE_SUFFIXES)} files.")
    return files


def _class_folders(folder: Path) -> list[Path]:
    """The sub-folders of `folder` in sorted order (class k is the k-th); [] for a folder of images."""
    entries = _entries(folder)
    classes = [p for p in entries if p.is_dir()]
    if classes and any(p.suffix.lower() in _IMAGE_SUFFIXES for p in entries):
        raise ValueError(f"image folder {folder} holds both images and sub-folders; put every image into a "
                         "sub-folder per class, or use no sub-folders.")
    return classes


def _center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Crops the largest centred square and resizes it to size x size (bicubic, antialiased)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def _read_image(path: Path, num_channels: int, image_size: int | None) -> np.ndarray:
    """One image file as uint8 [H, W, num_channels]; ValueError naming the file if it cannot be decoded."""
    with observations.open_image(path) as opened:
        image = opened.convert("L" if num_channels == 1 else "RGB")
    if image_size is not None:
        image = _center_crop_resize(image, image_size)
    return np.asarray(image, np.uint8).reshape(image.height, image.width, num_channels)


def _load_image_folder(config: DataConfig) -> Dataset:
    """A folder of PNG/JPEG images, in sorted file order, optionally centre-cropped and resized; a folder of
    sub-folders holds one class per sub-folder, labelled 0, 1, ... in sorted name order."""
    folder = _existing_path(config.path, "image folder")
    classes = _class_folders(folder)
    per_class = [_list_images(c) for c in classes] if classes else [_list_images(folder)]
    files = [p for group in per_class for p in group]
    labels = np.concatenate([np.full(len(group), k, np.int32) for k, group in enumerate(per_class)])
    images = [_read_image(p, config.num_channels, config.image_size) for p in files]
    for path, image in zip(files, images):
        if image.shape != images[0].shape:
            first, other = f"{images[0].shape[1]}x{images[0].shape[0]}", f"{image.shape[1]}x{image.shape[0]}"
            raise ValueError(f"images differ in size: {files[0]} is {first} but {path} is {other}; "
                             "set image_size to resize them.")
    x = np.stack(images).astype(np.float32) / 255.0
    return _split(config, x, labels if classes else None, is_image=True)


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"npz file {path} cannot be read: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"npz file {path} holds a single .npy array, not a .npz archive of named arrays.")
    return archive


def _npz_array(archive: np.lib.npyio.NpzFile, path: Path, keys: tuple[str, ...], *, required: bool):
    """The first array of `keys` present in the archive; None when absent and not `required`."""
    for key in keys:
        if key in archive.files:
            try:
                return archive[key]
            except (OSError, ValueError, zipfile.BadZipFile) as error:
                raise ValueError(f"npz file {path}: array {key!r} cannot be read: {error}") from error
    if required:
        raise ValueError(
            f"npz file {path} has no array {' or '.join(map(repr, keys))}; it holds {sorted(archive.files)}."
        )
    return None


def _npz_examples(x: np.ndarray, path: Path, config: DataConfig) -> tuple[np.ndarray, bool]:
    """[N, D] points as given, or [N, H, W(, C)] images as float32 in [0, 1]; returns (x, is_image)."""
    if x.ndim == 2:
        return x.astype(np.float32), False
    if x.ndim not in (3, 4):
        raise ValueError(f"npz file {path}: examples must be [N, D] or [N, H, W(, C)]; got shape {x.shape}.")
    if x.dtype == np.uint8:
        x = x / 255.0
    elif not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"npz file {path}: images must be uint8, or floats in [0, 1]; got dtype {x.dtype}.")
    elif not np.all((x >= 0.0) & (x <= 1.0)):  # written so that NaN fails too
        raise ValueError(f"npz file {path}: float images must lie in [0, 1]; got [{x.min()}, {x.max()}].")
    x = x.reshape(x.shape[:3] + (-1,)).astype(np.float32)
    if config.image_size is not None and x.shape[1:3] != (config.image_size,) * 2:
        raise ValueError(f"npz file {path} holds {x.shape[1]}x{x.shape[2]} images, not image_size "
                         f"{config.image_size}; leave image_size unset to use them as stored.")
    return _match_channels(x, config.num_channels, f"npz file {path}"), True


def _load_npz(config: DataConfig) -> Dataset:
    """Examples (and optional integer labels) from a `.npz` file: points [N, D] or images [N, H, W(, C)]."""
    path = _existing_path(config.path, "npz file")
    with _open_npz(path) as archive:
        x_keys = (config.npz_key,) if config.npz_key else _DEFAULT_NPZ_KEYS
        label_keys = (config.label_key,) if config.label_key else _DEFAULT_LABEL_KEYS
        x = _npz_array(archive, path, x_keys, required=True)
        labels = _npz_array(archive, path, label_keys, required=config.label_key is not None)
    if labels is not None and labels.shape != x.shape[:1]:
        raise ValueError(f"npz file {path}: labels shaped {labels.shape} do not match {len(x)} examples.")
    x, is_image = _npz_examples(x, path, config)
    return _split(config, x, None if labels is None else labels.astype(np.int32), is_image=is_image)


def build_dataset(config: DataConfig) -> Dataset:
    """Loads the dataset named by `config.dataset` and splits it into train and test sets.

    Raises:
      ValueError: for an unknown name (listing the valid ones) or unusable input, naming the folder, file
        or array at fault.
    """
    loaders = {
        **{name: _load_toy for name in toy2d.TOY_NAMES},
        "digits": _load_digits,
        "digit_pairs": _load_digit_pairs,
        "image_folder": _load_image_folder,
        "npz": _load_npz,
    }
    if config.dataset not in loaders:
        raise ValueError(f"unknown dataset {config.dataset!r}; valid names: {sorted(loaders)}.")
    return loaders[config.dataset](config)
