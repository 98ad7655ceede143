"""Tests for scoresde/data.py: loading, splitting, scaling, dequantization, batching, bad input."""

import re

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from scoresde import toy2d
from scoresde.data import (
    DataConfig,
    build_dataset,
    check_batch_size,
    dequantize,
    inverse_scaler,
    scaler,
    to_uint8,
)


DEQUANTIZED_DIGITS = DataConfig(dataset="digits", image_size=8, centered=True, uniform_dequantization=True)


@pytest.fixture(scope="module")
def digits():
    return build_dataset(DEQUANTIZED_DIGITS)


def _write_png(path, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _gradient_image(height, width, offset=0):
    return (np.add.outer(np.arange(height), np.arange(width)) * 7 + offset) % 256


# ----- toy sets -----


@pytest.mark.parametrize("name", toy2d.TOY_NAMES)
def test_toy_sets_are_fixed_unscaled_samples_of_the_toy_module(name):
    config = DataConfig(dataset=name, num_train=300, num_test=50, seed=3, centered=True)
    dataset = build_dataset(config)
    assert dataset.train.shape == (300, 2) and dataset.test.shape == (50, 2)
    assert dataset.train.dtype == np.float32 and not dataset.is_image
    np.testing.assert_array_equal(dataset.train_batch(2, 100), dataset.train[dataset.batch_indices(2, 100)])
    np.testing.assert_array_equal(dataset.train, build_dataset(config).train)
    assert not np.array_equal(dataset.train[:50], dataset.test)
    other_seed = build_dataset(DataConfig(dataset=name, num_train=300, num_test=50, seed=4))
    assert not np.array_equal(dataset.train, other_seed.train)


def test_dequantizing_points_is_an_error():
    with pytest.raises(ValueError, match="rings"):
        build_dataset(DataConfig(dataset="rings", num_train=300, num_test=50, uniform_dequantization=True))


# ----- digits -----


def test_digits_are_on_the_8bit_grid_and_split_disjointly():
    dataset = build_dataset(DataConfig(dataset="digits", test_fraction=0.2, seed=1))
    assert dataset.train.shape[1:] == (8, 8, 1) and len(dataset.train) + len(dataset.test) == 1797
    assert len(dataset.test) == round(0.2 * 1797)
    both = np.concatenate([dataset.train, dataset.test])
    assert both.min() == 0.0 and both.max() == 1.0
    np.testing.assert_allclose(255 * both, np.rint(255 * both), atol=1e-4)
    assert set(np.unique(dataset.train_labels)) == set(range(10))
    # The 1,797 sklearn images are distinct, so train and test must partition them.
    rows = sorted(row.tobytes() for row in both.reshape(len(both), -1))
    reference = np.rint(load_digits().images * (255 / 16)).astype(np.float32) / 255
    assert rows == sorted(row.tobytes() for row in reference.reshape(1797, -1))
    assert len(set(rows)) == 1797


def test_digits_split_depends_on_the_seed_only():
    a, b = (build_dataset(DataConfig(dataset="digits", seed=s)) for s in (0, 0))
    c = build_dataset(DataConfig(dataset="digits", seed=1))
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.test_labels, c.test_labels)


def test_digits_16_is_a_nearest_neighbour_upsampling_of_8():
    small = build_dataset(DataConfig(dataset="digits", image_size=8))
    large = build_dataset(DataConfig(dataset="digits", image_size=16, num_channels=3))
    assert large.train.shape[1:] == (16, 16, 3)
    np.testing.assert_array_equal(large.train[:, ::2, ::2, :1], small.train)
    np.testing.assert_array_equal(large.train[:, 1::2, 1::2, 2:], small.train)


def test_digits_size_must_be_a_multiple_of_8():
    with pytest.raises(ValueError, match="multiple of 8"):
        build_dataset(DataConfig(dataset="digits", image_size=12))


# ----- scaling and dequantization -----


