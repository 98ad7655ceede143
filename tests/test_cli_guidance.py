"""Tests for the CLI's conditional verbs: `inpaint` and `colorize` on PNG and .npz input, and their bad input
(one line on stderr, exit 2, nothing written).

Tiny runs trained once per module: an MLP on the eight Gaussians and an 8x8 colour NCSN++ on the digits.
"""

import pathlib

import numpy as np
import pytest
from PIL import Image

from test_cli import TINY_MLP_FLAGS, _NoCapture, _snapshot, scoresde

import tiny_runs

# Training the colour NCSN++ dominates: the whole module belongs to the slow set.
pytestmark = pytest.mark.slow

SIZE = 8
COLOUR_FLAGS = ["--config=configs/digits/ddpmpp.py", "--noprogress",
                *tiny_runs.flags({**tiny_runs.TINY_NCSNPP, "data.num_channels": 3})]


def _train(root: pathlib.Path, name: str, flags: list[str]) -> pathlib.Path:
    workdir = root / name
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, _, err = scoresde(monkeypatch, _NoCapture(), "train", f"--workdir={workdir}", *flags)
    assert code == 0, err
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Workdirs: "points" (score MLP on the eight Gaussians) and "colour" (NCSN++ on colour digits)."""
    root = tmp_path_factory.mktemp("guided")
    points_flags = [f.replace("toy/checkerboard", "toy/mixture") for f in TINY_MLP_FLAGS]
    return {"points": _train(root, "points", points_flags),
            "colour": _train(root, "colour", COLOUR_FLAGS)}


def _png(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)
    return path


def _digit_png(path: pathlib.Path, channels: int, size: int = SIZE) -> pathlib.Path:
    rng = np.random.default_rng(0)
    return _png(path, rng.integers(0, 256, size=(size, size, channels), dtype=np.uint8))


def _left_half_png(path: pathlib.Path) -> pathlib.Path:
    mask = np.zeros((SIZE, SIZE, 1), np.uint8)
    mask[:, : SIZE // 2] = 255
    return _png(path, mask)


def test_inpaint_keeps_the_known_pixels_of_a_png_exactly(runs, tmp_path, monkeypatch, capsys):
    image, mask = _digit_png(tmp_path / "in.png", 3), _left_half_png(tmp_path / "mask.png")
    code, out, err = scoresde(monkeypatch, capsys, "inpaint", f"--workdir={runs['colour']}",
                              f"--input={image}", f"--mask={mask}", "--num_steps=2",
                              f"--outdir={tmp_path / 'out'}")
    assert code == 0, err
    result = np.load(tmp_path / "out" / "inpaint_2_pc.npz", allow_pickle=False)
    given = np.asarray(Image.open(image), np.float32)[None] / 255.0
    assert result["x"].shape == (1, SIZE, SIZE, 3) and np.all(np.isfinite(result["x"]))
    np.testing.assert_array_equal(result["x"][:, :, : SIZE // 2], given[:, :, : SIZE // 2])
    assert result["mask"][:, :, : SIZE // 2].all() and not result["mask"][:, :, SIZE // 2:].any()
    assert (tmp_path / "out" / "inpaint_2_pc.png").is_file()


def test_inpaint_fills_in_points_from_npz(runs, tmp_path, monkeypatch, capsys):
    x = np.array([[2.0, 0.0], [0.0, -2.0], [1.4, 1.4]], np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    np.savez(tmp_path / "mask.npz", mask=np.array([1, 0], np.int32))  # the first coordinate is known
    code, out, err = scoresde(monkeypatch, capsys, "inpaint", f"--workdir={runs['points']}",
                              f"--input={tmp_path / 'in.npz'}", f"--mask={tmp_path / 'mask.npz'}",
                              "--num_steps=3", f"--outdir={tmp_path / 'out'}")
    assert code == 0, err
    result = np.load(tmp_path / "out" / "inpaint_4_pc.npz", allow_pickle=False)
    np.testing.assert_array_equal(result["x"][:, 0], x[:, 0])
    assert result["x"].shape == (3, 2) and np.all(np.isfinite(result["x"]))


def test_colorize_keeps_the_grey_value_of_a_greyscale_png(runs, tmp_path, monkeypatch, capsys):
    grey = _digit_png(tmp_path / "grey.png", 1)
    code, out, err = scoresde(monkeypatch, capsys, "colorize", f"--workdir={runs['colour']}",
                              f"--input={grey}", "--num_steps=2", f"--outdir={tmp_path / 'out'}")
    assert code == 0, err
    result = np.load(tmp_path / "out" / "colorize_2_pc.npz", allow_pickle=False)
    given = np.asarray(Image.open(grey), np.float32) / 255.0
    assert result["x"].shape == (1, SIZE, SIZE, 3)
    # Exact in the colour basis; mapping back to RGB rounds in proportion to the colours' size (an untrained
    # model's are large).
    rounding = 1e-6 * max(1.0, float(np.abs(result["x"]).max()))
    np.testing.assert_allclose(result["x"].mean(axis=-1)[0], given, atol=rounding)


def _bad_inputs(tmp_path: pathlib.Path, runs: dict) -> dict:
    """case -> (arguments, a fragment of the one-line message)."""
    colour, points = f"--workdir={runs['colour']}", f"--workdir={runs['points']}"
    image, mask = _digit_png(tmp_path / "in.png", 3), _left_half_png(tmp_path / "mask.png")
    np.savez(tmp_path / "wide.npz", mask=np.ones((SIZE, SIZE + 1)))
    np.savez(tmp_path / "half.npz", mask=np.full((SIZE, SIZE), 0.5))
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "points.npz", x=np.zeros((3, 2), np.float32))
    grey_mask = _png(tmp_path / "grey_mask.png", np.full((SIZE, SIZE, 1), 128, np.uint8))
    return {
        "mask shape": (["inpaint", colour, f"--input={image}", f"--mask={tmp_path / 'wide.npz'}"],
                       "the mask is shaped (8, 9, 3); the model takes examples shaped (8, 8, 3)"),
        "mask values": (["inpaint", colour, f"--input={image}", f"--mask={tmp_path / 'half.npz'}"],
                        "the mask must hold only 0 (unknown) and 1 (known)"),
        "png mask values": (["inpaint", colour, f"--input={image}", f"--mask={grey_mask}"],
                            "a PNG mask must be black (0, unknown) and white (255, known) only"),
        "image size": (["inpaint", colour, f"--input={_digit_png(tmp_path / 'big.png', 3, 16)}",
                        f"--mask={mask}"], "the input is shaped (16, 16, 3); the model takes examples"),
        "image channels": (["inpaint", colour, f"--input={_digit_png(tmp_path / 'grey.png', 1)}",
                            f"--mask={mask}"], "the input is shaped (8, 8, 1)"),
        "pickled input": (["inpaint", colour, f"--input={tmp_path / 'objects.npz'}", f"--mask={mask}"],
                          "Object arrays cannot be loaded when allow_pickle=False"),
        "no mask": (["inpaint", colour, f"--input={image}"], "inpaint needs --mask"),
        "colorize points": (["colorize", points, f"--input={tmp_path / 'points.npz'}"],
                            "colorize needs a model of colour images"),
        "rk45 constraint": (["colorize", colour, f"--input={image}", "--sampler=rk45"],
                            "constraints (inpainting, colorization) need a fixed-step sampler"),
        "png of points": (["inpaint", points, f"--input={image}", f"--mask={mask}"],
                          "this model's examples are points, so give them as an .npz array 'x'"),
    }


BAD = ["mask shape", "mask values", "png mask values", "image size", "image channels", "pickled input",
       "no mask", "colorize points", "rk45 constraint", "png of points"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, runs, tmp_path, monkeypatch, capsys):
    args, message = _bad_inputs(tmp_path, runs)[case]
    before = {name: _snapshot(workdir) for name, workdir in runs.items()}
    code, out, err = scoresde(monkeypatch, capsys, *args, f"--outdir={tmp_path / 'out'}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    assert not (tmp_path / "out").exists()
    assert {name: _snapshot(workdir) for name, workdir in runs.items()} == before
