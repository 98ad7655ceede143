"""Run by test_train.py on 2 simulated CPU devices: a data-parallel train step equals the one-device step."""

import jax
import numpy as np

from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde import parallel, train

import tiny_runs


def two_steps(experiment: experiment_lib.Experiment, devices: list) -> tuple[train.TrainState, jax.Array]:
    mesh = parallel.data_mesh(devices)
    steps = train.compile_train_steps(experiment.objective, experiment.optimizer, 0.999, mesh)
    state = jax.device_put(train.initial_state(experiment), parallel.replicated(mesh))
    local = np.stack([experiment.dataset.train_batch(i, 32) for i in range(2)])
    batches = parallel.shard_batch(local, mesh, batch_axis=1)
    assert {shard.data.shape[1] for shard in batches.addressable_shards} == {32 // len(devices)}
    return steps(state, batches)


def main() -> None:
    assert jax.device_count() == 2, jax.devices()
    experiment = experiment_lib.build_experiment(config_lib.from_config_dict(tiny_runs.tiny_mlp()))
    state_two, losses_two = two_steps(experiment, jax.devices())
    state_one, losses_one = two_steps(experiment, jax.devices()[:1])
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(state_two), jax.tree_util.tree_leaves(state_one)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print("sharded training matches")


if __name__ == "__main__":
    main()