@pytest.mark.parametrize("centered, low, high", [(False, 0.0, 1.0), (True, -1.0, 1.0)])
def test_scaler_maps_unit_interval_and_round_trips(centered, low, high):
    x = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    scaled = scaler(centered)(x)
    assert scaled[0] == low and scaled[-1] == high
    np.testing.assert_allclose(inverse_scaler(centered)(scaled), x, atol=1e-7)


def test_to_uint8_inverts_the_8bit_grid_and_clips():
    values = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8(values / 255.0), values)
    np.testing.assert_array_equal(to_uint8(np.array([-0.5, 1.5])), [0, 255])


def test_dequantization_stays_in_its_bin():
    x = np.tile(np.arange(256, dtype=np.float32) / 255.0, 400)
    y = dequantize(x, np.random.default_rng(0))
    assert y.dtype == np.float32 and y.min() >= 0.0 and y.max() < 1.0
    np.testing.assert_array_equal(np.floor(256 * y), np.rint(255 * x))
    # The noise fills each bin: every bin's values spread over nearly its whole width 1/256.
    spread = (y - np.rint(255 * x) / 256).reshape(400, 256)
    assert spread.min() < 0.01 / 256 and spread.max() > 0.99 / 256


def test_digits_batches_are_dequantized_then_scaled(digits):
    batch = digits.train_batch(3, 64)
    assert batch.shape == (64, 8, 8, 1) and batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() < 1.0
    clean = digits.train[digits.batch_indices(3, 64)]
    np.testing.assert_array_equal(np.floor(256 * digits.unscale(batch)), np.rint(255 * clean))
    assert not np.allclose(digits.unscale(batch), clean, atol=1e-3)


# ----- deterministic batching -----


def test_batch_is_a_pure_function_of_step(digits):
    after_others = [digits.train_batch(step, 32) for step in range(7)][-1]
    fresh = build_dataset(DEQUANTIZED_DIGITS)
    np.testing.assert_array_equal(fresh.train_batch(6, 32), after_others)
    np.testing.assert_array_equal(fresh.train_batch(6, 32), digits.train_batch(6, 32))
    assert not np.array_equal(digits.train_batch(5, 32), digits.train_batch(6, 32))


def test_each_epoch_is_a_fresh_permutation(digits):
    n, batch_size = len(digits.train), 100
    steps = n // batch_size
    epochs = [
        np.concatenate([digits.batch_indices(epoch * steps + k, batch_size) for k in range(steps)])
        for epoch in (0, 1)
    ]
    for indices in epochs:
        assert len(np.unique(indices)) == steps * batch_size
    assert not np.array_equal(epochs[0], epochs[1])


def test_shuffling_depends_on_the_seed():
    configs = (DataConfig(dataset="two_moons", num_train=300, num_test=50, seed=seed) for seed in (0, 0, 1))
    a, b, c = map(build_dataset, configs)
    np.testing.assert_array_equal(a.batch_indices(9, 50), b.batch_indices(9, 50))
    assert not np.array_equal(a.batch_indices(9, 50), c.batch_indices(9, 50))


def test_process_slices_concatenate_to_the_global_batch(digits):
    slices = [digits.train_batch(4, 48, process_index=i, process_count=3) for i in range(3)]
    np.testing.assert_array_equal(np.concatenate(slices), digits.train_batch(4, 48))


def test_test_batches_cover_the_test_set_in_order():
    dataset = build_dataset(DataConfig(dataset="digits", centered=True))
    batches = list(dataset.test_batches(50))
    assert [len(b) for b in batches[:-1]] == [50] * (len(batches) - 1)
    np.testing.assert_allclose(dataset.unscale(np.concatenate(batches)), dataset.test, atol=1e-6)


@pytest.mark.parametrize("batch_size, count", [(8, 2), (24, 8), (5, 1)])
def test_check_batch_size_returns_the_per_device_size(batch_size, count):
    assert check_batch_size(batch_size, count) == batch_size // count


