"""A tiny flow U-Net `Policy` with random weights, built in-process (no training, no disk):
enough for shapes, batching, wire-format and guidance tests."""

import functools

import jax
import numpy as np

from action_gen import models
from action_gen.data import spec
from action_gen.sample.policy import Policy
from configs import flow_unet_obstacle

STATE_DIM, ACTION_DIM = 9, 2


def norm_stats(state_dim: int = STATE_DIM, action_dim: int = ACTION_DIM) -> dict:
    def feature(dim, low, high):
        return {
            "min": [low] * dim,
            "max": [high] * dim,
            "mean": [0.0] * dim,
            "std": [1.0] * dim,
            "q01": [low] * dim,
            "q99": [high] * dim,
            "count": 100,
        }

    return {"state": feature(state_dim, -1.0, 1.0), "actions": feature(action_dim, -1.0, 1.0)}


@functools.cache
def make_tiny_policy(seed: int = 0, batch_sizes: tuple[int, ...] = ()) -> Policy:
    """The runlocal flow config's U-Net (down_dims (16, 32), 3 Euler steps), random init."""
    config = flow_unet_obstacle.get_config("runlocal")
    stats = norm_stats()
    model = models.create_model(config.model)
    example = spec.example_observation(spec.observation_spec(config.data, STATE_DIM))
    params = models.init_params(
        model, jax.random.key(seed), example, (config.data.action_horizon, ACTION_DIM)
    )
    policy = Policy(config, params, stats)
    if batch_sizes:
        policy.compile(batch_sizes)
    return policy


def observation(batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"observation/state": rng.uniform(-1, 1, (batch, 2, STATE_DIM)).astype(np.float32)}
