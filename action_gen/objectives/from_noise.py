"""`sample` from `sample_from_noise`: what every objective that carries x ~ N(0, I) to an
action chunk (diffusion, flow, consistency, shortcut) shares.

Each of those modules writes its sampler once, as `sample_from_noise(apply_fn, params, obs,
rng, num_steps, noise, *, action_shape, **settings)` with its settings as explicit
keyword-only arguments, and gets its `sample` from `sampler(sample_from_noise, ...)`: draw
the noise [B, H, A] from the key, then call it. `sample` has `sample_from_noise`'s
signature less `noise` (objectives.create_objective binds config fields by it).
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


def sampler(sample_from_noise: Callable, *, split_key: bool) -> Callable:
    """`sample(apply_fn, params, obs, rng, num_steps, *, action_shape, **settings)`:
    x ~ N(0, I) [B, H, A] by `draw_noise(rng, split_key=)`, then
    `sample_from_noise(..., rng', num_steps, x, ...)`.
    """

    def sample(apply_fn, params, obs, rng, num_steps, *, action_shape, **settings):
        noise, rng = draw_noise(rng, chunk_shape(obs, action_shape), split_key=split_key)
        return sample_from_noise(
            apply_fn, params, obs, rng, num_steps, noise, action_shape=action_shape, **settings
        )

    signature = inspect.signature(sample_from_noise)
    sample.__signature__ = signature.replace(
        parameters=[p for name, p in signature.parameters.items() if name != "noise"]
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
        f"`sample_from_noise` with that x as `noise`:\n\n{sampler_doc}"
    )
    return sample
