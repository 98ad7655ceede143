"""Run by test_train.py on 8 simulated CPU devices: 20 data-parallel train steps on 8 devices equal the same 20
steps on one device, with the same global batch and seed, to 1e-5 relative on every parameter."""

import jax
import numpy as np

from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde import parallel, train

import tiny_runs

STEPS, BATCH = 20, 32


def run(experiment: experiment_lib.Experiment, devices: list) -> tuple[train.TrainState, np.ndarray]:
    """The state after STEPS steps (one dispatch) over `devices` and the steps' losses, on the host."""
    mesh = parallel.data_mesh(devices)
    steps = train.compile_train_steps(experiment.objective, experiment.optimizer, 0.999, mesh)
    state = jax.device_put(train.initial_state(experiment), parallel.replicated(mesh))
    local = np.stack([experiment.dataset.train_batch(i, BATCH) for i in range(STEPS)])
    batches = parallel.shard_batch(local, mesh, batch_axis=1)
    assert {shard.data.shape[1] for shard in batches.addressable_shards} == {BATCH // len(devices)}
    return jax.device_get(steps(state, batches))


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    experiment = experiment_lib.build_experiment(config_lib.from_config_dict(tiny_runs.tiny_mlp()))
    state_eight, losses_eight = run(experiment, jax.devices())
    state_one, losses_one = run(experiment, jax.devices()[:1])
    assert int(state_eight.step) == STEPS
    np.testing.assert_allclose(losses_eight, losses_one, rtol=1e-5)
    worst = 0.0
    for a, b in zip(jax.tree_util.tree_leaves((state_eight.params, state_eight.ema_params)),
                    jax.tree_util.tree_leaves((state_one.params, state_one.ema_params))):
        worst = max(worst, float(np.linalg.norm(a - b) / np.linalg.norm(b)))
        # Entry by entry too; the absolute 1e-8 is the float32 rounding of a weight of 0.1 (2^-27).
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
    assert worst < 1e-5, worst
    print(f"8 devices: every parameter array within {worst:.1e} relative of one device's")


if __name__ == "__main__":
    main()
