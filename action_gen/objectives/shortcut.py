"""Shortcut models: flow matching with a step-size input, trained without a teacher to
take large steps (Frans, Hafner, Levine & Abbeel 2024).

Flow matching's path and time convention (flow.interpolate, flow.path_velocity): t ∈ [0, 1],
t = 0 noise, t = 1 data, x_t = t x + (1 - t) ε, u = x − ε.
The network s_θ(x_t, t, d) predicts the normalized jump of one step of size d:
x_{t+d} ≈ x_t + d s_θ(x_t, t, d). Step sizes are powers of two, d = 2^-j, j = 0 .. J
(M = 2^J = `2 ** max_steps_log2` the finest grid); the model sees the pair
(t · time_scale, j · step_scale) as its time input [B, 2] (a model with `step_input`:
the U-Net's `step_input=True`).

Loss on one batch of B rows, the first B_b = round(B · bootstrap_fraction) of them
self-consistency rows, the rest flow-matching rows:
  flow matching (d = 1/M, j = J):  t ~ U{0, 1/M, ..., 1 - 1/M},
      target  u = x - ε                                    (the instantaneous velocity)
  self-consistency (j ~ U{0 .. J-1}, d = 2^-j):  t ~ U{0, d, ..., 1 - d},
      s₁ = s_θ⁻(x_t, t, d/2),  x' = x_t + (d/2) s₁,  s₂ = s_θ⁻(x', t + d/2, d/2),
      target  u = (s₁ + s₂) / 2                  (two half steps make one full step)
  L(θ) = E || s_θ(x_t, t, d) - sg u ||²   (masked mean over the real actions),
θ⁻ the train state's EMA (`target="ema"`) or θ itself (`target="online"`).

Sampling with S steps (S a power of two, ≤ M): d = 1/S, x ← x + d s_θ(x, i d, d),
i = 0 .. S-1, from x ~ N(0, I): S model calls, one `lax.scan`, deterministic given the
noise; the chunk is clipped to [-1, 1] when `clip_sample`.

References:
  Frans, Hafner, Levine & Abbeel, "One Step Diffusion via Shortcut Models" (2024),
  Eq. 5-6 and Alg. 1-2 (the step-size conditioning, the 1/4 self-consistency fraction,
  and flow matching at the smallest step).
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from action_gen import models
from action_gen.data import schema
from action_gen.objectives import flow, from_noise
from action_gen.objectives.regression import batch_masked_mse

TARGETS = ("ema", "online")


def model_time(t: jax.Array, step_log2: jax.Array, time_scale: float, step_scale: float):
    """The model's time input [B, 2]: (t · time_scale, j · step_scale), d = 2^-j."""
    t = jnp.asarray(t, jnp.float32)
    j = jnp.broadcast_to(jnp.asarray(step_log2, jnp.float32), t.shape)
    return jnp.stack([t * time_scale, j * step_scale], axis=-1)