@pytest.mark.parametrize("batch_size, count", [(10, 4), (0, 1), (3, 8)])
def test_check_batch_size_names_batch_and_device_count(batch_size, count):
    with pytest.raises(ValueError, match=f"batch size {batch_size} .* device count {count}"):
        check_batch_size(batch_size, count)


def test_batch_larger_than_the_training_set_is_an_error():
    dataset = build_dataset(DataConfig(dataset="rings", num_train=10, num_test=50))
    with pytest.raises(ValueError, match="batch size 11"):
        dataset.train_batch(0, 11)


# ----- image folders -----


def test_image_folder_loads_in_sorted_order(tmp_path):
    for name, offset in [("b.png", 1), ("a.png", 0), ("c.PNG", 2), ("notes.txt", None)]:
        if offset is None:
            (tmp_path / name).write_text("not an image")
        else:
            _write_png(tmp_path / name, _gradient_image(6, 5, offset))
    dataset = build_dataset(DataConfig(dataset="image_folder", path=str(tmp_path), test_fraction=0.0))
    assert dataset.train.shape == (3, 6, 5, 1) and dataset.test.shape == (0, 6, 5, 1)
    for i in range(3):
        np.testing.assert_array_equal(to_uint8(dataset.train[i, ..., 0]), _gradient_image(6, 5, i))


def test_image_folder_centre_crops_and_resizes_to_rgb(tmp_path):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 10:30] = [200, 100, 50]  # the centred 20x20 square
    _write_png(tmp_path / "wide.png", image)
    Image.fromarray(np.full((30, 30), 128, np.uint8)).save(tmp_path / "grey.jpg")
    dataset = build_dataset(
        DataConfig(dataset="image_folder", path=str(tmp_path), image_size=8, num_channels=3, test_fraction=0)
    )
    assert dataset.train.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(to_uint8(dataset.train[0]), np.full((8, 8, 3), 128), atol=2)
    np.testing.assert_array_equal(to_uint8(dataset.train[1]), np.broadcast_to([200, 100, 50], (8, 8, 3)))


def test_empty_image_folder_names_the_folder(tmp_path):
    (tmp_path / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match=f"image folder {re.escape(str(tmp_path))} holds no"):
        build_dataset(DataConfig(dataset="image_folder", path=str(tmp_path)))


def test_corrupt_image_names_the_file(tmp_path):
    _write_png(tmp_path / "good.png", _gradient_image(4, 4))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8)
    with pytest.raises(ValueError, match="broken.png"):
        build_dataset(DataConfig(dataset="image_folder", path=str(tmp_path)))


def test_truncated_image_names_the_file(tmp_path):
    _write_png(tmp_path / "full.png", _gradient_image(32, 32))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.png"):
        build_dataset(DataConfig(dataset="image_folder", path=str(tmp_path)))


def test_mixed_sizes_name_two_files_and_sizes(tmp_path):
    _write_png(tmp_path / "a.png", _gradient_image(4, 4))
    _write_png(tmp_path / "b.png", _gradient_image(4, 4))
    _write_png(tmp_path / "c.png", _gradient_image(5, 6))
    with pytest.raises(ValueError, match=r"a.png is 4x4 but .*c.png is 6x5"):
        build_dataset(DataConfig(dataset="image_folder", path=str(tmp_path)))
    config = DataConfig(dataset="image_folder", path=str(tmp_path), image_size=4, test_fraction=0)
    assert build_dataset(config).train.shape == (3, 4, 4, 1)


@pytest.mark.parametrize("dataset", ["image_folder", "npz"])
def test_missing_path_is_named(tmp_path, dataset):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"{re.escape(str(missing))} does not exist"):
        build_dataset(DataConfig(dataset=dataset, path=str(missing)))
    with pytest.raises(ValueError, match="needs a path"):
        build_dataset(DataConfig(dataset=dataset))


def test_image_folder_that_is_a_file_is_named(tmp_path):
    path = tmp_path / "file.png"
    _write_png(path, _gradient_image(4, 4))
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} is not a directory"):
        build_dataset(DataConfig(dataset="image_folder", path=str(path)))


