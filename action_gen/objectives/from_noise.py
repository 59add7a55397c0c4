"""`sample` from `sample_from_noise`: what every objective that carries x ~ N(0, I) to an
action chunk (diffusion, flow, consistency, shortcut) shares.

Each of those modules writes its sampler once, as `sample_from_noise(apply_fn, params, obs,
rng, num_steps, noise, *, action_shape, **settings)` with its settings as explicit
keyword-only arguments, and gets its `sample` from `sampler(sample_from_noise, ...)`: draw
the noise [B, H, A] from the key, then call it. `sample` has `sample_from_noise`'s
signature less `noise` (objectives.create_objective binds config fields by it), plus the
two settings of best-of-M candidate selection, `num_candidates` and
`candidate_perturbation` (`select_stable_candidate`).
"""

import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

from action_gen.data import schema


def chunk_shape(obs: dict, action_shape) -> tuple[int, ...]:
    """[B, H, A]: B read from `obs[schema.OBS_STATE]` [B, T, S], (H, A) = action_shape."""
    return (int(obs[schema.OBS_STATE].shape[0]), *(int(d) for d in action_shape))


def checked_noise(noise: jax.Array, obs: dict, action_shape) -> jax.Array:
    """`noise` as float32 after checking it is [B, H, A] for this batch of observations."""
    shape = chunk_shape(obs, action_shape)
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != chunk shape [B, H, A] {shape}")
    return noise.astype(jnp.float32)


def scan_unroll(unroll: int, num_steps: int) -> int:
    """`lax.scan`'s unroll for the `scan_unroll` setting (>= 1), capped at the chain's
    length. A speed setting only: the chunk is the same for any value."""
    if int(unroll) < 1:
        raise ValueError(f"scan_unroll={unroll} must be >= 1")
    return min(int(unroll), int(num_steps))


def draw_noise(rng: jax.Array, shape, *, split_key: bool) -> tuple[jax.Array, jax.Array]:
    """(x ~ N(0, I) of `shape`, float32; the key left to the sampler).

    split_key: (noise key, rng') = split(rng), so a sampler that draws more noise along the
      way (DDPM, re-noising consistency steps) uses a key independent of x's. Without it
      x is drawn with `rng` itself and rng' = rng (for deterministic samplers, which
      ignore rng').
    """
    noise_rng, rng = jax.random.split(rng) if split_key else (rng, rng)
    return jax.random.normal(noise_rng, tuple(shape), jnp.float32), rng


