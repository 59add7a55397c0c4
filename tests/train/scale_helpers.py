"""Shared set-up for the sharding / multi-host / grad-accumulation tests.

Trains the real `runlocal` U-Net with the real objective, optimizer, sharding rules and
train step on synthetic batches, on any mesh; used in-process by the tests and by
`multihost_worker.py` in each of several processes.
"""

import jax
import numpy as np

from action_gen.data import schema, spec
from action_gen.train import sharding
from action_gen.train.program import build_train_program
from configs import diffusion_unet_obstacle, regression_unet_obstacle

STATE_DIM, ACTION_DIM = 4, 2
FSDP_MIN_SIZE = 1024  # small, so the tiny U-Net's convolutions are split too
MULTIHOST_STEPS, MULTIHOST_BATCH = 5, 16  # test_multihost.py and its worker


def make_config(objective: str = "diffusion", num_steps: int = 5):
    module = {"diffusion": diffusion_unet_obstacle, "regression": regression_unet_obstacle}
    config = module[objective].get_config("runlocal")
    config.train.num_steps = num_steps
    config.optimizer.lr = 1e-3
    config.optimizer.warmup_steps = 0
    # Adam's first updates are ~lr * sign(g) where |g| << eps fails to hold: a gradient
    # entry near 0 flips sign under float reordering and moves its weight by ~2 lr. A
    # larger eps keeps the update smooth in g, so equal-to-tolerance gradients give
    # equal-to-tolerance weights.
    config.optimizer.eps = 1e-4
    config.mesh.fsdp_min_size = FSDP_MIN_SIZE
    return config


def synthetic_batches(config, num_batches: int, batch_size: int, seed: int = 0) -> list[dict]:
    """Random numpy batches with the schema's keys: state [B, T, S], actions [B, H, A]."""
    rng = np.random.default_rng(seed)
    horizon, obs_horizon = config.data.action_horizon, config.data.obs_horizon
    out = []
    for _ in range(num_batches):
        out.append(
            {
                schema.OBS_STATE: rng.normal(size=(batch_size, obs_horizon, STATE_DIM)).astype(
                    np.float32
                ),
                schema.OBS_PAD_MASK: np.ones((batch_size, obs_horizon), bool),
                schema.ACTIONS: rng.uniform(-1, 1, (batch_size, horizon, ACTION_DIM)).astype(
                    np.float32
                ),
                schema.ACTION_PAD_MASK: np.ones((batch_size, horizon), bool),
            }
        )
    return out


def build(config, mesh):
    """(init_fn, step_fn, state_shardings, batch_sharding) for `config` on `mesh`: the
    train loop's own program (train/program.py)."""
    action_shape = (config.data.action_horizon, ACTION_DIM)
    example_obs = spec.example_observation(spec.observation_spec(config.data, STATE_DIM))
    program = build_train_program(config, mesh, example_obs, action_shape)
    return program.init_fn, program.step_fn, program.state_shardings, program.batch_sharding


def train(config, mesh, local_batches: list[dict], seed: int = 0):
    """Trains len(local_batches) steps; each process passes its own rows of each batch.

    Returns (initial params as numpy, final state).
    """
    init_fn, step_fn, _, batch_sharding = build(config, mesh)
    init_rng, train_rng = jax.random.split(jax.random.key(seed))
    state = init_fn(init_rng)
    initial = to_numpy(state.params)
    for batch in local_batches:
        state, _ = step_fn(state, sharding.global_batch(batch, batch_sharding), train_rng)
    return initial, state


def to_numpy(tree):
    """Gathers every (possibly multi-process) global array to host numpy."""
    from jax.experimental import multihost_utils

    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)
