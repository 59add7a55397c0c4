"""The contract every objective must meet with a real (tiny) model.

create_objective(config, (H, A)) → Objective(loss, sample), called exactly as train/ and
sample/ call them: loss(apply_fn, params, batch, rng), sample(apply_fn, params, obs, rng, N).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from action_gen import models, objectives
from action_gen.data import schema

B, T, S, H, A = 4, 2, 5, 16, 2
NUM_STEPS = 4

CONFIGS = {
    "diffusion_ddim": dict(name="diffusion", sampler="ddim", num_train_steps=20),
    "diffusion_ddpm_v": dict(
        name="diffusion", sampler="ddpm", num_train_steps=20, prediction_type="v_prediction"
    ),
    "diffusion_ddim_sample_linear": dict(
        name="diffusion", sampler="ddim", eta=0.5, prediction_type="sample", schedule="linear"
    ),
    "flow_euler_beta": dict(
        name="flow", integrator="euler", time_distribution="beta", time_scale=100.0
    ),
    "flow_heun_uniform_noclip": dict(
        name="flow", integrator="heun", time_distribution="uniform", clip_sample=False
    ),
    "flow_midpoint": dict(name="flow", integrator="midpoint", time_scale=1.0),
    "regression": dict(name="regression"),
}


@pytest.fixture(scope="module")
def setup():
    model = models.create_model(
        ml_collections.ConfigDict({"name": "unet1d", "down_dims": (16, 32), "time_embed_dim": 16})
    )
    rng = np.random.default_rng(0)
    obs = {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(B, T, S)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((B, T), bool),
    }
    params = models.init_params(model, jax.random.key(0), obs, (H, A))
    mask = np.ones((B, H), bool)
    mask[0, 10:] = False
    batch = {
        **obs,
        schema.ACTIONS: jnp.asarray(rng.uniform(-1, 1, size=(B, H, A)), jnp.float32),
        schema.ACTION_PAD_MASK: jnp.asarray(mask),
    }
    return models.make_apply_fn(model), params, obs, batch


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_objective_contract(name, setup):
    apply_fn, params, obs, batch = setup
    config = ml_collections.ConfigDict(dict(CONFIGS[name], num_sample_steps=NUM_STEPS))
    objective = objectives.create_objective(config, (H, A))
    assert isinstance(objective, objectives.Objective)

    # Loss: scalar float32, finite, differentiable under jit.
    loss_and_grad = jax.jit(
        jax.value_and_grad(lambda p, b, r: objective.loss(apply_fn, p, b, r), has_aux=True)
    )
    (value, aux), grads = loss_and_grad(params, batch, jax.random.key(1))
    assert value.shape == () and value.dtype == jnp.float32 and np.isfinite(value)
    assert all(np.shape(v) == () for v in aux.values())
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads))

    # Sample: [B, H, A] float32, finite, same seed → same output, one compilation.
    sample = jax.jit(lambda p, o, r: objective.sample(apply_fn, p, o, r, NUM_STEPS))
    a = sample(params, obs, jax.random.key(2))
    b = sample(params, obs, jax.random.key(2))
    c = sample(params, obs, jax.random.key(3))
    assert a.shape == (B, H, A) and a.dtype == jnp.float32
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert sample._cache_size() == 1
    if name != "regression":
        assert not np.allclose(a, c)
    # The batch size follows the observation.
    one = {k: v[:1] for k, v in obs.items()}
    assert sample(params, one, jax.random.key(2)).shape == (1, H, A)


def test_create_objective_rejects_unknown():
    with pytest.raises(ValueError, match="unknown objective"):
        objectives.create_objective({"name": "nope"}, (H, A))
    with pytest.raises(ValueError, match="does not take"):
        objectives.create_objective({"name": "diffusion", "shedule": "linear"}, (H, A))
    with pytest.raises(ValueError, match="does not take"):
        objectives.create_objective({"name": "flow", "sampler": "ddim"}, (H, A))


def test_sampling_fields_are_the_sample_only_settings():
    """What a checkpoint may be resumed or evaluated under other values of: fields only
    `sample` reads; anything the loss reads (the schedule, the time sampling) is excluded."""
    assert {"sampler", "eta", "integrator", "clip_sample", "temperature", "num_sample_steps"} <= (
        objectives.SAMPLING_FIELDS
    )
    for trained_on in ("schedule", "prediction_type", "time_scale", "time_distribution"):
        assert trained_on not in objectives.SAMPLING_FIELDS
    assert "action_shape" not in objectives.SAMPLING_FIELDS
