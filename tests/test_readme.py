"""Every python code block of README.md runs as written.

Blocks run in order, in one namespace, as a reader pasting them into one session would run them (a later block
may use what an earlier one defined). A block right after a line `<!-- readme-test: NAME -->` needs something
of its own (a trained run, a slow benchmark): it runs alone, in the test named for it below.
"""

import dataclasses
import pathlib
import re

import jax
import pytest

from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde import train
from scoresde.bench import accuracy

import tiny_runs

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
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
    assert sorted(OWN) == ["midpoint", "trained_run"]  # each one's test is below


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


def test_trained_run_block(tmp_path, monkeypatch):
    """The block that restores runs/checkerboard, on a tiny run of the same config trained there."""
    monkeypatch.chdir(tmp_path)
    experiment = experiment_lib.build_experiment(config_lib.from_config_dict(tiny_runs.tiny_mlp()))
    train.run(experiment, tmp_path / "runs" / "checkerboard", progress=False)
    namespace = {}
    OWN["trained_run"].run(namespace)
    assert namespace["x"].shape == (1000, 2) and bool(jax.numpy.isfinite(namespace["x"]).all())
    assert int(namespace["nfe"]) == namespace["sd"].samplers.Heun().nfe() + 1  # + 1: the final denoiser


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
