"""The Langevin corrector's step size over a batch, over a group of it, or per example.

Song et al.'s Algorithm 4 sets the step from the batch means of the noise and score norms. Chunked sampling
(`scoresde sample --batch_size`, `experiment.sampling_fn(width=W)`) takes those means over fixed groups of W
examples (the samplers' `axis_name` over a vmapped group), so the samples do not depend on the chunk size.
This prints the sliced W1 distance to exact draws of the 2-D mixture for the whole-batch mean, group means
and per-example steps, beside the distance between two exact draws.

    python benchmarks/chunked_langevin.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import scoresde as sd
from scoresde import toy

N, STEPS, WIDTHS = 4000, 100, (1000, 80, 16, 1)


def sliced_w1(a: np.ndarray, b: np.ndarray, directions: np.ndarray) -> float:
    """Mean over directions of W1 between the projections of a: [N, 2] and b: [N, 2]."""
    project = lambda x: np.sort(np.asarray(x) @ directions.T, axis=0)
    return float(np.mean(np.abs(project(a) - project(b))))


def main() -> None:
    mix, sde = toy.build_problem("mixture_2d"), sd.VPSDE()
    sampler = sd.samplers.PC(predictor="reverse_diffusion", corrector="langevin", snr=0.16, num_steps=STEPS)
    score, key = mix.score_fn(sde), jax.random.PRNGKey(0)
    directions = np.random.default_rng(0).normal(size=(256, 2))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    exact = [mix.sample(jax.random.PRNGKey(seed), N) for seed in (1, 2, 3)]
    distances = lambda x: " ".join(f"{sliced_w1(x, e, directions):.4f}" for e in exact[:2])
    batch = jax.jit(lambda k: sd.sample(k, sde, score, (N, 2), sampler)[0])(key)
    print(f"whole batch of {N}: {distances(batch)}")
    one = lambda k: sd.sample(k, sde, score, (1, 2), sampler, axis_name="group")[0][0]
    group = jax.jit(jax.vmap(one, axis_name="group"))
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(N))
    for width in WIDTHS:
        x = jnp.concatenate([group(keys[i:i + width]) for i in range(0, N, width)])
        print(f"group mean over {width}: {distances(x)}")
    print(f"floor (exact vs exact): {distances(exact[2])}")


if __name__ == "__main__":
    main()
