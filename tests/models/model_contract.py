"""The model contract every denoiser must meet (shared by the model test files).

A model from `models.create_model(config)`, called as `apply_fn(params, obs, x, t)`:
[B, H, A] float32, finite; jit-compatible, compiles once per shape; same inputs -> same
output; depends on obs, x and t; ignores unknown observation keys; and each objective's
loss is differentiable through it and its sampler returns [B, H, A].
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from action_gen import models, objectives
from action_gen.data import schema

OBJECTIVES = {
    "diffusion": dict(name="diffusion", sampler="ddim", num_train_steps=20),
    "flow": dict(name="flow", integrator="euler", time_distribution="beta", time_scale=100.0),
    "regression": dict(name="regression"),
}


def check_model_contract(
    config: dict, obs: dict, action_shape=(16, 2), num_steps=3, objective_names=tuple(OBJECTIVES)
):
    """Runs the contract on `config` with observation `obs` (batched, B >= 2), with the
    objectives named in `objective_names` (each one costs two compilations)."""
    model = models.create_model(ml_collections.ConfigDict(config))
    batch = next(iter(obs.values())).shape[0]
    params = models.init_params(model, jax.random.key(0), obs, action_shape)
    apply_fn = jax.jit(models.make_apply_fn(model))
    x = jax.random.normal(jax.random.key(1), (batch, *action_shape))
    t = jnp.linspace(0.0, 99.0, batch)
    out = apply_fn(params, obs, x, t)
    assert out.shape == (batch, *action_shape) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_array_equal(apply_fn(params, obs, x, t), out)
    assert apply_fn._cache_size() == 1
    obs_extra = {**obs, "observation/other": jnp.zeros(batch)}
    np.testing.assert_allclose(apply_fn(params, obs_extra, x, t), out, rtol=1e-6)
    assert not np.allclose(apply_fn(params, obs, x, t + 1.0), out)
    assert not np.allclose(apply_fn(params, obs, x + 0.1, t), out)
    obs2 = {**obs, schema.OBS_STATE: obs[schema.OBS_STATE] + 1.0}
    assert not np.allclose(apply_fn(params, obs2, x, t), out)

    rng = np.random.default_rng(0)
    data = {
        **obs,
        schema.ACTIONS: jnp.asarray(rng.uniform(-1, 1, (batch, *action_shape)), jnp.float32),
        schema.ACTION_PAD_MASK: jnp.ones((batch, action_shape[0]), bool),
    }
    plain_apply = models.make_apply_fn(model)
    for name in objective_names:
        objective_config = OBJECTIVES[name]
        objective = objectives.create_objective(
            ml_collections.ConfigDict(dict(objective_config, num_sample_steps=num_steps)),
            action_shape,
        )
        loss_and_grad = jax.jit(
            jax.value_and_grad(
                lambda p, b, r, o=objective: o.loss(plain_apply, p, b, r), has_aux=True
            )
        )
        (value, _), grads = loss_and_grad(params, data, jax.random.key(2))
        assert value.shape == () and np.isfinite(value), name
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), name
        assert any(np.any(g != 0) for g in jax.tree.leaves(grads)), name
        sample = jax.jit(lambda p, o, r, obj=objective: obj.sample(plain_apply, p, o, r, num_steps))
        a = sample(params, obs, jax.random.key(3))
        assert a.shape == (batch, *action_shape) and np.all(np.isfinite(a)), name
        np.testing.assert_array_equal(a, sample(params, obs, jax.random.key(3)))
    return model, params, out