def select_stable_candidate(
    run: Callable,
    rng: jax.Array,
    shape,
    *,
    num_candidates: int,
    perturbation: float,
) -> jax.Array:
    """Best-of-M sampling by stability: of M chunks drawn from independent noises, the one
    the sampler's map noise -> chunk is least sensitive to.

    A sampler with few steps is a smooth map g from noise to chunk. Where the chunk
    distribution has separate modes (pass left or right of an obstacle), g must jump at the
    boundary between their basins in noise space, and a smooth network spreads that jump
    over a band whose chunks blend the modes: off the data, and on the obstacle task into
    the obstacle (BUILD_NOTES, issue 16). Those noises are exactly where g is steep, so
    for each observation b and candidate m = 1 .. M:
      x_m ~ N(0, I) [B, H, A],  u_m ~ the uniform direction, scaled to RMS 1 per entry,
      s_m[b] = mean_{h,a} (g(x_m + δ u_m) - g(x_m))²[b]          (δ = `perturbation`),
      chunk[b] = g(x_{m*})[b],  m* = argmin_m s_m[b].
    The candidates are independent draws and the score does not look at which mode a
    chunk is in, so the modes keep their shares (a mode's basin interior is as stable as
    the other's); the choice only avoids the basins' edges. Both evaluations of a candidate
    share its sampler key (a stochastic sampler re-noises them alike).

    All 2M evaluations are one batched program: `run` is vmapped over candidates and over
    the pair (x_m, x_m + δ u_m) with the observation unbatched, so observation-only work
    (an encoder, π0's prefix) is not repeated and the sampler's step count is unchanged;
    the network's batch grows 2M-fold. The score covers every entry of the chunk, padded
    action dims included. Only `sample` selects: `sample_from_noise` (given noise) and the
    guided sampler of real-time chunking draw one chunk per observation.

    Args:
      run: (rng, noise [B, H, A]) -> chunk [B, H, A], the sampler from a given noise.
      rng: PRNG key (candidate noises, directions, and each candidate's sampler key).
      shape: (B, H, A).
      num_candidates: M >= 2.
      perturbation: δ > 0, in units of the noise's standard deviation.
    Returns:
      [B, H, A] float32.
    """
    if int(num_candidates) < 2 or not float(perturbation) > 0:
        raise ValueError(
            f"candidate selection needs num_candidates >= 2 (got {num_candidates}) and "
            f"candidate_perturbation > 0 (got {perturbation})"
        )
    shape = tuple(int(d) for d in shape)
    noise_rng, direction_rng, run_rng = jax.random.split(rng, 3)
    candidates = (int(num_candidates), *shape)
    noise = jax.random.normal(noise_rng, candidates, jnp.float32)
    direction = jax.random.normal(direction_rng, candidates, jnp.float32)
    rms = jnp.sqrt(jnp.mean(jnp.square(direction), axis=(-2, -1), keepdims=True))
    perturbed = noise + float(perturbation) * direction / rms

    def candidate(key, pair):  # pair [2, B, H, A] -> ([B, H, A], [B])
        out = jax.vmap(run, in_axes=(None, 0))(key, pair)
        return out[0], jnp.mean(jnp.square(out[1] - out[0]), axis=(-2, -1))

    keys = jax.random.split(run_rng, int(num_candidates))
    chunks, sensitivity = jax.vmap(candidate)(keys, jnp.stack([noise, perturbed], axis=1))
    best = jnp.argmin(sensitivity, axis=0)  # [B]
    return jnp.take_along_axis(chunks, best[None, :, None, None], axis=0)[0]


def sampler(sample_from_noise: Callable, *, split_key: bool) -> Callable:
    """`sample(apply_fn, params, obs, rng, num_steps, *, action_shape, num_candidates=1,
    candidate_perturbation=0.1, **settings)`: with one candidate, x ~ N(0, I) [B, H, A] by
    `draw_noise(rng, split_key=)`, then `sample_from_noise(..., rng', num_steps, x, ...)`;
    with M > 1, `select_stable_candidate` over M such draws (one program, 2M-fold batch).
    """

    def sample(
        apply_fn,
        params,
        obs,
        rng,
        num_steps,
        *,
        action_shape,
        num_candidates: int = 1,
        candidate_perturbation: float = 0.1,
        **settings,
    ):
        def run(key, noise):
            return sample_from_noise(
                apply_fn, params, obs, key, num_steps, noise, action_shape=action_shape, **settings
            )

        shape = chunk_shape(obs, action_shape)
        if int(num_candidates) == 1:
            noise, rng = draw_noise(rng, shape, split_key=split_key)
            return run(rng, noise)
        return select_stable_candidate(
            run,
            rng,
            shape,
            num_candidates=num_candidates,
            perturbation=candidate_perturbation,
        )

    signature = inspect.signature(sample_from_noise)
    selection = inspect.signature(sample).parameters  # its own defaults, written once
    sample.__signature__ = signature.replace(
        parameters=[p for name, p in signature.parameters.items() if name != "noise"]
        + [selection["num_candidates"], selection["candidate_perturbation"]]
    )
    sample.__module__ = sample_from_noise.__module__
    key_use = (
        "drawn with the first key of split(rng), the second going to the sampler"
        if split_key
        else "drawn with rng"
    )
    sampler_doc = inspect.cleandoc(sample_from_noise.__doc__)
    sample.__doc__ = (
        f"Draws action chunks [B, H, A] from x ~ N(0, I) {key_use}: "
        f"`sample_from_noise` with that x as `noise`; with `num_candidates` M > 1, the "
        "most stable of M such chunks (`from_noise.select_stable_candidate`, perturbation "
        f"δ = `candidate_perturbation`):\n\n{sampler_doc}"
    )
    return sample
