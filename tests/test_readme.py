"""Every python code block of README.md runs as written.

Blocks run in order, in one namespace, as a reader pasting them into one session would run them (a later block
may use what an earlier one defined). A block right after a line `<!-- readme-test: NAME -->` needs something
of its own (a trained run, a slow benchmark): it runs alone, in the test named for it below.
"""

import dataclasses
import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde import train
from scoresde.bench import accuracy

import tiny_runs

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
# A toy config shrunk to a 16-wide MLP trained 4 steps on 256 points: a run to restore, not a good model.
TINY_TOY = {
    "data.num_train": 256, "data.num_test": 64, "model.width": 16, "model.depth": 1,
    "training.n_jitted_steps": 2, "training.n_iters": 4, "training.log_freq": 2, "training.eval_freq": 4,
    "training.snapshot_freq": 4, "training.snapshot_freq_for_preemption": 2,
    "training.snapshot_sampling": False,
}
BLOCK = re.compile(r"(?:<!-- readme-test: (\w+) -->\n)?```python\n(.*?)```", re.S)


@dataclasses.dataclass(frozen=True)
class Block:
    line: int  # of the opening fence in README.md
    code: str
    test: str | None  # the name of the test that runs it alone; None: it runs in the chain

    def run(self, namespace: dict) -> None:
        exec(compile("\n" * self.line + self.code, str(README), "exec"), namespace)


def blocks() -> list[Block]:
    text = README.read_text()
    return [Block(text.count("\n", 0, m.start(2)), m.group(2), m.group(1)) for m in BLOCK.finditer(text)]


CHAIN = [block for block in blocks() if block.test is None]
OWN = {block.test: block for block in blocks() if block.test is not None}


def test_every_block_is_run_by_a_test():
    assert len(CHAIN) + len(OWN) == README.read_text().count("```python")
    assert sorted(OWN) == ["guidance", "midpoint", "trained_run"]  # each one's test is below


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The namespace the chained blocks share, and how many of them have run."""
    return {"namespace": {}, "done": 0, "cwd": tmp_path_factory.mktemp("readme")}


@pytest.mark.parametrize("index", range(len(CHAIN)), ids=[f"line{block.line}" for block in CHAIN])
def test_chained_block_runs(index, chain, monkeypatch):
    monkeypatch.chdir(chain["cwd"])
    for block in CHAIN[chain["done"]:index + 1]:  # the earlier blocks too, when run alone (-k)
        block.run(chain["namespace"])
        chain["done"] += 1
    namespace = chain["namespace"]
    if "optax" in CHAIN[index].code:  # "Training your own score model": close to the data's own density
        mix, x, data = namespace["mix"], namespace["x"], namespace["data"]
        assert float(mix.log_prob(x).mean()) > float(mix.log_prob(data).mean()) - 3.0


def _train_tiny(config: str, workdir: pathlib.Path, overrides: dict) -> None:
    config_dict = tiny_runs.load(config, overrides=overrides)
    experiment = experiment_lib.build_experiment(config_lib.from_config_dict(config_dict))
    train.run(experiment, workdir, progress=False)


@pytest.mark.slow
def test_trained_run_block(tmp_path, monkeypatch):
    """The block that restores runs/checkerboard, on a tiny run of the same config trained there."""
    monkeypatch.chdir(tmp_path)
    _train_tiny("toy/checkerboard", tmp_path / "runs" / "checkerboard", tiny_runs.TINY_MLP)
    namespace = {}
    OWN["trained_run"].run(namespace)
    assert namespace["x"].shape == (1000, 2) and bool(jax.numpy.isfinite(namespace["x"]).all())
    assert int(namespace["nfe"]) == namespace["sd"].samplers.Heun().nfe() + 1  # + 1: the final denoiser


@pytest.mark.slow
def test_guidance_block(tmp_path, monkeypatch):
    """The classifier-guidance block, on tiny runs of the two configs it names, trained where it looks."""
    pytest.importorskip("scoresde.guidance", reason="the block calls scoresde.guidance, not in this tree yet")
    monkeypatch.chdir(tmp_path)
    _train_tiny("toy/mixture", tmp_path / "runs" / "eight", TINY_TOY)
    _train_tiny("toy/classifier", tmp_path / "runs" / "eight_cls", TINY_TOY)
    namespace = {}
    OWN["guidance"].run(namespace)
    x = jnp.zeros((4, 2))
    assert namespace["score_fn"](x, jnp.full((4,), 0.5)).shape == x.shape


@pytest.mark.slow
def test_midpoint_block(tmp_path, monkeypatch):
    """"Benchmark your own sampler": a midpoint sampler in the grid, of second order."""
    monkeypatch.chdir(tmp_path)
    namespace = {}
    OWN["midpoint"].run(namespace)
    assert (tmp_path / "out" / "bench" / "midpoint" / "results.json").is_file()
    nfe, errors = zip(*namespace["midpoint"])
    assert nfe == (20, 40, 80)
    assert abs(accuracy.convergence_order(nfe, errors) - 2.0) <= 0.4
