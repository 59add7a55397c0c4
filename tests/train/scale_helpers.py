"""Shared set-up for the sharding / multi-host / grad-accumulation tests.

Trains the real `runlocal` U-Net with the real objective, optimizer, sharding rules and
train step on synthetic batches, on any mesh; used in-process by the tests and by
`multihost_worker.py` in each of several processes.
"""

import functools

import jax
import numpy as np

from action_gen import models, objectives
from action_gen.data import schema, spec
from action_gen.train import sharding
from action_gen.train.optimizer import create_optimizer
from action_gen.train.state import create_train_state
from action_gen.train.step import train_step
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
    """(init_fn, step_fn, state_shardings, batch_sharding) for `config` on `mesh`."""
    action_shape = (config.data.action_horizon, ACTION_DIM)
    model = models.create_model(config.model)
    objective = objectives.create_objective(config.objective, action_shape)
    tx, schedule = create_optimizer(config.optimizer, config.train.num_steps)
    example_obs = spec.example_observation(spec.observation_spec(config.data, STATE_DIM))

    def init_state(key):
        return create_train_state(models.init_params(model, key, example_obs, action_shape), tx)

    abstract = jax.eval_shape(init_state, jax.random.key(0))
    logical = models.param_logical_axes(model, example_obs, action_shape)
    state_shardings = sharding.state_sharding_from_config(config.mesh, mesh, abstract, logical)
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = sharding.replicated_sharding(mesh)
    init_fn = jax.jit(init_state, out_shardings=state_shardings)
    step_fn = jax.jit(
        functools.partial(
            train_step,
            apply_fn=models.make_apply_fn(model),
            loss_fn=objective.loss,
            tx=tx,
            lr_schedule=schedule,
            grad_accum_steps=int(config.train.grad_accum_steps),
            compute_dtype=config.train.compute_dtype,
        ),
        in_shardings=(state_shardings, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    return init_fn, step_fn, state_shardings, batch_sharding


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
