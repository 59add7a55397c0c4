"""`scan_unroll` (the samplers' `lax.scan(unroll=)`) is a speed setting only: every value
draws the same chunk, and it is a sampling-only config field of the objectives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from action_gen import objectives
from action_gen.data import schema
from action_gen.objectives import diffusion, flow

H, A = 8, 2


def _apply(params, obs, x, t):
    """A cheap stand-in model: nonlinear in x, t and the observation."""
    cond = jnp.mean(obs[schema.OBS_STATE], axis=(1, 2))[:, None, None]
    return jnp.tanh(params["w"] * x + 0.01 * t[:, None, None] + cond)


PARAMS = {"w": jnp.asarray(0.7)}
OBS = {schema.OBS_STATE: jax.random.normal(jax.random.key(3), (4, 2, 5))}


def _draw(sample_fn, unroll, **kwargs):
    fn = jax.jit(lambda key: sample_fn(_apply, PARAMS, OBS, key, scan_unroll=unroll, **kwargs))
    return np.asarray(fn(jax.random.key(7)))


@pytest.mark.parametrize(
    "sample_fn,num_steps,kwargs",
    [
        (diffusion.sample, 10, {"sampler": "ddim", "num_train_steps": 100}),
        (diffusion.sample, 20, {"sampler": "ddpm", "num_train_steps": 100}),
        (flow.sample, 10, {"integrator": "euler"}),
        (flow.sample, 6, {"integrator": "heun"}),
    ],
)
def test_every_unroll_draws_the_same_chunk(sample_fn, num_steps, kwargs):
    kwargs = {"num_steps": num_steps, "action_shape": (H, A), **kwargs}
    want = _draw(sample_fn, 1, **kwargs)
    for unroll in (2, 3, num_steps, num_steps + 5):  # 3 does not divide: a remainder step
        np.testing.assert_allclose(_draw(sample_fn, unroll, **kwargs), want, rtol=1e-5, atol=1e-6)


def test_guided_flow_sampler_unrolled():
    prefix = jax.random.uniform(jax.random.key(1), (4, H, A), minval=-1, maxval=1)
    weights = jnp.linspace(1.0, 0.0, H)
    kwargs = {"num_steps": 5, "action_shape": (H, A), "prefix": prefix, "prefix_weights": weights}
    want = _draw(flow.sample_guided, 1, **kwargs)
    np.testing.assert_allclose(_draw(flow.sample_guided, 5, **kwargs), want, rtol=1e-5, atol=1e-6)


def test_scan_unroll_must_be_positive():
    with pytest.raises(ValueError, match="scan_unroll"):
        _draw(diffusion.sample, 0, num_steps=4, action_shape=(H, A))
    with pytest.raises(ValueError, match="scan_unroll"):
        _draw(flow.sample, 0, num_steps=4, action_shape=(H, A))


@pytest.mark.parametrize("name", ["diffusion", "flow"])
def test_scan_unroll_is_a_sampling_only_config_field(name):
    assert "scan_unroll" in objectives.SAMPLING_FIELDS
    objective = objectives.create_objective({"name": name, "scan_unroll": 4}, (H, A))
    assert objective.sample.keywords["scan_unroll"] == 4
    chunk = jax.jit(lambda key: objective.sample(_apply, PARAMS, OBS, key, 4))(jax.random.key(0))
    assert chunk.shape == (4, H, A)
