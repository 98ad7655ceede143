"""Run in a subprocess with 8 simulated CPU devices (XLA_FLAGS set before JAX is imported).

Checks sd.sample inside a user's pmap (Langevin statistics averaged over the mapped axis) and under jit with
the batch sharded over a device mesh, each against exact mixture draws.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import scoresde as sd  # noqa: E402
from checks import assert_matches_mixture, exact_draws  # noqa: E402
from scoresde import toy  # noqa: E402

N, DEVICES = 4000, 8


def pmap_samples(mix, sde, sampler):
    per_device = (N // DEVICES,) + mix.event_shape
    fn = jax.pmap(
        lambda key: sd.sample(key, sde, mix.score_fn(sde), per_device, sampler, axis_name="data")[0],
        axis_name="data",
    )
    keys = jax.random.split(jax.random.PRNGKey(0), DEVICES)
    return np.asarray(fn(keys)).reshape((N,) + mix.event_shape)


def sharded_samples(mix, sde, sampler):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    x_init = jax.device_put(sde.prior_sampling(jax.random.PRNGKey(1), (N,) + mix.event_shape), sharding)
    fn = jax.jit(lambda key, x0: sd.sample(key, sde, mix.score_fn(sde), x0.shape, sampler, x_init=x0)[0])
    x = fn(jax.random.PRNGKey(2), x_init)
    assert x.sharding.is_equivalent_to(sharding, x.ndim), (
        f"output sharding {x.sharding} is not the batch sharding"
    )
    # Sharding changes where the work runs, not what it computes: a single-device run of the same
    # program agrees up to the order of the batch reductions in the Langevin step size.
    unsharded = fn(jax.random.PRNGKey(2), jax.device_put(x_init, jax.devices()[0]))
    np.testing.assert_allclose(np.asarray(x), np.asarray(unsharded), rtol=1e-4, atol=1e-4)
    return np.asarray(x)


def main():
    assert jax.device_count() == DEVICES, jax.devices()
    sampler = sd.samplers.PC(predictor="reverse_diffusion", corrector="langevin", num_steps=300)
    for name in sys.argv[1:]:
        mix = toy.build_problem(name)
        for sde in (sd.VPSDE(), sd.VESDE()):
            assert_matches_mixture(mix, pmap_samples(mix, sde, sampler), exact_draws(mix, N))
            assert_matches_mixture(mix, sharded_samples(mix, sde, sampler), exact_draws(mix, N))
    print("multidevice sampling ok")


if __name__ == "__main__":
    main()