def loss(
    apply_fn: Callable,
    params,
    batch: dict,
    rng: jax.Array,
    *,
    ema_params=None,
    max_steps_log2: int = 7,
    bootstrap_fraction: float = 0.25,
    target: str = "ema",
    time_scale: float = 100.0,
    step_scale: float = 10.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The shortcut loss of the module docstring.

    Args:
      apply_fn: `apply_fn(params, obs, x, time [B, 2]) -> [B, H, A]` (a model with a
        step-size input).
      params: model parameters.
      batch: `schema.ACTIONS` [B, H, A], optional `schema.ACTION_PAD_MASK` [B, H], and
        the observation keys.
      rng: PRNG key.
      ema_params: θ⁻ for `target="ema"` (the train step passes the state's EMA); None
        falls back to θ with a stop-gradient.
      max_steps_log2: J (the finest grid has M = 2^J steps).
      bootstrap_fraction: the share of rows with self-consistency targets.
      target: "ema" or "online".
      time_scale, step_scale: the model sees t · time_scale and j · step_scale.
    Returns:
      (scalar loss, aux {"mse", "flow_mse", "bootstrap_mse"}).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {TARGETS}")
    levels = int(max_steps_log2)
    if levels < 1:
        raise ValueError(f"max_steps_log2={max_steps_log2} must be >= 1")
    x1 = batch[schema.ACTIONS].astype(jnp.float32)
    obs = schema.observation_of(batch)
    batch_size = x1.shape[0]
    num_boot = min(batch_size - 1, max(1, round(batch_size * float(bootstrap_fraction))))
    is_boot = jnp.arange(batch_size) < num_boot
    j_rng, t_rng, eps_rng = jax.random.split(rng, 3)
    # Step level per row: j ~ U{0..J-1} (self-consistency), J (flow matching).
    j = jnp.where(is_boot, jax.random.randint(j_rng, (batch_size,), 0, levels), levels)
    sections = jnp.exp2(j.astype(jnp.float32))  # 1 / d
    t = jnp.floor(jax.random.uniform(t_rng, (batch_size,)) * sections) / sections
    eps = jax.random.normal(eps_rng, x1.shape, jnp.float32)
    x_t = flow.interpolate(x1, eps, t[:, None, None])  # flow's path, flow's time convention

    # Self-consistency targets, on the first B_b rows only (two target-model calls).
    target_params = params if (target == "online" or ema_params is None) else ema_params
    target_params = jax.lax.stop_gradient(target_params)
    rows = slice(0, num_boot)
    boot_obs = jax.tree.map(lambda a: a[rows], obs)
    target_fn, target_context = models.split_apply_fn(apply_fn, target_params, boot_obs)
    xb, tb, jb = x_t[rows], t[rows], j[rows] + 1
    half = 0.5 / sections[rows]
    s1 = target_fn(target_params, target_context, xb, model_time(tb, jb, time_scale, step_scale))
    s1 = s1.astype(jnp.float32)
    x_mid = xb + half[:, None, None] * s1
    s2 = target_fn(
        target_params, target_context, x_mid, model_time(tb + half, jb, time_scale, step_scale)
    ).astype(jnp.float32)
    flow_target = flow.path_velocity(x1, eps)
    targets = flow_target.at[rows].set(0.5 * (s1 + s2))
    targets = jax.lax.stop_gradient(targets)
    step_fn, context = models.split_apply_fn(apply_fn, params, obs)
    pred = step_fn(params, context, x_t, model_time(t, j, time_scale, step_scale))
    pred = pred.astype(jnp.float32)
    value = batch_masked_mse(pred, targets, batch)
    boot_rows = {**batch, schema.ACTION_PAD_MASK: _row_mask(batch, is_boot)}
    flow_rows = {**batch, schema.ACTION_PAD_MASK: _row_mask(batch, ~is_boot)}
    return value, {
        "mse": value,
        "bootstrap_mse": batch_masked_mse(pred, targets, boot_rows),
        "flow_mse": batch_masked_mse(pred, targets, flow_rows),
    }


def _row_mask(batch: dict, rows: jax.Array) -> jax.Array:
    """The batch's action mask [B, H] restricted to `rows` [B]."""
    actions = batch[schema.ACTIONS]
    mask = batch.get(schema.ACTION_PAD_MASK)
    if mask is None:
        mask = jnp.ones(actions.shape[:2], bool)
    return mask & rows[:, None]


def _check_steps(num_steps: int, max_steps_log2: int) -> int:
    """log2(num_steps), which must be an integer in [0, max_steps_log2]."""
    level = math.log2(num_steps) if num_steps >= 1 else -1
    if level != int(level) or not 0 <= level <= max_steps_log2:
        raise ValueError(
            f"num_steps={num_steps} must be a power of two <= 2**max_steps_log2 = "
            f"{2**max_steps_log2} (the step sizes the model was trained on)"
        )
    return int(level)


def sample_from_noise(
    apply_fn: Callable,
    params,
    obs: dict,
    rng: jax.Array,
    num_steps: int,
    noise: jax.Array,
    *,
    action_shape,
    max_steps_log2: int = 7,
    time_scale: float = 100.0,
    step_scale: float = 10.0,
    clip_sample: bool = True,
) -> jax.Array:
    """S = `num_steps` shortcut steps (module docstring) from a given x at t = 0 = `noise`
    [B, H, A]; deterministic.

    Args:
      apply_fn: `apply_fn(params, obs, x, time [B, 2]) -> [B, H, A]` (or a ContextApply).
      params: model parameters.
      obs: `schema.OBS_STATE` [B, T, S] (+ optional keys); B is read from it.
      rng: unused (the capability's common signature).
      num_steps: S, a power of two <= 2**max_steps_log2, static.
      noise: x at t = 0 [B, H, A].
      action_shape: (H, A), static.
      max_steps_log2, time_scale, step_scale: as in `loss`.
      clip_sample: clip the final chunk to [-1, 1].
    Returns:
      [B, H, A] float32.
    """
    del rng
    level = _check_steps(int(num_steps), int(max_steps_log2))
    x = from_noise.checked_noise(noise, obs, action_shape)
    batch_size = x.shape[0]
    step_fn, context = models.split_apply_fn(apply_fn, params, obs)
    dt = 1.0 / num_steps
    ts = (np.arange(num_steps, dtype=np.float64) * dt).astype(np.float32)

    def body(x, t):
        time = model_time(jnp.full((batch_size,), t), level, time_scale, step_scale)
        return x + dt * step_fn(params, context, x, time).astype(jnp.float32), None

    x, _ = jax.lax.scan(body, x, jnp.asarray(ts))
    if clip_sample:
        x = jnp.clip(x, -1.0, 1.0)
    return x


sample = from_noise.sampler(sample_from_noise, split_key=False)


def sampler_label(**_) -> str:
    """The sampler's name in results and tables."""
    return "shortcut"
