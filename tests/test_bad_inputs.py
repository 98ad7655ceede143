"""A catalogue of user mistakes (issue 14): config files and overrides, CLI flags, data files, checkpoints,
shapes, sampler and guidance arguments. Each case runs `scoresde ...` in this process (scoresde.cli, as
tests/test_cli.py does) against one tiny trained workdir, and asserts exit status 2, one line on stderr that
names the offending thing and what is allowed, and that the workdir is byte-for-byte unchanged (a hash of
its tree before and after). README's troubleshooting table lists the same mistakes.
"""

import hashlib
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFile

from scoresde import evaluation, experiment as experiment_lib, observations

import test_cli

TRAIN = test_cli.TINY_MLP_FLAGS


def tree_hash(directory: pathlib.Path) -> str:
    """sha256 over the relative paths and bytes of every file and directory below `directory`."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        digest.update(str(path.relative_to(directory)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The trained run, a copy whose only checkpoints are damaged, and bad input files beside them."""
    root = tmp_path_factory.mktemp("bad_inputs")
    run = root / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, _, _ = test_cli.scoresde(monkeypatch, test_cli._NoCapture(), "train", f"--workdir={run}",
                                       *TRAIN)
    assert code == 0
    damaged = pathlib.Path(shutil.copytree(run, root / "damaged"))
    for step in [*damaged.glob("checkpoints/*"), *damaged.glob("checkpoints-meta/*")]:
        for data in (step / "default" / "d").iterdir():
            data.write_bytes(b"")
    no_config = pathlib.Path(shutil.copytree(run, root / "no_config"))
    (no_config / "config.json").unlink()
    np.savez(root / "pickled.npz", x=np.array([{"a": 1}, None], dtype=object))
    np.savez(root / "points.npz", x=np.zeros((3, 2), np.float32))
    np.savez(root / "wide_points.npz", x=np.zeros((3, 5), np.float32))
    np.savez(root / "nan_points.npz", x=np.array([[0.0, np.nan]], np.float32))
    np.savez(root / "mask3.npz", mask=np.ones((3, 3), np.float32))
    np.savez(root / "mask_values.npz", mask=np.full((3, 2), 0.5, np.float32))
    np.save(root / "array.npy", np.zeros((3, 2)))
    (root / "notes.txt").write_text("not data")
    (root / "broken.npz").write_bytes(b"not a zip archive")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "image.png")
    (root / "raises.py").write_text("def get_config():\n    return 1 / 0\n")
    return {"root": root, "run": run, "damaged": damaged, "no_config": no_config}


def _train(*flags: str) -> list[str]:
    return ["train", "--workdir={run}", *TRAIN, *flags]


def _sample(*flags: str) -> list[str]:
    return ["sample", "--workdir={run}", *flags]


def _inpaint(examples: str, mask: str = "points.npz") -> list[str]:
    return ["inpaint", "--workdir={run}", f"--input={{root}}/{examples}", f"--mask={{root}}/{mask}"]


