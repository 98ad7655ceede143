"""Tests for scoresde/chunks.py and `scoresde sample --batch_size`: chunked sampling gives bitwise the samples
of one chunk, whatever the chunk size and wherever a run was stopped, and refuses to mix settings."""

import os
import signal
import types

import numpy as np
import pytest

from scoresde import chunks

import test_cli
from test_cli import _NoCapture, _snapshot, scoresde

trained = test_cli.trained  # the module fixture: the tiny MLP trained by `scoresde train`, once per module

NUM_SAMPLES = 40  # the tiny config computes groups of eval.batch_size = 16: three groups, the last padded
SAMPLERS = ("ddim", "pc:corrector=langevin")


def _sample(monkeypatch, capsys, workdir, outdir, sampler, *flags):
    return scoresde(monkeypatch, capsys, "sample", f"--workdir={workdir}", f"--outdir={outdir}",
                    "--noprogress", f"--sampler={sampler}", "--num_steps=3", f"--num_samples={NUM_SAMPLES}",
                    *flags)


@pytest.fixture(scope="module")
def whole(trained, tmp_path_factory):
    """Each sampler's samples drawn in one chunk."""
    outdir, x = tmp_path_factory.mktemp("whole"), {}
    for sampler in SAMPLERS:
        with pytest.MonkeyPatch.context() as monkeypatch:
            code, out, err = _sample(monkeypatch, _NoCapture(), trained, outdir, sampler,
                                     f"--batch_size={NUM_SAMPLES}")
        assert code == 0, err
        x[sampler] = np.load(outdir / f"samples_4_{sampler}.npz")["x"]
    return x


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_chunked_samples_equal_one_chunk_bitwise(sampler, trained, whole, tmp_path, monkeypatch, capsys):
    code, out, err = _sample(monkeypatch, capsys, trained, tmp_path, sampler, "--batch_size=7")
    assert code == 0, err
    with np.load(tmp_path / f"samples_4_{sampler}.npz") as samples:
        assert samples["x"].shape == (NUM_SAMPLES, 2) and np.array_equal(samples["x"], whole[sampler])
    assert (tmp_path / f"samples_4_{sampler}.png").is_file()
    assert not chunks.partial_dir(tmp_path / f"samples_4_{sampler}.npz").exists()
    assert not np.array_equal(whole[sampler][:20], whole[sampler][20:])  # every example its own noise


def _stop_after_chunks(monkeypatch, k: int) -> None:
    """SIGTERM this process while chunk k + 1 is drawn: the loop keeps it and stops."""
    written, write = [], chunks._write_chunk

    def counting(*args):
        write(*args)
        written.append(args)
        if len(written) == k:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(chunks, "_write_chunk", counting)


def test_a_stopped_run_keeps_its_chunks_and_resumes_to_the_same_bits(trained, whole, tmp_path, monkeypatch,
                                                                     capsys):
    sampler = SAMPLERS[1]
    partial = chunks.partial_dir(tmp_path / f"samples_4_{sampler}.npz")
    with monkeypatch.context() as stopping:
        _stop_after_chunks(stopping, 2)
        code, out, err = _sample(monkeypatch, capsys, trained, tmp_path, sampler, "--batch_size=6")
    assert code == 0, err
    assert f"SIGTERM: stopped after 12 of {NUM_SAMPLES} samples, kept in {partial}" in err, err
    assert sorted(p.name for p in partial.iterdir()) == ["chunk_0.npz", "chunk_6.npz", "settings.json"]
    assert not (tmp_path / f"samples_4_{sampler}.npz").exists()
    before = _snapshot(tmp_path)
    code, out, err = _sample(monkeypatch, capsys, trained, tmp_path, sampler, "--batch_size=6", "--seed=1")
    assert (code, err.count("\n")) == (2, 1), err
    assert "holds chunks drawn with other settings (seed: 0 -> 1)" in err
    assert _snapshot(tmp_path) == before
    code, out, err = _sample(monkeypatch, capsys, trained, tmp_path, sampler, "--batch_size=11")  # other size
    assert code == 0, err
    assert np.array_equal(np.load(tmp_path / f"samples_4_{sampler}.npz")["x"], whole[sampler])
    assert not partial.exists()


@pytest.mark.parametrize("value,message", [
    ("0", "--batch_size must be an integer >= 1 (examples drawn per chunk); got 0."),
    ("-3", "--batch_size must be an integer >= 1 (examples drawn per chunk); got -3."),
    ("2.5", "flag --batch_size=2.5"),
    ("many", "flag --batch_size=many"),
])
def test_a_bad_batch_size_is_one_line_and_writes_nothing(value, message, trained, tmp_path, monkeypatch,
                                                         capsys):
    before = _snapshot(trained), _snapshot(tmp_path)
    code, out, err = _sample(monkeypatch, capsys, trained, tmp_path, "ddim", f"--batch_size={value}")
    assert (code, err.count("\n")) == (2, 1) and message in err, err
    assert (_snapshot(trained), _snapshot(tmp_path)) == before


def _mesh(processes: int, devices_each: int):
    """What `chunks.check_fits` reads of a mesh: its size and each device's process."""
    devices = [types.SimpleNamespace(process_index=i // devices_each)
               for i in range(processes * devices_each)]
    return types.SimpleNamespace(size=len(devices), devices=np.array(devices))


def test_chunks_that_do_not_fit_the_devices_are_refused_saying_what_fits():
    chunks.check_fits(128, 512, 16, _mesh(4, 2))  # a group of 16 on each of 8 devices
    chunks.check_fits(40, 40, 16, _mesh(4, 2))    # the whole run in one chunk
    chunks.check_fits(7, 40, 16, _mesh(1, 1))     # one device: a chunk may be shorter than a group
    with pytest.raises(ValueError, match=r"^batch_size 12 does not split over the 8 devices \(4 processes "
                                         r"x 2 devices\); use a multiple of 8\.$"):
        chunks.check_fits(12, 512, 16, _mesh(4, 2))
    with pytest.raises(ValueError, match=r"^batch_size 64 is smaller than what the 8 devices draw at once, a "
                                         r"group of eval.batch_size=16 examples each \(128\); use "
                                         r"--batch_size=128 or a multiple of it\.$"):
        chunks.check_fits(64, 512, 16, _mesh(1, 8))
