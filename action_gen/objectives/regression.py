"""Regression baseline: the backbone predicts the action chunk directly (no generative model).

Same backbone and interface as the generative objectives, so it is a drop-in ablation:
the model is called with noisy_actions = 0 and time = 0 and its output *is* the chunk.
A unimodal MSE regressor averages the modes of multimodal demonstrations; that is the
failure the diffusion and flow objectives exist to fix.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from action_gen.data import schema


def masked_mse(
    pred: jax.Array,
    target: jax.Array,
    mask: jax.Array | None = None,
    dim_mask: jax.Array | None = None,
) -> jax.Array:
    """Mean squared error over the real (unpadded) actions and action dims, Octo-style.

    L = sum_{b,h,a} m_{b,h} d_{b,a} (pred - target)^2 / sum_{b,h,a} m_{b,h} d_{b,a}

    Args:
      pred: [B, H, A].
      target: [B, H, A].
      mask: [B, H] bool, True where the action is real (in time); None means all real.
      dim_mask: [B, A] bool, True on the robot's real action dims, False on dims padded up
        to the model's action dim (π0: 32); None means all real.
    Returns:
      Scalar float32 (0 when every action is padding).
    """
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    if mask is None and dim_mask is None:
        return jnp.mean(err)
    weights = action_weights(err.shape, mask, dim_mask)
    return jnp.sum(weights * err) / jnp.maximum(jnp.sum(weights), 1.0)


def action_weights(
    shape: tuple[int, int, int], mask: jax.Array | None, dim_mask: jax.Array | None
) -> jax.Array:
    """m_{b,h} d_{b,a} [B, H, A] float32: 1 on the real actions and dims, 0 on padding
    (`masked_mse`'s weights; either mask None: all real)."""
    weights = jnp.ones(shape, jnp.float32)
    if mask is not None:
        weights = weights * mask.astype(jnp.float32)[:, :, None]
    if dim_mask is not None:
        weights = weights * dim_mask.astype(jnp.float32)[:, None, :]
    return weights


def batch_masked_mse(pred: jax.Array, target: jax.Array, batch: dict) -> jax.Array:
    """`masked_mse` with the batch's own time and action-dim masks (when present)."""
    return masked_mse(
        pred, target, batch.get(schema.ACTION_PAD_MASK), batch.get(schema.ACTION_DIM_MASK)
    )


def _zero_inputs(obs: dict, action_shape) -> tuple[jax.Array, jax.Array]:
    batch = obs[schema.OBS_STATE].shape[0]
    return jnp.zeros((batch, *action_shape), jnp.float32), jnp.zeros((batch,), jnp.float32)


def loss(
    apply_fn: Callable, params, batch: dict, rng: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Direct regression of the action chunk.

    L(θ) = E || f_θ(o, 0, 0) - a ||^2 over the real actions (see `masked_mse`).

    Args:
      apply_fn: `apply_fn(params, obs, x, t) -> [B, H, A]`.
      params: model parameters.
      batch: `schema.ACTIONS` [B, H, A], optional `schema.ACTION_PAD_MASK` [B, H] bool,
        and the observation keys.
      rng: unused (the objective is deterministic); kept for the common interface.
    Returns:
      (scalar loss, aux dict of scalars).
    References:
      Zhao et al., "Learning Fine-Grained Bimanual Manipulation with Low-Cost Hardware"
      (ACT, 2023) for chunked regression; Octo (2024) for the padding mask.
    """
    del rng
    actions = batch[schema.ACTIONS]
    obs = schema.observation_of(batch)
    zeros_x, zeros_t = _zero_inputs(obs, actions.shape[1:])
    pred = apply_fn(params, obs, zeros_x, zeros_t)
    value = batch_masked_mse(pred, actions, batch)
    return value, {"mse": value}


def sample(
    apply_fn: Callable, params, obs: dict, rng: jax.Array, num_steps: int, *, action_shape
) -> jax.Array:
    """The predicted chunk a = f_θ(o, 0, 0); `rng` and `num_steps` are ignored.

    Args:
      apply_fn: `apply_fn(params, obs, x, t) -> [B, H, A]`.
      params: model parameters.
      obs: `schema.OBS_STATE` [B, T, S] (+ optional keys).
      rng: ignored (deterministic).
      num_steps: ignored (one forward pass).
      action_shape: (H, A), bound by `create_objective`.
    Returns:
      [B, H, A] float32.
    """
    del rng, num_steps
    zeros_x, zeros_t = _zero_inputs(obs, action_shape)
    return apply_fn(params, obs, zeros_x, zeros_t).astype(jnp.float32)


def sampler_label(**_) -> str:
    """The sampler's name in results and tables: one forward pass."""
    return "direct"