# name: (argv with {run}, {damaged}, {no_config} and {root} filled in, substrings the one line must hold)
CASES = {
    # config files and overrides (train on the trained workdir: refused before it is touched)
    "config file missing": (["train", "--workdir={run}", "--config={root}/nope.py"],
                            ["config file '", "nope.py' does not exist"]),
    "config file raises": (["train", "--workdir={run}", "--config={root}/raises.py"],
                           ["raises.py", "ZeroDivisionError: division by zero"]),
    "config file is not python": (["train", "--workdir={run}", "--config={root}/notes.txt"],
                                  ["notes.txt' is not a Python file (.py)"]),
    "unknown override section": (_train("--config.trainig.lr=1"),
                                 ["--config.trainig.lr: the config has no field 'trainig'", "training"]),
    "override of a wrong type": (_train("--config.training.batch_size=abc"), ["batch_size", "abc"]),
    "batch size 0": (_train("--config.training.batch_size=0"), ["training.batch_size must be >= 1; got 0"]),
    "batch larger than the data": (["train", "--workdir={root}/fresh", *TRAIN,
                                    "--config.training.batch_size=999"],
                                   ["batch size 999 must lie in [1, 256]"]),
    "n_iters not a multiple of n_jitted_steps": (_train("--config.training.n_iters=5"),
                                                 ["training.n_iters=5 must be a positive multiple of "
                                                  "training.n_jitted_steps=2"]),
    "unknown SDE": (_train("--config.training.sde=vp"), ["unknown SDE 'vp'", "vpsde"]),
    "unknown model": (_train("--config.model.name=mlpp"), ["unknown model 'mlpp'", "mlp"]),
    "unknown dataset": (_train("--config.data.dataset=checkers"), ["checkers", "checkerboard"]),
    "unknown sampling method": (_train("--config.sampling.method=heun2"),
                                ["unknown sampler 'heun2'; valid names:"]),
    "unknown optimizer": (_train("--config.optim.optimizer=adamw2"), ["adamw2", "Adam"]),
    "label dropout above 1": (_train("--config.training.cond_dropout=2.0"),
                              ["training.cond_dropout must lie in [0, 1]; got 2.0"]),
    "negative keep_checkpoints": (_train("--config.training.keep_checkpoints=-1"),
                                  ["training.keep_checkpoints must be >= 0; got -1"]),
    "snapshot steps 0": (_train("--config.training.snapshot_num_steps=0"),
                         ["training.snapshot_num_steps must be >= 1 or None; got 0"]),
    "class labels on unlabelled data": (_train("--config.model.num_classes=3"),
                                        ["model.num_classes=3 needs a dataset with labels", "digits"]),
    "another config without --resume": (_train("--config.optim.lr=0.5"),
                                        ["holds a run with a different config (optim.lr:", "-> 0.5",
                                         "--resume", "--overwrite"]),
    "--resume with --overwrite": (_train("--resume", "--overwrite"),
                                  ["--resume and --overwrite exclude each other"]),
    "train without --workdir": (["train", *TRAIN], ["train needs --workdir"]),
    "train without --config": (["train", "--workdir={run}"], ["train needs --config"]),
    # CLI flags
    "unknown verb": (["trian"], ["VERB is one of ['bench', 'colorize', 'eval', 'inpaint', 'sample', "
                                 "'train']"]),
    "unknown flag": (_sample("--num_sample=3"), ["num_sample"]),
    "stray argument": (["sample", "extra", "--workdir={run}"], ["unexpected arguments ['extra']"]),
    "no samples": (_sample("--num_samples=0"), ["--num_samples must be >= 1; got 0"]),
    "unknown sampler": (_sample("--sampler=heun2"), ["unknown sampler 'heun2'; valid names:"]),
    "unknown sampler setting": (_sample("--sampler=unipc:nope=3"), ["nope", "unipc"]),
    "sampler setting out of range": (_sample("--sampler=dpm_solver_pp:order=9"), ["order", "9"]),
    "sampler spec without a value": (_sample("--sampler=unipc:order"), ["unipc:order"]),
    "steps for an adaptive sampler": (["sample", "--sampler=rk45", "--num_steps=3", "--outdir={root}/out"],
                                      ["sampler 'rk45' chooses its own steps; it takes no --num_steps"]),
    "unknown problem": (["sample", "--problem=mixture_3d", "--outdir={root}/out"],
                        ["mixture_3d", "mixture_2d"]),
    "unknown --sde": (["sample", "--sde=vp", "--outdir={root}/out"], ["unknown SDE 'vp'", "vpsde"]),
    "--sde with a workdir": (_sample("--sde=vesde"), ["--sde: only for `sample` without --workdir"]),
    "eval without --workdir": (["eval"], ["eval needs --workdir"]),
    "workdir that holds no run": (["sample", "--workdir={root}/nowhere"],
                                  ["nowhere holds no training run", "config.json is missing"]),
    "test batches 0": (["eval", "--workdir={run}", "--num_batches=0"],
                       ["--num_batches must be >= 1", "got 0"]),
    # multi-process settings: refused before any process starts
    "process id out of range": (_sample("--coordinator_address=127.0.0.1:1234", "--num_processes=2",
                                        "--process_id=2"),
                                ["process_id 2 must lie in [0, 2) for num_processes=2"]),
    "coordinator without a port": (_sample("--coordinator_address=127.0.0.1", "--num_processes=2",
                                           "--process_id=0"),
                                   ["coordinator_address '127.0.0.1' must be HOST:PORT"]),
    "process settings incomplete": (_sample("--num_processes=2"),
                                    ["needs coordinator_address, num_processes and process_id together",
                                     "coordinator_address, process_id missing"]),
    "initialization timeout 0": (_sample("--coordinator_address=127.0.0.1:1234", "--num_processes=2",
                                         "--process_id=0", "--distributed_timeout=0"),
                                 ["the initialization timeout must be >= 1 second; got 0"]),
    # guidance arguments
    "negative guidance": (_sample("--class_label=1", "--guidance_scale=-1"),
                          ["--guidance_scale must be >= 0 (0: no guidance); got -1.0"]),
    "guidance without a class": (_sample("--guidance_scale=2"), ["--guidance_scale needs --class_label"]),
    "class label of an unconditional run": (_sample("--class_label=1"),
                                            ["class_label needs a class-conditional model", "num_classes=0"]),
    "class label without a workdir": (["sample", "--class_label=1", "--outdir={root}/out"],
                                      ["--class_label and --guidance_scale sample a class-conditional run: "
                                       "they need --workdir"]),
    "inpaint without --mask": (["inpaint", "--workdir={run}", "--input={root}/points.npz"],
                               ["inpaint needs --mask"]),
    "colorize a points model": (["colorize", "--workdir={run}", "--input={root}/points.npz"],
                                ["colorize needs a model of colour images", "(2,)"]),
    # data files: inputs of inpaint, and training data
    "input file missing": (_inpaint("none.npz"), ["none.npz does not exist"]),
    "input of another kind": (_inpaint("notes.txt"), ["notes.txt: give a .png or .npz file"]),
    "PNG input for a points model": (_inpaint("image.png"), ["image.png: this model's examples are points"]),
    "pickled object array": (_inpaint("pickled.npz"), ["pickled.npz", "allow_pickle=False"]),
    "input that is not an archive": (_inpaint("broken.npz"),
                                     ["broken.npz cannot be read as an .npz archive (a zip of .npy arrays)"]),
    "input that is a .npy array": (_inpaint("array.npy"), ["array.npy: give a .png or .npz file"]),
    "input of another shape": (_inpaint("wide_points.npz"), ["wide_points.npz: the input is shaped (3, 5)",
                                                             "(2,)"]),
    "input with NaN": (_inpaint("nan_points.npz"), ["nan_points.npz: points must be finite numbers"]),
    "mask without a mask array": (_inpaint("points.npz", "points.npz"),
                                  ["points.npz has no array 'mask'", "['x']"]),
    "mask of another shape": (_inpaint("points.npz", "mask3.npz"), ["mask3.npz: the mask is shaped (3, 3)"]),
    "mask values not 0 or 1": (_inpaint("points.npz", "mask_values.npz"),
                               ["only 0 (unknown) and 1 (known)", "0.5"]),
    "training data missing": (_train("--config.data.dataset=npz", "--config.data.path={root}/none.npz"),
                              ["none.npz"]),
    "training data pickled": (_train("--config.data.dataset=npz", "--config.data.path={root}/pickled.npz"),
                              ["pickled.npz", "allow_pickle=False"]),
    # checkpoints and shapes
    "sample from damaged checkpoints only": (["sample", "--workdir={damaged}"],
                                             ["{damaged} holds no intact checkpoint",
                                              "checkpoints/4 is unreadable"]),
    "eval of damaged checkpoints only": (["eval", "--workdir={damaged}"],
                                         ["{damaged} holds no intact checkpoint"]),
    "train on damaged checkpoints only": (["train", "--workdir={damaged}", *TRAIN],
                                          ["{damaged} holds no intact checkpoint"]),
    "resume into a wider network": (_train("--config.model.width=24", "--resume"),
                                    ["does not fit this config's model and optimizer", "[16]", "[24]"]),
    "resume into another network": (_train("--config.model.depth=2", "--resume"),
                                    ["does not fit this config's model and optimizer: it has no"]),
    "checkpoints without config.json": (["train", "--workdir={no_config}", *TRAIN],
                                        ["holds checkpoints but no config.json; refusing to touch them"]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_mistake_is_one_line_naming_it_and_changes_nothing(case, files, monkeypatch, capsys):
    args, wanted = CASES[case]
    args = [arg.format(**files) for arg in args]
    before = {name: tree_hash(files[name]) for name in ("run", "damaged", "no_config")}
    code, out, err = test_cli.scoresde(monkeypatch, capsys, *args)
    assert code == 2, (code, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for text in wanted:
        assert text.format(**files) in err, err
    assert {name: tree_hash(files[name]) for name in before} == before
    assert not any((files["root"] / name).exists() for name in ("out", "nowhere", "fresh"))


def test_the_catalogue_holds_at_least_forty_mistakes():
    assert len(CASES) >= 40


def _nan_samples(sampling_fn):
    def build(*args, **kwargs):
        draw = sampling_fn(*args, **kwargs)
        return lambda *a, **k: (np.full_like(draw(*a, **k)[0], np.nan), 4)
    return build


def _nan_likelihood(likelihood_fn):
    def build(*args, **kwargs):
        nll = likelihood_fn(*args, **kwargs)
        return lambda *a: {**{name: float("nan") for name in nll(*a)}, "likelihood_nfe": 1}
    return build


@pytest.mark.parametrize("verb,broken", [("sample", "samples"), ("eval", "samples"), ("eval", "likelihood")])
def test_a_solve_that_diverges_is_reported_and_writes_nothing(verb, broken, files, monkeypatch, capsys):
    if broken == "samples":
        monkeypatch.setattr(experiment_lib, "sampling_fn", _nan_samples(experiment_lib.sampling_fn))
    else:
        monkeypatch.setattr(evaluation, "likelihood_fn", _nan_likelihood(evaluation.likelihood_fn))
    before = tree_hash(files["run"])
    code, out, err = test_cli.scoresde(monkeypatch, capsys, verb, f"--workdir={files['run']}")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    # sample checks each chunk it draws, eval.batch_size = 16 examples; eval all 64 samples at once
    what = {"sample": "16 of 16 samples", "eval": "64 of 64 samples"}[verb] if broken == "samples" else \
        "1 of 1 likelihood figures"
    assert f"{what}" in err and "hold NaN or Inf; nothing was written" in err, err
    assert tree_hash(files["run"]) == before


def test_an_image_is_measured_before_it_is_decoded(files, monkeypatch):
    monkeypatch.setattr(observations, "MAX_IMAGE_PIXELS", 63)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(ValueError, match=r"image\.png is 8x8 pixels; at most 63 pixels are decoded"):
        observations.read_examples(files["root"] / "image.png", (8, 8, 1), images=True)


def test_ctrl_c_outside_training_is_one_line_exit_130_and_writes_nothing(files, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(experiment_lib, "sampling_fn", interrupted)
    before = tree_hash(files["run"])
    code, out, err = test_cli.scoresde(monkeypatch, capsys, "sample", f"--workdir={files['run']}")
    assert code == 130, err
    assert err.strip() == ("scoresde sample: error: interrupted; files are written whole or not at all, so "
                           "nothing half-written is left."), err
    assert tree_hash(files["run"]) == before