# ----- npz -----


def test_npz_images_with_default_keys_and_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (20, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(20))
    dataset = build_dataset(DataConfig(dataset="npz", path=str(tmp_path / "d.npz"), test_fraction=0.25))
    assert dataset.train.shape == (15, 4, 4, 1) and dataset.is_image
    merged = np.zeros((20, 4, 4, 1), np.float32)
    merged[dataset.train_labels], merged[dataset.test_labels] = dataset.train, dataset.test
    np.testing.assert_array_equal(to_uint8(merged[..., 0]), images)


def test_npz_points_with_named_key(tmp_path):
    points = np.random.default_rng(0).normal(size=(30, 3))
    np.savez(tmp_path / "p.npz", samples=points)
    path = str(tmp_path / "p.npz")
    config = DataConfig(dataset="npz", path=path, npz_key="samples", test_fraction=0, centered=True)
    dataset = build_dataset(config)
    assert not dataset.is_image and dataset.train_labels is None
    batch = dataset.train_batch(0, 30)
    np.testing.assert_allclose(np.sort(batch, axis=0), np.sort(points, axis=0), rtol=1e-6)


def test_npz_without_the_key_names_file_key_and_keys_present(tmp_path):
    path = tmp_path / "wrong.npz"
    np.savez(path, pictures=np.zeros((4, 2, 2)), targets=np.zeros(4))
    expected = rf"{re.escape(str(path))} has no array 'x' or 'images'; it holds \['pictures', 'targets'\]"
    with pytest.raises(ValueError, match=expected):
        build_dataset(DataConfig(dataset="npz", path=str(path)))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} has no array 'img'; it holds"):
        build_dataset(DataConfig(dataset="npz", path=str(path), npz_key="img"))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} has no array 'label'"):
        build_dataset(DataConfig(dataset="npz", path=str(path), npz_key="pictures", label_key="label"))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a zip archive", "cannot be read"),
        (None, "single .npy array"),
    ],
)
def test_unreadable_npz_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    if content is None:
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as raised:
        build_dataset(DataConfig(dataset="npz", path=str(path)))
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    "x, labels, message",
    [
        (np.full((4, 2, 2), 2.0), None, r"must lie in \[0, 1\]; got \[2.0, 2.0\]"),
        (np.full((4, 2, 2), np.nan), None, r"must lie in \[0, 1\]"),
        (np.zeros((4, 2, 2), np.int64), None, "int64"),
        (np.zeros((4,)), None, "got shape"),
        (np.zeros((4, 2, 2)), np.zeros(3), "labels shaped"),
        (np.zeros((4, 2, 2, 2)), None, "2 channels"),
    ],
)
def test_unusable_npz_arrays_name_the_file(tmp_path, x, labels, message):
    path = tmp_path / "arrays.npz"
    np.savez(path, x=x, **({} if labels is None else {"y": labels}))
    with pytest.raises(ValueError, match=message) as raised:
        build_dataset(DataConfig(dataset="npz", path=str(path)))
    assert str(path) in str(raised.value)


def test_npz_image_size_mismatch_is_named(tmp_path):
    path = tmp_path / "small.npz"
    np.savez(path, x=np.zeros((4, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} holds 2x2 images, not image_size 4"):
        build_dataset(DataConfig(dataset="npz", path=str(path), image_size=4))


# ----- names and settings -----


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'") as raised:
        build_dataset(DataConfig(dataset="cifar10"))
    for name in ("checkerboard", "digits", "image_folder", "npz", *toy2d.TOY_NAMES):
        assert repr(name) in str(raised.value)


@pytest.mark.parametrize(
    "field, value",
    [("num_channels", 2), ("image_size", 0), ("test_fraction", 1.0), ("seed", -1), ("num_train", 0)],
)
def test_invalid_settings_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        DataConfig(**{field: value})
